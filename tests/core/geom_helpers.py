"""Geometry fixtures shared by the solar / regularisation / evaluation tests, and a geodesic oracle."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely import affinity
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from roof_detector.core.geo import WGS84_GEOD, lonlat_transformer

WGS84 = CRS.from_epsg(4326).to_wkt()
WEB_MERCATOR = CRS.from_epsg(3857).to_wkt()


def utm_wkt(lon: float, lat: float) -> str:
    zone = int((lon + 180) // 6) + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone).to_wkt()


def transform_geom(geom, src_wkt: str, dst_wkt: str):
    t = Transformer.from_crs(CRS.from_user_input(src_wkt), CRS.from_user_input(dst_wkt), always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def metric_at(geom_m, lon: float, lat: float, dst_wkt: str):
    """A geometry drawn in metres (north-up, origin at lon/lat) placed in ``dst_wkt``.

    Uses an AEQD frame at (lon, lat) so the geometry has its true size on the ground.
    """
    aeqd = CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
    return transform_geom(geom_m, aeqd.to_wkt(), dst_wkt)


def noisy_polygon(poly: Polygon, noise: float, step: float = 0.5, seed: int = 0) -> Polygon:
    """``poly`` densified every ``step`` metres with Gaussian noise on every vertex."""
    rng = np.random.default_rng(seed)
    coords = np.asarray(poly.segmentize(step).exterior.coords)[:-1]
    coords = coords + rng.normal(0.0, noise, coords.shape)
    out = Polygon(coords)
    assert out.is_valid
    return out


def staircase(poly: Polygon, pixel: float) -> Polygon:
    """``poly`` traced on a raster of ``pixel`` metres (pixel-centre rule), as a detector outputs it."""
    from affine import Affine
    from rasterio import features

    minx, miny, maxx, maxy = poly.bounds
    minx, miny = math.floor(minx / pixel) * pixel - pixel, math.floor(miny / pixel) * pixel - pixel
    w = int(math.ceil((maxx - minx) / pixel)) + 2
    h = int(math.ceil((maxy - miny) / pixel)) + 2
    transform = Affine(pixel, 0, minx, 0, -pixel, miny + h * pixel)
    mask = features.rasterize([poly], out_shape=(h, w), transform=transform).astype(np.uint8)
    shapes = [shapely.geometry.shape(g) for g, v in features.shapes(mask, mask=mask > 0, transform=transform)]
    return max(shapes, key=lambda g: g.area)


def rotated_rect(w: float, h: float, angle_deg: float) -> Polygon:
    """A w x h rectangle centred at the origin, rotated counter-clockwise by ``angle_deg``."""
    return affinity.rotate(shapely.box(-w / 2, -h / 2, w / 2, h / 2), angle_deg, origin=(0, 0))


def area_perimeter_m(geometry: BaseGeometry, crs_wkt: str) -> Tuple[float, float]:
    """True ground area (m2) and perimeter (m, holes' rings included) of a (multi)polygon in ``crs_wkt``.

    Rings are oriented (exterior counter-clockwise, holes clockwise) after
    the conversion to lon/lat because pyproj adds the signed hole areas to
    the exterior's: holes are then subtracted, as they should be.
    """
    if geometry.is_empty:
        return 0.0, 0.0
    tr = lonlat_transformer(crs_wkt)
    lonlat = shapely.transform(geometry, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    lonlat = shapely.orient_polygons(lonlat, exterior_cw=False)
    area, _ = WGS84_GEOD.geometry_area_perimeter(lonlat)
    # pyproj's perimeter leaves out holes; a courtyard's walls are perimeter too
    # (as in shapely's ``length`` and QGIS's $perimeter), so sum every ring.
    perimeter = sum(WGS84_GEOD.geometry_length(ring) for ring in _rings(lonlat))
    return abs(float(area)), float(perimeter)


def _rings(geometry: BaseGeometry):
    """Every exterior and interior ring of a (multi)polygon or collection."""
    for poly in getattr(geometry, "geoms", [geometry]):
        if poly.geom_type == "Polygon":
            yield poly.exterior
            yield from poly.interiors
        elif hasattr(poly, "geoms"):
            yield from _rings(poly)
