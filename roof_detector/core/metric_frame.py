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
    return Transformer.from_crs(crs_from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)


def lonlat_of(geometry: BaseGeometry, crs_wkt: str) -> Tuple[float, float]:
    """(longitude, latitude) in WGS 84 of the centre of ``geometry``'s bounding box."""
    if geometry is None or geometry.is_empty:
        raise ValueError("empty geometry has no position")
    minx, miny, maxx, maxy = geometry.bounds
    x, y = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    lon, lat = _to_lonlat(crs_wkt).transform(x, y)
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90.0:
        raise LabelError(f"Coordinates ({x:.6g}, {y:.6g}) are not valid in the layer's CRS; "
                         "is the CRS of the layer right?")
    return float(lon), float(lat)


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
    aeqd = CRS.from_proj4(f"+proj=aeqd +lat_0={lat0:.6f} +lon_0={lon0:.6f} +x_0=0 +y_0=0 "
                          "+datum=WGS84 +units=m +no_defs")
    src = crs_from_wkt(crs_wkt)
    return LocalFrame(crs_wkt, lon0, lat0,
                      Transformer.from_crs(src, aeqd, always_xy=True),
                      Transformer.from_crs(aeqd, src, always_xy=True))


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
