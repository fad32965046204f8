"""Local metric frames: measure geometries in true metres whatever their CRS.

The engine keeps geometries in the raster's CRS, which may be geographic
(EPSG:4326) or a projection that distorts areas a lot (EPSG:3857 inflates areas
by 1/cos²(latitude)). Everything that measures (areas, setbacks, tolerances,
orientations) projects a geometry to an azimuthal-equidistant (AEQD) frame
centred near it, measures or edits it there, and projects back if needed.

Within a few tens of kilometres of its centre an AEQD frame is true to well
under 0.01 % in length and area, and its +y axis points to true north. To
avoid building one transformer per building, frames are shared by geometries
whose centres fall in the same 0.25° cell (at most ~20 km from the frame's
centre: distortion < 1e-5, north off by < 0.2°).

No ``qgis`` import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Tuple

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry.base import BaseGeometry

from .errors import LabelError
from .geo import earth_transformer

#: Size of the lon/lat cell whose geometries share one frame, degrees.
FRAME_CELL_DEG = 0.25


@lru_cache(maxsize=64)
def crs_from_wkt(crs_wkt: str) -> CRS:
    """A pyproj CRS from WKT (or any user input pyproj accepts, e.g. "EPSG:4326")."""
    if not crs_wkt or not str(crs_wkt).strip():
        raise LabelError("The layer has no CRS; set one (in QGIS: Layer Properties > Source) and save it again")
    try:
        return CRS.from_user_input(crs_wkt)
    except CRSError as exc:
        raise LabelError(f"Unrecognised CRS ({exc})") from None


@lru_cache(maxsize=64)
def _to_lonlat(crs_wkt: str) -> Transformer:
    crs = crs_from_wkt(crs_wkt)
    transformer = earth_transformer(crs)
    if transformer is None:
        raise LabelError(
            f"The layer's coordinate reference system {crs.name!r} cannot be placed on the Earth (a local or "
            "engineering CRS), so ground areas cannot be measured; assign the layer's true CRS (in QGIS: Layer "
            "Properties > Source; or `ogr2ogr -a_srs EPSG:XXXX out.gpkg in.gpkg`)"
        )
    return transformer


def lonlat_of(geometry: BaseGeometry, crs_wkt: str) -> Tuple[float, float]:
    """(longitude, latitude) in WGS 84 of the centre of ``geometry``'s bounding box."""
    if geometry is None or geometry.is_empty:
        raise ValueError("empty geometry has no position")
    minx, miny, maxx, maxy = geometry.bounds
    x, y = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    if _wraps(crs_wkt, maxx - minx):
        x = _unwrapped_centre_x(geometry)
    lon, lat = _to_lonlat(crs_wkt).transform(x, y)
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90.0:
        raise LabelError(
            f"Coordinates ({x:.6g}, {y:.6g}) are not valid in the layer's CRS; is the CRS of the layer right?"
        )
    return float(lon), float(lat)


def _wraps(crs_wkt: str, width: float) -> bool:
    """Whether a geometry of this width in a geographic CRS crosses the antimeridian.

    A building is never 180° of longitude wide: one that seems to be is drawn
    across ±180° (e.g. from 179.9999 to -179.9999) and is tiny. Its bounding
    box centre would be on the other side of the Earth, and a frame there
    distorts its area by a factor of 3 or more (435 m² for 116 m²).
    """
    return width > 180.0 and crs_from_wkt(crs_wkt).is_geographic


def _unwrapped_centre_x(geometry: BaseGeometry) -> float:
    """Bounding-box centre longitude of a geometry crossing ±180°, in [-180, 180)."""
    x = shapely.get_coordinates(geometry)[:, 0]
    x = np.where(x < 0, x + 360.0, x)
    centre = (float(x.min()) + float(x.max())) / 2.0
    return (centre + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class LocalFrame:
    """An AEQD frame (metres, +y = true north) centred at (lon0, lat0)."""

    crs_wkt: str
    lon0: float
    lat0: float
    forward: Transformer
    inverse: Transformer

    def to_metric(self, geometry: BaseGeometry) -> BaseGeometry:
        """``geometry`` (in ``crs_wkt``) in this frame, metres."""
        return _apply(self.forward, geometry)

    def from_metric(self, geometry: BaseGeometry) -> BaseGeometry:
        """``geometry`` (in this frame) back in ``crs_wkt``."""
        return _apply(self.inverse, geometry)


def _apply(transformer: Transformer, geometry: BaseGeometry) -> BaseGeometry:
    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])

    return shapely.transform(geometry, fn)


@lru_cache(maxsize=512)
def _frame(crs_wkt: str, lon0: float, lat0: float) -> LocalFrame:
    aeqd = CRS.from_proj4(
        f"+proj=aeqd +lat_0={lat0:.6f} +lon_0={lon0:.6f} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    )
    src = crs_from_wkt(crs_wkt)
    return LocalFrame(
        crs_wkt,
        lon0,
        lat0,
        Transformer.from_crs(src, aeqd, always_xy=True),
        Transformer.from_crs(aeqd, src, always_xy=True),
    )


def local_frame(geometry: BaseGeometry, crs_wkt: str) -> LocalFrame:
    """The shared local metric frame for ``geometry`` (given in ``crs_wkt``)."""
    lon, lat = lonlat_of(geometry, crs_wkt)
    cell = FRAME_CELL_DEG
    lon0 = (math.floor(lon / cell) + 0.5) * cell
    lat0 = max(-89.0, min(89.0, (math.floor(lat / cell) + 0.5) * cell))
    return _frame(crs_wkt, round(lon0, 6), round(lat0, 6))


def to_local_metric(geometry: BaseGeometry, crs_wkt: str) -> Tuple[BaseGeometry, LocalFrame]:
    """``geometry`` in its local metric frame, and the frame (``frame.from_metric`` goes back)."""
    frame = local_frame(geometry, crs_wkt)
    return frame.to_metric(geometry), frame


@dataclass
class MetricBatch:
    """Many geometries in their local metric frames (see :func:`to_local_metric_many`).

    ``metric[i]`` is ``geometries[i]`` in ``frames[frame_index[i]]``; ``lon``/``lat``
    are the WGS 84 centres of the geometries' bounding boxes.
    """

    metric: np.ndarray
    frame_index: np.ndarray
    frames: list
    lon: np.ndarray
    lat: np.ndarray

    def subset(self, keep: np.ndarray) -> "MetricBatch":
        """The entries selected by ``keep`` (a boolean mask or indexes)."""
        return MetricBatch(self.metric[keep], self.frame_index[keep], self.frames, self.lon[keep], self.lat[keep])

    def joined(self, other: "MetricBatch") -> "MetricBatch":
        """This batch followed by ``other``, as one batch of both would be (one frame per cell).

        The frames are :func:`_frame`'s, one per 0.25° cell, so an entry's metric geometry is the
        same in either batch: nothing is projected again.
        """
        frames = list(self.frames)
        index = {(f.lon0, f.lat0): k for k, f in enumerate(frames)}
        remap = np.zeros(max(1, len(other.frames)), dtype=np.int64)
        for k, f in enumerate(other.frames):
            remap[k] = index.setdefault((f.lon0, f.lat0), len(frames))
            if remap[k] == len(frames):
                frames.append(f)
        return MetricBatch(
            np.concatenate([self.metric, other.metric]),
            np.concatenate([self.frame_index, remap[other.frame_index]]),
            frames,
            np.concatenate([self.lon, other.lon]),
            np.concatenate([self.lat, other.lat]),
        )

    def from_metric(self, metric_geometries: np.ndarray, which: np.ndarray) -> np.ndarray:
        """``metric_geometries`` (the entries ``which`` of this batch, edited in metres) back in the source CRS."""
        out = np.empty(len(which), dtype=object)
        sub_frames = self.frame_index[which]
        for k in np.unique(sub_frames):
            sel = sub_frames == k
            out[sel] = _apply(self.frames[k].inverse, metric_geometries[sel])
        return out


def to_local_metric_many(geometries, crs_wkt: str) -> MetricBatch:
    """Every geometry in its shared local metric frame, with one coordinate transformation per frame.

    The same frames as :func:`local_frame` (one per 0.25° cell), so a geometry
    measures the same here as alone; only the number of pyproj calls differs
    (per frame, not per geometry: 10,000 buildings went from 1.0 s to 0.02 s).
    Empty geometries stay empty.
    """
    geoms = np.asarray(geometries, dtype=object)
    n = len(geoms)
    metric = np.empty(n, dtype=object)
    frame_index = np.zeros(n, dtype=np.int64)
    lon = np.zeros(n)
    lat = np.zeros(n)
    if n == 0:
        return MetricBatch(metric, frame_index, [], lon, lat)
    bounds = shapely.bounds(geoms)
    empty = ~np.isfinite(bounds).all(axis=1)
    cx = (bounds[:, 0] + bounds[:, 2]) / 2.0
    cy = (bounds[:, 1] + bounds[:, 3]) / 2.0
    ok = ~empty
    for i in np.flatnonzero(ok & (bounds[:, 2] - bounds[:, 0] > 180.0)):
        if _wraps(crs_wkt, bounds[i, 2] - bounds[i, 0]):
            cx[i] = _unwrapped_centre_x(geoms[i])
    x, y = _to_lonlat(crs_wkt).transform(cx[ok], cy[ok])
    lon[ok], lat[ok] = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    bad = ok & ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelError(
            f"Coordinates ({cx[i]:.6g}, {cy[i]:.6g}) are not valid in the layer's CRS; is the CRS of the layer right?"
        )
    cell = FRAME_CELL_DEG
    lon0 = np.round((np.floor(lon / cell) + 0.5) * cell, 6)
    lat0 = np.round(np.clip((np.floor(lat / cell) + 0.5) * cell, -89.0, 89.0), 6)
    frames: list = []
    keys = {}
    for i in np.flatnonzero(ok):
        key = (float(lon0[i]), float(lat0[i]))
        if key not in keys:
            keys[key] = len(frames)
            frames.append(_frame(crs_wkt, key[0], key[1]))
        frame_index[i] = keys[key]
    metric[empty] = geoms[empty]
    for k, frame in enumerate(frames):
        sel = ok & (frame_index == k)
        metric[sel] = _apply(frame.forward, geoms[sel])
    return MetricBatch(metric, frame_index, frames, lon, lat)
