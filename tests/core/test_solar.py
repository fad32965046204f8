"""Rooftop solar sizing: known shapes, CRS independence, parameters, yield estimate."""

import math

import pytest
import shapely
from shapely.geometry import Point, Polygon

from roof_detector.core.solar import (
    SOLAR_FIELDS,
    SolarParams,
    estimate_specific_yield,
    rooftop_attributes,
    rooftop_attributes_metric,
)

from .geom_helpers import WEB_MERCATOR, WGS84, metric_at, rotated_rect, utm_wkt

LON, LAT = 36.9024, -1.3073  # eastern Nairobi


def test_rectangle_known_figures():
    # 20 x 10 m, setback 0.5 -> 19 x 9 = 171 m², x 0.6 = 102.6 m² -> 52 panels of 1.96 m²
    a = rooftop_attributes_metric(shapely.box(0, 0, 20, 10), None, SolarParams(specific_yield_kwh_per_kwp=1000))
    assert a["area_m2"] == pytest.approx(200)
    assert a["perimeter_m"] == pytest.approx(60)
    assert a["usable_area_m2"] == pytest.approx(102.6)
    assert a["panels"] == 52
    assert a["kwp"] == pytest.approx(20.8)
    assert a["annual_kwh"] == pytest.approx(20800)
    assert a["specific_yield"] == 1000
    assert a["orientation_deg"] == pytest.approx(90.0)  # long axis east-west


def test_l_shape_known_figures():
    # L = 20x10 bar + 10x10 leg; inset by 0.5: 19x9 bar + 9x10 leg, plus the corner square
    # beyond the reflex vertex less a quarter disc (erosion rounds around the reflex vertex)
    l_shape = Polygon([(0, 0), (20, 0), (20, 10), (10, 10), (10, 20), (0, 20)])
    p = SolarParams(setback_m=0.5, usable_fraction=1.0, specific_yield_kwh_per_kwp=1200)
    a = rooftop_attributes_metric(l_shape, None, p)
    exact_inset = 19 * 9 + 9 * 10 + 0.25 * (1 - math.pi / 4)
    assert a["area_m2"] == pytest.approx(300)
    assert a["usable_area_m2"] == pytest.approx(exact_inset, abs=0.01)
    assert a["panels"] == int(exact_inset // 1.96)
    assert a["kwp"] == pytest.approx(a["panels"] * 0.4)
    assert a["annual_kwh"] == pytest.approx(a["kwp"] * 1200)


def test_circle_known_figures():
    circle = Point(0, 0).buffer(10, quad_segs=64)
    p = SolarParams(
        setback_m=1.0, usable_fraction=0.5, panel_area_m2=2.0, panel_wp=500, specific_yield_kwh_per_kwp=1500
    )
    a = rooftop_attributes_metric(circle, None, p)
    usable = math.pi * 9**2 * 0.5
    assert a["area_m2"] == pytest.approx(math.pi * 100, rel=1e-3)
    assert a["usable_area_m2"] == pytest.approx(usable, rel=1e-3)
    assert a["panels"] == int(usable // 2.0) == 63
    assert a["kwp"] == pytest.approx(31.5)
    assert a["annual_kwh"] == pytest.approx(47250)
    assert 0 <= a["orientation_deg"] < 180


@pytest.mark.parametrize("angle, expected", [(0, 90.0), (90, 0.0), (30, 60.0), (-30, 120.0), (45, 45.0)])
def test_orientation_is_azimuth_of_the_long_axis(angle, expected):
    # rotated_rect rotates counter-clockwise from east; azimuth is clockwise from north
    a = rooftop_attributes_metric(rotated_rect(30, 8, angle), 0.0)
    assert a["orientation_deg"] == pytest.approx(expected, abs=1e-6)


def test_tiny_roof_has_no_panels_and_no_negative_area():
    a = rooftop_attributes_metric(shapely.box(0, 0, 0.8, 0.8), 10.0)
    assert a["usable_area_m2"] == 0.0
    assert a["panels"] == 0 and a["kwp"] == 0 and a["annual_kwh"] == 0


def test_empty_geometry_gives_zeros():
    a = rooftop_attributes(Polygon(), WGS84)
    assert a["area_m2"] == 0 and a["panels"] == 0 and a["orientation_deg"] is None


def test_same_building_same_figures_in_utm_web_mercator_and_wgs84():
    building = rotated_rect(24, 11, 23)
    figures = {}
    for name, wkt in (("utm", utm_wkt(LON, LAT)), ("3857", WEB_MERCATOR), ("4326", WGS84)):
        figures[name] = rooftop_attributes(metric_at(building, LON, LAT, wkt), wkt)
    ref = figures["utm"]
    assert ref["area_m2"] == pytest.approx(24 * 11, rel=1e-3)
    for name, a in figures.items():
        for key in ("area_m2", "perimeter_m", "usable_area_m2", "kwp", "annual_kwh", "specific_yield"):
            assert a[key] == pytest.approx(ref[key], rel=0.01), (name, key)
        assert a["panels"] == ref["panels"]
        assert a["orientation_deg"] == pytest.approx(90 - 23, abs=0.5), name


def test_high_latitude_web_mercator_is_not_inflated():
    # at 60° N EPSG:3857 inflates areas 4x; the figures must be true metres
    wkt = WEB_MERCATOR
    a = rooftop_attributes(metric_at(shapely.box(0, 0, 10, 10), 10.75, 59.91, wkt), wkt)
    assert a["area_m2"] == pytest.approx(100, rel=1e-3)


def test_default_yield_comes_from_latitude():
    wkt = WGS84
    north = rooftop_attributes(metric_at(shapely.box(0, 0, 10, 10), 13.4, 52.5, wkt), wkt)
    equator = rooftop_attributes(metric_at(shapely.box(0, 0, 10, 10), 32.6, 0.35, wkt), wkt)
    assert north["specific_yield"] == pytest.approx(estimate_specific_yield(52.5), rel=1e-3)
    assert equator["specific_yield"] > north["specific_yield"]
    assert north["annual_kwh"] == pytest.approx(north["kwp"] * north["specific_yield"])


@pytest.mark.parametrize(
    "lat, low, high",
    [
        (0, 1550, 1650),
        (-1.3, 1550, 1650),
        (25, 1550, 1650),
        (48.1, 1100, 1200),
        (51.5, 1000, 1100),
        (59.3, 940, 1000),
        (89.9, 949, 960),
    ],
)
def test_yield_curve_reproduces_documented_figures(lat, low, high):
    assert low <= estimate_specific_yield(lat) <= high


def test_yield_curve_is_symmetric_and_decreasing():
    lats = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    ys = [estimate_specific_yield(v) for v in lats]
    assert all(a >= b for a, b in zip(ys, ys[1:]))
    assert estimate_specific_yield(-40) == estimate_specific_yield(40)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(setback_m=-1),
        dict(usable_fraction=1.5),
        dict(panel_area_m2=0),
        dict(panel_wp=-400),
        dict(specific_yield_kwh_per_kwp=0),
        dict(setback_m=float("nan")),
    ],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        SolarParams(**kwargs).validate()


def test_solar_fields_match_attribute_keys():
    a = rooftop_attributes_metric(shapely.box(0, 0, 5, 5), 45.0)
    assert [k for k, _ in SOLAR_FIELDS] == list(a.keys())


def test_size_buildings_adds_attributes_and_regularises_in_place():
    from roof_detector.core.building import Building
    from roof_detector.core.footprints import size_buildings

    from .geom_helpers import noisy_polygon

    noisy = metric_at(noisy_polygon(rotated_rect(20, 10, 10), 0.1), LON, LAT, WGS84)
    tank = metric_at(Point(0, 0).buffer(6, quad_segs=16), LON, LAT, WGS84)
    buildings = [Building(noisy, 200.0, 60.0, 0.9), Building(tank, 113.0, 37.7, 0.8, {"x": 1})]
    assert size_buildings(buildings, WGS84, SolarParams(specific_yield_kwh_per_kwp=1000), regularize=True) == 1
    assert len(buildings[0].geometry.exterior.coords) == 5
    assert buildings[0].area_m2 == pytest.approx(200, rel=0.03)
    assert buildings[1].geometry is tank and buildings[1].area_m2 == 113.0
    for b in buildings:
        assert set(b.attributes) >= {"usable_area_m2", "panels", "kwp", "annual_kwh", "orientation_deg"}
        assert "area_m2" not in b.attributes
    assert buildings[1].attributes["x"] == 1


@pytest.mark.parametrize("setback_m", [1e-320, 1e-300, 1e-12])
def test_a_vanishing_setback_is_no_setback(setback_m):
    """Issue 21 sweep rerun: `solar --setback 1e-320` wrote 0 panels (GEOS empties a tiny negative buffer)."""
    roof = shapely.box(0, 0, 20, 10)
    none = rooftop_attributes_metric(roof, None, SolarParams(setback_m=0.0, specific_yield_kwh_per_kwp=1000))
    tiny = rooftop_attributes_metric(roof, None, SolarParams(setback_m=setback_m, specific_yield_kwh_per_kwp=1000))
    assert tiny["usable_area_m2"] == pytest.approx(none["usable_area_m2"]) == pytest.approx(120.0)
    assert tiny["panels"] == none["panels"] > 0
