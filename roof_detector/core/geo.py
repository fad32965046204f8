"""Ground measures in metres for any CRS: pixel size, polygon area and perimeter.

Map units lie: EPSG:4326 counts degrees, and EPSG:3857 metres are
``1 / cos(latitude)`` times too long (1.55 at 50 degrees). Everything here
measures on the WGS84 ellipsoid with :class:`pyproj.Geod`, after converting
coordinates to longitude/latitude, so the same building gives the same
area in UTM, Web Mercator or degrees.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Transformer

from .errors import InputRasterError

WGS84_GEOD = Geod(ellps="WGS84")


@functools.lru_cache(maxsize=32)
def crs_from_wkt(crs_wkt: str) -> CRS:
    """Parse a CRS (WKT, or anything pyproj accepts such as ``"EPSG:32631"``)."""
    try:
        return CRS.from_user_input(crs_wkt)
    except Exception as exc:  # noqa: BLE001 - pyproj.exceptions.CRSError and friends
        raise InputRasterError(f"Unusable coordinate reference system ({exc})") from None


def earth_transformer(crs: CRS) -> Optional[Transformer]:
    """Transformer from ``crs`` to WGS84 longitude/latitude (x = lon, y = lat); None when ``crs``
    cannot be placed on the Earth (a local or engineering CRS: each caller says so in its own words)."""
    try:
        return Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    except Exception:  # noqa: BLE001 - pyproj.exceptions.ProjError: an engineering (LOCAL_CS) CRS
        return None


@functools.lru_cache(maxsize=32)
def lonlat_transformer(crs_wkt: str) -> Transformer:
    """Transformer from ``crs_wkt`` to WGS84 longitude/latitude (x = lon, y = lat)."""
    crs = crs_from_wkt(crs_wkt)
    transformer = earth_transformer(crs)
    if transformer is None:
        raise InputRasterError(
            f"The coordinate reference system {crs.name!r} cannot be placed on the Earth (a local or engineering "
            "CRS), so ground sizes cannot be measured; assign the data's true CRS, e.g. "
            "`gdal_edit.py -a_srs EPSG:XXXX file.tif` (vector layers: `ogr2ogr -a_srs EPSG:XXXX out.gpkg in.gpkg`)"
        )
    return transformer


def to_lonlat(x, y, crs_wkt: str) -> Tuple[np.ndarray, np.ndarray]:
    """Convert CRS coordinates to longitude/latitude degrees."""
    lon, lat = lonlat_transformer(crs_wkt).transform(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return np.asarray(lon), np.asarray(lat)


def pixel_size_m(
    crs_wkt: str, transform: Affine, width: int, height: int, name: str = "the raster"
) -> Tuple[float, float]:
    """Ground size (x, y) in metres of one pixel at the centre of a north-up raster.

    Measured as geodesic distances between the centres of neighbouring
    pixels around the raster centre, so it holds for projected metres,
    Web Mercator (scale 1/cos(lat)) and geographic degrees alike. The scale
    of Web Mercator and degree grids varies with latitude; over one raster
    of building imagery (a few km) the variation is far below a percent.
    """
    cx, cy = width / 2.0, height / 2.0
    cols = np.array([cx - 0.5, cx + 0.5, cx, cx])
    rows = np.array([cy, cy, cy - 0.5, cy + 0.5])
    xs = transform.c + cols * transform.a + rows * transform.b
    ys = transform.f + cols * transform.d + rows * transform.e
    try:
        lon, lat = to_lonlat(xs, ys, crs_wkt)
    except InputRasterError as exc:
        raise InputRasterError(f"{name}: {exc}") from None
    from pyproj import CRS

    metres_in_degrees = CRS.from_user_input(crs_wkt).is_geographic and not (
        np.all(np.abs(ys) <= 90) and np.all(np.abs(xs) <= 360)
    )
    hint = (
        "check its coordinate reference system"
        if not metres_in_degrees
        else f"its coordinates ({xs[0]:.6g}, {ys[0]:.6g}) are not degrees: the raster is probably in metres with "
        "a wrong CRS; assign its true CRS, e.g. `gdal_edit.py -a_srs EPSG:XXXX file.tif`"
    )
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))) or np.any(np.abs(lat) > 90):
        raise InputRasterError(f"The centre of {name} cannot be converted to longitude/latitude; {hint}")
    _, _, dx = WGS84_GEOD.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = WGS84_GEOD.inv(lon[2], lat[2], lon[3], lat[3])
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise InputRasterError(f"Cannot measure the ground pixel size of {name} (got {dx}, {dy} m); {hint}")
    return float(dx), float(dy)


def m2_per_crs_unit2(crs_wkt: str, transform: Affine, width: int, height: int) -> float:
    """Approximate ground square metres per square CRS unit at the raster centre.

    For quick filters (small holes, tiny blobs) where the exact geodesic
    area of every candidate would be wasted work.
    """
    px_x_m, px_y_m = pixel_size_m(crs_wkt, transform, width, height)
    return (px_x_m * px_y_m) / abs(transform.a * transform.e - transform.b * transform.d)
