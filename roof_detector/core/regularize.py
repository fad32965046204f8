"""Regularise building outlines to right angles (and 45° diagonals).

Outlines traced from a segmentation mask follow pixel staircases and wobble.
Like the "regularize building footprint" tools of other GIS, this squares them:

1. Find the building's dominant orientation: the peak of an edge-length-weighted
   histogram of edge directions modulo 90°, refined by a weighted circular mean
   of the edges near the peak.
2. Simplify the ring by the tolerance (Douglas-Peucker, anchored at a corner).
3. Snap each simplified edge to the dominant axis or its perpendicular, or to
   ±45° when the edge is closer to a diagonal and long enough to matter. Each
   snapped line passes through the length-weighted mean position of the raw
   boundary it replaces. Short edges (< tolerance) are dropped. Consecutive
   parallel lines are merged when their offset differs by less than the
   tolerance, otherwise joined by a perpendicular step.
4. Intersect consecutive lines to get the corners.

A shape stays as it is when it is not rectilinear: round (area > 92 % of its
minimum bounding circle) or less than 75 % of its simplified boundary length
within 10° of the snapped directions (round tanks, curved roofs). So does any
result that is invalid, whose area moves by more than ``max_area_change`` (10 %),
or whose boundary departs from the raw one by more than twice the tolerance.

Work happens in metres: :func:`regularize_outline` takes a geometry in any CRS
and goes through a local metric frame (:mod:`.metric_frame`);
:func:`regularize_metric` takes a geometry already in metres.

The library ``buildingregulariser`` does much the same but requires numpy >= 2
and geopandas, which clash with the numpy 1.x GDAL/QGIS stack; hence this module.
No ``qgis`` import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .metric_frame import to_local_metric

#: Edges within this many degrees of a snapped direction count as aligned.
ALIGN_TOLERANCE_DEG = 10.0
#: Minimum share of the simplified boundary length that must be aligned.
MIN_ALIGNED_FRACTION = 0.75
#: A shape whose area exceeds this share of its minimum bounding circle is round.
ROUND_SHAPE_RATIO = 0.92
#: Largest relative area change a regularised outline may make.
MAX_AREA_CHANGE = 0.10


UNCHANGED_M = 1e-3  # a regularised outline closer than 1 mm to the raw one counts as unchanged


def regularize_outline(geometry: BaseGeometry, crs_wkt: str, tolerance_m: float = 1.0,
                       allow_diagonals: bool = True, max_area_change: float = MAX_AREA_CHANGE) -> BaseGeometry:
    """``geometry`` (Polygon/MultiPolygon in ``crs_wkt``) with its outline squared.

    ``tolerance_m`` is in true metres whatever the CRS. Returns the input object
    itself when it is left as it is (not rectilinear, or the regularised shape
    failed the checks).
    """
    if geometry is None or geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
        return geometry
    metric, frame = to_local_metric(geometry, crs_wkt)
    result = regularize_metric(metric, tolerance_m, allow_diagonals, max_area_change)
    # An outline that is already regular comes back only moved by rounding (about 1e-5 m
    # through the metric frame): keep the original coordinates then.
    if result is metric or result.hausdorff_distance(metric) < UNCHANGED_M:
        return geometry
    return frame.from_metric(result)


def regularize_many(geometries: Sequence[BaseGeometry], crs_wkt: str, tolerance_m: float = 1.0,
                    allow_diagonals: bool = True) -> List[BaseGeometry]:
    """:func:`regularize_outline` of each geometry."""
    return [regularize_outline(g, crs_wkt, tolerance_m, allow_diagonals) for g in geometries]


def regularize_metric(geometry: BaseGeometry, tolerance_m: float = 1.0, allow_diagonals: bool = True,
                      max_area_change: float = MAX_AREA_CHANGE) -> BaseGeometry:
    """Regularise a Polygon/MultiPolygon whose coordinates are metres.

    Returns ``geometry`` itself when it is left as it is.
    """
    if tolerance_m <= 0 or not math.isfinite(tolerance_m):
        raise ValueError(f"tolerance must be a positive number of metres, not {tolerance_m}")
    if geometry is None or geometry.is_empty:
        return geometry
    if geometry.geom_type == "Polygon":
        out = _regularize_polygon(geometry, tolerance_m, allow_diagonals, max_area_change)
        return geometry if out is None else out
    if geometry.geom_type == "MultiPolygon":
        parts = [_regularize_polygon(p, tolerance_m, allow_diagonals, max_area_change) for p in geometry.geoms]
        if all(p is None for p in parts):
            return geometry
        merged = MultiPolygon([p if p is not None else raw for p, raw in zip(parts, geometry.geoms)])
        if not merged.is_valid or not _area_ok(geometry.area, merged.area, max_area_change):
            return geometry
        return merged
    return geometry


# --------------------------------------------------------------------------- polygons


def _regularize_polygon(poly: Polygon, tol: float, diagonals: bool, max_change: float) -> Optional[Polygon]:
    """The regularised polygon, or None to keep ``poly`` as it is."""
    if not poly.is_valid or poly.area <= 0:
        return None
    ext = _clean_ring(np.asarray(poly.exterior.coords))
    if ext is None:
        return None
    if is_round(poly):
        return None
    theta = dominant_orientation(ext, tol)
    new_ext = _regularize_ring(ext, theta, tol, diagonals)
    if new_ext is None:
        return None
    holes = []
    for interior in poly.interiors:
        ring = _clean_ring(np.asarray(interior.coords))
        if ring is None:
            continue
        new_hole = _regularize_ring(ring, theta, tol, diagonals)
        holes.append(new_hole if new_hole is not None else ring)
    try:
        out = Polygon(new_ext, holes)
    except (ValueError, shapely.errors.GEOSException):
        return None
    if not out.is_valid or out.is_empty:
        return None
    if not _area_ok(poly.area, out.area, max_change):
        return None
    if poly.boundary.hausdorff_distance(out.boundary) > 2.0 * tol + 1e-9:
        return None
    return out


def _area_ok(raw: float, new: float, max_change: float) -> bool:
    return raw > 0 and abs(new - raw) <= max_change * raw


def is_round(poly: Polygon) -> bool:
    """True when ``poly`` fills most of its minimum bounding circle (tanks, silos, domes)."""
    r = shapely.minimum_bounding_radius(poly)
    return r > 0 and poly.area / (math.pi * r * r) > ROUND_SHAPE_RATIO


def _clean_ring(coords: np.ndarray) -> Optional[np.ndarray]:
    """Closed ring (first == last) without repeated points, or None when degenerate."""
    pts = np.asarray(coords, dtype=float)[:, :2]
    if len(pts) < 4:
        return None
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(np.abs(np.diff(pts, axis=0)) > 1e-12, axis=1)
    pts = pts[keep]
    if not np.allclose(pts[0], pts[-1]):
        pts = np.vstack([pts, pts[:1]])
    if len(pts) < 4:
        return None
    return pts


# --------------------------------------------------------------------------- orientation


def _edge_angles(pts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    d = np.diff(pts, axis=0)
    lengths = np.hypot(d[:, 0], d[:, 1])
    angles = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 180.0
    return angles, lengths


def dominant_orientation(ring: np.ndarray, tolerance_m: float = 0.0) -> float:
    """Dominant edge direction of a closed ring, degrees in [0, 90) from the +x axis.

    Peak of an edge-length-weighted histogram of directions modulo 90° (1° bins,
    smoothed over ±3°), refined by the weighted circular mean of edges within
    10° of the peak. With ``tolerance_m`` the ring is first simplified by half
    the tolerance so that pixel staircases do not vote for the raster axes.
    """
    pts = np.asarray(ring, dtype=float)
    if tolerance_m > 0:
        pts = pts[_simplify_indices(pts, tolerance_m / 2.0)]
    angles, lengths = _edge_angles(pts)
    if lengths.sum() <= 0:
        return 0.0
    mod = angles % 90.0
    hist = np.bincount(np.floor(mod).astype(int) % 90, weights=lengths, minlength=90)
    kernel = np.array([1, 2, 3, 4, 3, 2, 1], dtype=float)
    # Circular smoothing: smooth[i] = sum_j hist[(i - 3 + j) mod 90] * kernel[j].
    smooth = np.correlate(np.concatenate([hist[-3:], hist, hist[:3]]), kernel, mode="valid")
    peak = (np.argmax(smooth) + 0.5) % 90.0
    diff = (mod - peak + 45.0) % 90.0 - 45.0
    near = np.abs(diff) <= ALIGN_TOLERANCE_DEG
    if not np.any(near):
        return float(peak)
    w = lengths[near]
    ang4 = np.radians(mod[near] * 4.0)
    mean = math.degrees(math.atan2(np.sum(w * np.sin(ang4)), np.sum(w * np.cos(ang4)))) / 4.0
    return float(mean % 90.0)


# --------------------------------------------------------------------------- simplification


def _simplify_indices(ring: np.ndarray, tol: float) -> np.ndarray:
    """Indices kept by Douglas-Peucker on a closed ring, anchored at its first point."""
    n = len(ring) - 1
    keep = np.zeros(n + 1, dtype=bool)
    keep[0] = keep[n] = True
    stack = [(0, n)]
    while stack:
        s, e = stack.pop()
        if e <= s + 1:
            continue
        a, b = ring[s], ring[e]
        seg = b - a
        norm = math.hypot(seg[0], seg[1])
        mid = ring[s + 1:e]
        if norm < 1e-12:
            dist = np.hypot(mid[:, 0] - a[0], mid[:, 1] - a[1])
        else:
            dist = np.abs(seg[0] * (mid[:, 1] - a[1]) - seg[1] * (mid[:, 0] - a[0])) / norm
        i = int(np.argmax(dist))
        if dist[i] > tol:
            k = s + 1 + i
            keep[k] = True
            stack.append((s, k))
            stack.append((k, e))
    return np.flatnonzero(keep)


# --------------------------------------------------------------------------- snapping


@dataclass
class _Line:
    """A snapped line n·x = c with direction ``dir_deg`` (relative to the frame's +x)."""

    dir_deg: float
    c: float
    weight: float
    start: np.ndarray  # the raw vertices where this line's edge starts and ends (for steps)
    end: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        a = math.radians(self.dir_deg)
        return np.array([-math.sin(a), math.cos(a)])


def _regularize_ring(ring: np.ndarray, theta: float, tol: float, diagonals: bool) -> Optional[np.ndarray]:
    """The squared ring (closed, Nx2), or None when the ring is not rectilinear or collapses."""
    # Anchor the simplification at the vertex farthest from the centroid: a corner.
    body = ring[:-1]
    start = int(np.argmax(np.hypot(*(body - body.mean(axis=0)).T)))
    body = np.roll(body, -start, axis=0)
    ring = np.vstack([body, body[:1]])
    idx = _simplify_indices(ring, tol)
    if len(idx) < 4:
        return None
    simp = ring[idx]
    angles, lengths = _edge_angles(simp)
    perimeter = float(lengths.sum())
    if perimeter <= 0:
        return None
    rel = (angles - theta) % 180.0
    dirs = [0.0, 90.0, 180.0] + ([45.0, 135.0] if diagonals else [])
    dirs_arr = np.array(dirs)
    dev = np.abs(rel[:, None] - dirs_arr[None, :])
    nearest = dirs_arr[np.argmin(dev, axis=1)] % 180.0
    deviation = dev.min(axis=1)
    aligned = deviation <= ALIGN_TOLERANCE_DEG
    if lengths[aligned].sum() < MIN_ALIGNED_FRACTION * perimeter:
        return None

    lines: List[_Line] = []
    for j in range(len(idx) - 1):
        length = lengths[j]
        is_diag = nearest[j] in (45.0, 135.0)
        if length < tol or (is_diag and length < 2.0 * tol):
            continue  # too short to carry a direction: its neighbours' intersection replaces it
        d = (theta + nearest[j]) % 180.0
        a = math.radians(d)
        normal = np.array([-math.sin(a), math.cos(a)])
        raw = ring[idx[j]:idx[j + 1] + 1]
        seg = np.diff(raw, axis=0)
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        mids = (raw[:-1] + raw[1:]) / 2.0
        c = float(np.sum(seg_len * (mids @ normal)) / seg_len.sum()) if seg_len.sum() > 0 else float(raw[0] @ normal)
        lines.append(_Line(d, c, float(length), ring[idx[j]].copy(), ring[idx[j + 1]].copy()))
    lines = _merge_parallel(lines, tol)
    if lines is None or len(lines) < 3:
        return None
    corners = []
    for i in range(len(lines)):
        p = _intersect(lines[i], lines[(i + 1) % len(lines)])
        if p is None:
            return None
        corners.append(p)
    out = np.array(corners)
    return np.vstack([out, out[:1]])


def _same_dir(a: float, b: float) -> bool:
    return abs(((a - b) + 90.0) % 180.0 - 90.0) < 1e-6


def _merge_parallel(lines: List[_Line], tol: float) -> Optional[List[_Line]]:
    """Merge consecutive parallel lines closer than ``tol``; join farther ones by a step."""
    guard = 0
    changed = True
    while changed and len(lines) >= 2:
        guard += 1
        if guard > 10000:
            return None
        changed = False
        n = len(lines)
        for i in range(n):
            a, b = lines[i], lines[(i + 1) % n]
            if a is b or not _same_dir(a.dir_deg, b.dir_deg):
                continue
            # Lines of opposite travel share the normal only up to sign.
            cb = b.c if np.dot(a.normal, b.normal) > 0 else -b.c
            if abs(a.c - cb) <= tol:
                w = a.weight + b.weight
                merged = _Line(a.dir_deg, (a.c * a.weight + cb * b.weight) / w, w, a.start, b.end)
                lines[i] = merged
                del lines[(i + 1) % n]
            else:
                d = (a.dir_deg + 90.0) % 180.0
                at = (a.end + b.start) / 2.0  # the step sits midway along the dropped boundary
                step = _Line(d, 0.0, 0.0, at, at)
                step.c = float(at @ step.normal)
                lines.insert(i + 1, step)
            changed = True
            break
    return lines


def _intersect(a: _Line, b: _Line) -> Optional[np.ndarray]:
    m = np.vstack([a.normal, b.normal])
    det = np.linalg.det(m)
    if abs(det) < 1e-9:
        return None
    return np.linalg.solve(m, np.array([a.c, b.c]))
