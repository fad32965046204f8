"""Property tests: on any valid polygon, sizing is finite and consistent, regularisation keeps area."""

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, strategies as st
from shapely import affinity
from shapely.geometry import Polygon

from roof_detector.core.regularize import regularize_metric, regularize_outline
from roof_detector.core.solar import SolarParams, rooftop_attributes, rooftop_attributes_metric

from .geom_helpers import WGS84, metric_at


@st.composite
def star_polygons(draw):
    """Star-shaped polygons (any angle, 3-40 vertices, 1-60 m) - convex, concave, spiky."""
    n = draw(st.integers(3, 40))
    radii = draw(st.lists(st.floats(1.0, 60.0), min_size=n, max_size=n))
    offsets = draw(st.lists(st.floats(0.05, 0.95), min_size=n, max_size=n))
    angles = [(i + o) * 2 * math.pi / n for i, o in enumerate(offsets)]
    poly = Polygon([(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)])
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
    return poly


@st.composite
def rectilinear_polygons(draw):
    """Unions of 1-4 rectangles, rotated, with vertex noise: what a detector finds."""
    k = draw(st.integers(1, 4))
    boxes = []
    for _ in range(k):
        x, y = draw(st.floats(0, 20)), draw(st.floats(0, 20))
        w, h = draw(st.floats(2, 25)), draw(st.floats(2, 25))
        boxes.append(shapely.box(x, y, x + w, y + h))
    poly = shapely.union_all(boxes)
    if poly.geom_type != "Polygon":
        poly = max(poly.geoms, key=lambda g: g.area)
    poly = affinity.rotate(poly, draw(st.floats(0, 180)), origin="centroid")
    noise = draw(st.floats(0, 0.2))
    seed = draw(st.integers(0, 2**16))
    coords = np.asarray(poly.segmentize(0.7).exterior.coords)[:-1]
    coords = coords + np.random.default_rng(seed).normal(0, noise, coords.shape)
    out = Polygon(coords)
    return out if out.is_valid else shapely.make_valid(out)


polygons = st.one_of(star_polygons(), rectilinear_polygons()).filter(
    lambda g: g.geom_type in ("Polygon", "MultiPolygon") and g.area > 0.5
)


def polygonal(g):
    return g.geom_type in ("Polygon", "MultiPolygon")


@given(polygons, st.floats(0, 2), st.floats(0, 1))
def test_sizing_is_finite_and_consistent(poly, setback, fraction):
    params = SolarParams(setback_m=setback, usable_fraction=fraction)
    a = rooftop_attributes_metric(poly, 45.0, params)
    for key in ("area_m2", "perimeter_m", "usable_area_m2", "kwp", "annual_kwh", "specific_yield"):
        assert math.isfinite(a[key]) and a[key] >= 0, key
    assert a["usable_area_m2"] <= a["area_m2"] + 1e-9
    assert a["panels"] >= 0 and a["panels"] * params.panel_area_m2 <= a["usable_area_m2"] + 1e-6
    assert a["kwp"] == a["panels"] * params.panel_wp / 1000
    assert 0 <= a["orientation_deg"] < 180


@given(polygons, st.sampled_from([0.5, 1.0, 2.0]))
def test_regularised_outline_is_valid_and_keeps_area(poly, tol):
    out = regularize_metric(poly, tolerance_m=tol)
    assert polygonal(out) and out.is_valid and not out.is_empty
    assert abs(out.area - poly.area) <= 0.10 * poly.area + 1e-9


@pytest.mark.slow
@given(rectilinear_polygons(), st.floats(-70, 70), st.floats(-179, 179))
def test_regularise_and_size_in_wgs84_anywhere(poly, lat, lon):
    g = metric_at(poly, lon, lat, WGS84)
    out = regularize_outline(g, WGS84, tolerance_m=1.0)
    assert polygonal(out) and out.is_valid
    a = rooftop_attributes(out, WGS84)
    b = rooftop_attributes(g, WGS84)
    assert abs(a["area_m2"] - b["area_m2"]) <= 0.10 * b["area_m2"] + 1e-6
    assert b["area_m2"] == __import__("pytest").approx(poly.area, rel=1e-3)
    assert math.isfinite(a["annual_kwh"]) and a["usable_area_m2"] <= a["area_m2"] + 1e-9
