"""Ground measures: pixel size and geodesic area/perimeter agree across UTM, Web Mercator and degrees."""

import math

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer

from roof_detector.core.geo import pixel_size_m
from tests.core.geom_helpers import area_perimeter_m

from .synthetic_rasters import LONLAT, MERCATOR, UTM, UTM_ORIGIN, utm_rect


def _to(crs, geom):
    tr = Transformer.from_crs(UTM, crs, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def test_pixel_size_in_utm_is_metres_over_scale_factor():
    # On the central meridian UTM grid metres are 0.9996 ground metres.
    t = Affine(0.5, 0, UTM_ORIGIN[0] - 50, 0, -0.5, UTM_ORIGIN[1] + 50)
    x_m, y_m = pixel_size_m(UTM, t, 200, 200)
    assert x_m == pytest.approx(0.5 / 0.9996, rel=1e-4)
    assert y_m == pytest.approx(0.5 / 0.9996, rel=1e-4)


def test_pixel_size_in_web_mercator_shrinks_with_cos_latitude():
    lon, lat = Transformer.from_crs(UTM, LONLAT, always_xy=True).transform(*UTM_ORIGIN)
    mx, my = Transformer.from_crs(LONLAT, MERCATOR, always_xy=True).transform(lon, lat)
    t = Affine(0.5, 0, mx - 50, 0, -0.5, my + 50)
    x_m, y_m = pixel_size_m(MERCATOR, t, 200, 200)
    assert 1 / math.cos(math.radians(lat)) == pytest.approx(1.55, abs=0.01)
    # spherical Mercator vs the ellipsoid: within 0.5 % of 0.5 * cos(lat)
    assert x_m == pytest.approx(0.5 * math.cos(math.radians(lat)), rel=5e-3)
    assert y_m == pytest.approx(0.5 * math.cos(math.radians(lat)), rel=5e-3)


def test_pixel_size_in_degrees_differs_in_x_and_y():
    t = Affine(1e-5, 0, 3.0, 0, -1e-5, 50.0)
    x_m, y_m = pixel_size_m(LONLAT, t, 100, 100)
    assert y_m == pytest.approx(1.1121, rel=2e-3)  # a degree of latitude ~111.2 km at 50 N
    assert x_m == pytest.approx(y_m * math.cos(math.radians(50.0)), rel=5e-3)


def test_same_building_same_area_in_three_crs():
    building = utm_rect(10, 10, 25.0, 12.0)
    area_utm, perim_utm = area_perimeter_m(building, UTM)
    assert area_utm == pytest.approx(300 / 0.9996**2, rel=1e-3)
    assert perim_utm == pytest.approx(74 / 0.9996, rel=1e-3)
    for crs in (MERCATOR, LONLAT):
        area, perim = area_perimeter_m(_to(crs, building), crs)
        assert area == pytest.approx(area_utm, rel=1e-3), crs
        assert perim == pytest.approx(perim_utm, rel=1e-3), crs
    # planar Web Mercator area would be ~2.4x too large: the measure must not be planar
    assert _to(MERCATOR, building).area > 2.3 * area_utm


def test_holes_are_subtracted_whatever_the_ring_orientation():
    outer = utm_rect(0, 0, 20, 20)
    hole = utm_rect(5, 5, 10, 10)
    with_hole = shapely.Polygon(outer.exterior.coords, [hole.exterior.coords])
    reversed_rings = shapely.Polygon(list(outer.exterior.coords)[::-1], [list(hole.exterior.coords)[::-1]])
    for geom in (with_hole, reversed_rings):
        area, perim = area_perimeter_m(geom, UTM)
        assert area == pytest.approx(300 / 0.9996**2, rel=1e-3)
        assert perim == pytest.approx(120 / 0.9996, rel=1e-3)


def test_empty_geometry_measures_zero():
    assert area_perimeter_m(shapely.Polygon(), UTM) == (0.0, 0.0)
