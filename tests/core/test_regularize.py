"""Outline regularisation: squares noisy/staircase rectangles and L-shapes, leaves round shapes alone."""

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon

from roof_detector.core.regularize import is_round, regularize_metric, regularize_outline

from .geom_helpers import (
    WEB_MERCATOR,
    WGS84,
    metric_at,
    noisy_polygon,
    rotated_rect,
    staircase,
    transform_geom,
    utm_wkt,
)


def edge_angles(poly):
    c = np.asarray(poly.exterior.coords)
    d = np.diff(c, axis=0)
    keep = np.hypot(d[:, 0], d[:, 1]) > 1e-6
    return np.degrees(np.arctan2(d[keep, 1], d[keep, 0])) % 180.0


def right_angled(poly, step_deg=90.0):
    """Every edge direction is a multiple of ``step_deg`` from the first edge's (exactly)."""
    a = edge_angles(poly)
    rel = (a - a[0]) % step_deg
    return bool(np.all((rel < 1e-6) | (rel > step_deg - 1e-6)))


def oriented_at(poly, theta, tol_deg):
    """The polygon's edges run along ``theta`` (mod 90) within ``tol_deg``."""
    rel = (edge_angles(poly)[0] - theta) % 90.0
    return min(rel, 90.0 - rel) <= tol_deg


def max_corner_error(result, truth):
    """Largest distance from a true corner to the nearest result corner."""
    rc = np.asarray(result.exterior.coords)[:-1]
    return max(np.min(np.hypot(*(rc - c).T)) for c in np.asarray(truth.exterior.coords)[:-1])


@pytest.mark.parametrize("angle", [0, 17, 33, 45, 71])
def test_noisy_rectangle_is_squared_within_tolerance(angle):
    truth = rotated_rect(14, 9, angle)
    raw = noisy_polygon(truth, noise=0.12, seed=angle)
    out = regularize_metric(raw, tolerance_m=1.0)
    assert out is not raw
    assert len(out.exterior.coords) - 1 == 4
    assert right_angled(out)
    assert oriented_at(out, angle, 1.5)
    assert max_corner_error(out, truth) < 1.0
    assert out.hausdorff_distance(truth) < 1.0
    assert abs(out.area - truth.area) / truth.area < 0.03


@pytest.mark.parametrize("angle", [0, 30, 62])
def test_pixel_staircase_rectangle_is_squared(angle):
    truth = rotated_rect(20, 10, angle)
    raw = staircase(truth, 0.3)
    out = regularize_metric(raw, tolerance_m=1.0)
    assert len(out.exterior.coords) - 1 == 4
    assert right_angled(out)
    assert oriented_at(out, angle, 1.0)
    assert max_corner_error(out, truth) < 0.6
    assert abs(out.area - truth.area) / truth.area < 0.03


def test_noisy_l_shape_keeps_six_right_angled_corners():
    truth = Polygon([(0, 0), (20, 0), (20, 10), (10, 10), (10, 20), (0, 20)])
    raw = noisy_polygon(truth, noise=0.1, seed=3)
    out = regularize_metric(raw, tolerance_m=1.0)
    assert len(out.exterior.coords) - 1 == 6
    assert right_angled(out)
    assert oriented_at(out, 0, 1.0)
    assert max_corner_error(out, truth) < 0.8


def test_chamfered_building_keeps_its_45_degree_corners():
    truth = Polygon([(4, 0), (20, 0), (24, 4), (24, 12), (20, 16), (4, 16), (0, 12), (0, 4)])
    raw = noisy_polygon(truth, noise=0.08, seed=5)
    out = regularize_metric(raw, tolerance_m=1.0)
    assert len(out.exterior.coords) - 1 == 8
    assert right_angled(out, step_deg=45.0)
    assert oriented_at(out, 0, 1.0)
    assert max_corner_error(out, truth) < 0.8


def test_without_diagonals_chamfers_are_not_invented():
    raw = noisy_polygon(rotated_rect(14, 9, 10), noise=0.1, seed=1)
    out = regularize_metric(raw, tolerance_m=1.0, allow_diagonals=False)
    assert len(out.exterior.coords) - 1 == 4


def test_small_step_below_tolerance_is_flattened_and_large_step_kept():
    step_small = Polygon([(0, 0), (20, 0), (20, 10.4), (10, 10.4), (10, 10), (0, 10)])
    out = regularize_metric(step_small, tolerance_m=1.0)
    assert len(out.exterior.coords) - 1 == 4
    step_large = Polygon([(0, 0), (20, 0), (20, 13), (10, 13), (10, 10), (0, 10)])
    out = regularize_metric(step_large, tolerance_m=1.0)
    assert len(out.exterior.coords) - 1 == 6


@pytest.mark.parametrize(
    "shape",
    [
        Point(0, 0).buffer(10, quad_segs=32),  # round tank
        Point(0, 0).buffer(6, quad_segs=4),  # coarse 16-gon tank
        shapely.affinity.scale(Point(0, 0).buffer(10, quad_segs=32), 2.0, 0.8),  # oval roof
        Point(0, 0).buffer(10, quad_segs=32).intersection(shapely.box(-20, 0, 20, 20)),  # half-round
    ],
)
def test_round_and_curved_shapes_stay_as_they_are(shape):
    assert regularize_metric(shape, tolerance_m=1.0) is shape


def test_rasterised_round_tank_stays_as_it_is():
    raw = staircase(Point(0, 0).buffer(8, quad_segs=32), 0.3)
    assert regularize_metric(raw, tolerance_m=1.0) is raw


def test_polygon_with_courtyard_squares_both_rings():
    truth = shapely.box(0, 0, 30, 30).difference(shapely.box(10, 10, 20, 20))
    raw = Polygon(
        noisy_polygon(Polygon(truth.exterior), 0.1, seed=1).exterior,
        [noisy_polygon(Polygon(truth.interiors[0]), 0.1, seed=2).exterior.coords],
    )
    out = regularize_metric(raw, tolerance_m=1.0)
    assert len(out.interiors) == 1
    assert len(out.exterior.coords) - 1 == 4 and len(out.interiors[0].coords) - 1 == 4
    assert abs(out.area - truth.area) / truth.area < 0.03


def test_multipolygon_parts_are_regularised_separately():
    a = noisy_polygon(shapely.box(0, 0, 10, 8), 0.1, seed=1)
    b = Point(40, 0).buffer(6, quad_segs=32)
    out = regularize_metric(MultiPolygon([a, b]), tolerance_m=1.0)
    assert out.geom_type == "MultiPolygon"
    assert len(out.geoms[0].exterior.coords) - 1 == 4
    assert out.geoms[1].equals(b)


@pytest.mark.parametrize("crs", ["utm", "3857", "4326"])
def test_regularize_outline_works_in_true_metres_in_any_crs(crs):
    lon, lat = 39.2434, -6.0549
    wkt = {"utm": utm_wkt(lon, lat), "3857": WEB_MERCATOR, "4326": WGS84}[crs]
    truth_m = rotated_rect(16, 9, 25)
    raw_m = noisy_polygon(truth_m, 0.12, seed=7)
    raw = metric_at(raw_m, lon, lat, wkt)
    out = regularize_outline(raw, wkt, tolerance_m=1.0)
    assert out is not raw
    assert len(out.exterior.coords) - 1 == 4
    # back in the common metric frame: squared, within tolerance of the truth
    aeqd = f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m"
    out_m = transform_geom(out, wkt, aeqd)
    assert max_corner_error(out_m, truth_m) < 1.0
    rel = (edge_angles(out_m) - edge_angles(out_m)[0]) % 90.0  # exact in the module's frame, not in ours
    assert np.all((rel < 0.2) | (rel > 89.8))
    assert oriented_at(out_m, 25, 1.5)


def test_tolerance_is_in_metres_not_degrees():
    # in EPSG:4326 a 1-degree tolerance would collapse the building; 1 m must not
    raw = metric_at(noisy_polygon(shapely.box(0, 0, 12, 8), 0.1), 10.0, 50.0, WGS84)
    out = regularize_outline(raw, WGS84, tolerance_m=1.0)
    assert 0.9 < out.area / raw.area < 1.1


def test_bad_tolerance_is_refused():
    with pytest.raises(ValueError):
        regularize_metric(shapely.box(0, 0, 1, 1), tolerance_m=0)


def test_non_polygons_pass_through():
    line = shapely.LineString([(0, 0), (1, 1)])
    assert regularize_outline(line, WGS84) is line
    assert regularize_outline(Polygon(), WGS84).is_empty


def test_round_check_shortcuts_agree_with_the_minimum_bounding_circle():
    # is_round brackets the minimum bounding circle's radius cheaply before asking GEOS;
    # the brackets must never decide differently from the circle itself, including for
    # regular polygons on either side of the 0.92 threshold (9-gon 0.925, 8-gon 0.900).
    shapes = [Point(0, 0).buffer(5, quad_segs=q) for q in (2, 3, 4, 8, 32)]
    shapes += [
        shapely.affinity.rotate(
            Polygon([(10 * math.cos(2 * math.pi * k / n), 10 * math.sin(2 * math.pi * k / n)) for k in range(n)]), a
        )
        for n in (7, 8, 9, 10, 12)
        for a in (0, 13, 45)
    ]
    shapes += [rotated_rect(w, h, a) for w, h in ((10, 10), (14, 9), (30, 4)) for a in (0, 20, 45)]
    shapes += [shapely.affinity.scale(Point(0, 0).buffer(10, quad_segs=32), sx, 1.0) for sx in (1.05, 1.1, 1.2, 1.5)]
    shapes += [staircase(Point(0, 0).buffer(8, quad_segs=32), 0.3), Polygon([(0, 0), (1e-4, 0), (0, 1e-4)])]
    for shape in shapes:
        r = shapely.minimum_bounding_radius(shape)
        expected = r > 0 and shape.area / (math.pi * r * r) > 0.92
        assert is_round(shape) == expected, shape.wkt
