"""How building-like a layer of outlines is: vertex counts and the share of regular polygons.

A person (or OpenStreetMap) draws most buildings with 4-6 vertices and right
angles; a traced segmentation mask gives staircases and blobs. Two figures
capture the difference and are reported by ``evaluate`` and ``score`` beside the
pixel and object figures:

* **vertex count** of a polygon: the distinct vertices of all its rings (the
  closing point not counted; parts of a multi-polygon added up);
* **regular**: at most :data:`MAX_REGULAR_VERTICES` (16) vertices and at least
  :data:`MIN_ALIGNED_SHARE` (90 %) of the outline's length within
  :data:`ALIGN_DEG` (10°) of the polygon's main axis or its perpendicular. The
  main axis is the direction, modulo 90°, that maximises that share (searched in
  0.5° steps), so a rectangle at any rotation is regular and a 45° bevel or a
  curve is not.

Angles are measured in a local metric frame (:mod:`.metric_frame`), so a layer
in EPSG:4326 is judged by the shape on the ground. No ``qgis`` import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .metric_frame import to_local_metric_many

MAX_REGULAR_VERTICES = 16
MIN_ALIGNED_SHARE = 0.90
ALIGN_DEG = 10.0
#: Candidate main axes, degrees modulo 90.
_AXES_DEG = np.arange(0.0, 90.0, 0.5)


def vertex_count(geometry: BaseGeometry) -> int:
    """Distinct vertices of all rings of a (multi)polygon; the closing point is not counted."""
    if geometry is None or geometry.is_empty:
        return 0
    rings = shapely.get_rings(shapely.get_parts(geometry))
    return int(shapely.get_num_coordinates(rings).sum() - len(rings))


def aligned_share(metric_geometry: BaseGeometry) -> float:
    """Largest share of the outline length within 10° of one axis or its perpendicular (0-1)."""
    lengths, angles = _edges(metric_geometry)
    total = float(lengths.sum())
    if total <= 0:
        return 0.0
    # deviation of every edge from every candidate axis, modulo 90 (right angles count as aligned)
    dev = np.abs((angles[None, :] - _AXES_DEG[:, None] + 45.0) % 90.0 - 45.0)
    share = ((dev <= ALIGN_DEG) * lengths[None, :]).sum(axis=1) / total
    return float(share.max())


def is_regular(metric_geometry: BaseGeometry) -> bool:
    """The definition of the module docstring, on a geometry whose coordinates are metres."""
    n = vertex_count(metric_geometry)
    return 3 <= n <= MAX_REGULAR_VERTICES and aligned_share(metric_geometry) >= MIN_ALIGNED_SHARE


def _edges(geometry: BaseGeometry):
    """Lengths and directions (degrees modulo 90) of the edges of every ring."""
    lengths, angles = [], []
    for ring in shapely.get_rings(shapely.get_parts(geometry)):
        xy = shapely.get_coordinates(ring)
        d = np.diff(xy, axis=0)
        lengths.append(np.hypot(d[:, 0], d[:, 1]))
        angles.append(np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 90.0)
    if not lengths:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(lengths), np.concatenate(angles)


@dataclass
class ShapeStats:
    """Vertex counts and regular flags of a layer's polygons; pools over layers with ``+``."""

    vertices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    regular: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __add__(self, other: "ShapeStats") -> "ShapeStats":
        return ShapeStats(
            np.concatenate([self.vertices, other.vertices]), np.concatenate([self.regular, other.regular])
        )

    @property
    def count(self) -> int:
        return len(self.vertices)

    def median_vertices(self) -> Optional[float]:
        """Median vertex count; None for an empty layer (nothing measured is not a score)."""
        return float(np.median(self.vertices)) if self.count else None

    def regular_share(self) -> Optional[float]:
        """Share of regular polygons (0-1); None for an empty layer."""
        return float(self.regular.mean()) if self.count else None

    def as_dict(self) -> Dict[str, Optional[float]]:
        return {"count": self.count, "median_vertices": self.median_vertices(), "regular_share": self.regular_share()}


def shape_stats(geometries: Sequence[BaseGeometry], crs_wkt: str) -> ShapeStats:
    """Vertex count and regularity of each non-empty geometry (in ``crs_wkt``)."""
    geoms = [g for g in geometries if g is not None and not g.is_empty]
    counts = np.array([vertex_count(g) for g in geoms], dtype=np.int64)
    regular = np.zeros(len(geoms), dtype=bool)
    candidates = np.flatnonzero((counts >= 3) & (counts <= MAX_REGULAR_VERTICES))
    if len(candidates):
        metric = to_local_metric_many(np.asarray([geoms[i] for i in candidates], dtype=object), crs_wkt).metric
        regular[candidates] = [aligned_share(g) >= MIN_ALIGNED_SHARE for g in metric]
    return ShapeStats(counts, regular)


def shape_figures(geometries: Sequence[BaseGeometry], crs_wkt: str) -> Dict[str, Optional[float]]:
    """Count, median vertex count and share of regular polygons of ``geometries`` (in ``crs_wkt``)."""
    return shape_stats(geometries, crs_wkt).as_dict()
