"""Shape figures with known answers: vertex counts, regular polygons, and how evaluate reports them."""

import json

import numpy as np
import pytest
import shapely
from pyproj import CRS
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon

from roof_detector.cli import main
from roof_detector.core.evaluate import evaluate, grid_from_extent
from roof_detector.core.shape_metrics import ShapeStats, aligned_share, is_regular, shape_stats, vertex_count

from .geom_helpers import WGS84, metric_at, rotated_rect
from .test_evaluate import write_gpkg

UTM = CRS.from_epsg(32737).to_wkt()
X0, Y0 = 500000.0, 9300000.0  # a real place in the zone (Zanzibar)
L_SHAPE = Polygon([(0, 0), (20, 0), (20, 9), (9, 9), (9, 18), (0, 18)])


def test_vertex_count_counts_every_ring_without_closing_points():
    assert vertex_count(shapely.box(0, 0, 4, 3)) == 4
    assert vertex_count(L_SHAPE) == 6
    assert vertex_count(shapely.box(0, 0, 10, 10).difference(shapely.box(4, 4, 6, 6))) == 8
    assert vertex_count(MultiPolygon([shapely.box(0, 0, 1, 1), L_SHAPE])) == 10
    assert vertex_count(Polygon()) == 0


@pytest.mark.parametrize("angle", [0, 17, 45, 73])
def test_rectangles_and_right_angled_polygons_are_regular_at_any_rotation(angle):
    assert is_regular(rotated_rect(12, 7, angle))
    assert is_regular(affinity.rotate(L_SHAPE, angle))


def test_what_is_not_regular():
    # large 45-degree chamfers: 4 x 5.7 m of the 73 m outline is 31 % off the axes
    chamfered = Polygon([(4, 0), (20, 0), (24, 4), (24, 12), (20, 16), (4, 16), (0, 12), (0, 4)])
    assert not is_regular(chamfered)
    assert aligned_share(chamfered) == pytest.approx(48 / (48 + 4 * 32**0.5), rel=1e-6)
    # a small bevel (under 10 % of the outline) does not spoil a rectangle
    assert is_regular(Polygon([(1, 0), (30, 0), (30, 20), (0, 20), (0, 1)]))
    # a staircase of 9 steps: right angles but 20 vertices
    steps = [(0, 0)] + [(i + a, i + b) for i in range(9) for a, b in ((1, 0), (1, 1))] + [(0, 9)]
    stair = Polygon(steps)
    assert vertex_count(stair) > 16 and aligned_share(stair) == pytest.approx(1.0) and not is_regular(stair)
    assert not is_regular(Point(0, 0).buffer(5, quad_segs=2))  # an octagon
    assert not is_regular(Polygon([(0, 0), (10, 0), (3, 8)]))


def test_regularity_is_judged_on_the_ground_in_lon_lat():
    # at 60 degrees north a degree of longitude is half a degree of latitude on the ground:
    # a 30-degree rectangle drawn in metres is sheared in lon/lat, yet it is regular
    rect = metric_at(rotated_rect(20, 10, 30), 10.0, 60.0, WGS84)
    xy = np.asarray(rect.exterior.coords)
    d = np.diff(xy, axis=0)
    deg = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 90
    assert np.ptp(deg) > 10  # not right-angled in degrees
    stats = shape_stats([rect], WGS84)
    assert stats.regular.tolist() == [True] and stats.vertices.tolist() == [4]


def test_shape_stats_pool_and_say_nothing_for_an_empty_layer():
    a = shape_stats([shapely.box(X0, Y0, X0 + 10, Y0 + 8)], UTM)
    b = shape_stats([affinity.translate(L_SHAPE, X0, Y0), Point(X0, Y0).buffer(5)], UTM)
    pooled = a + b
    assert pooled.count == 3 and pooled.median_vertices() == 6.0
    assert pooled.regular_share() == pytest.approx(2 / 3)
    empty = ShapeStats()
    assert empty.as_dict() == {"count": 0, "median_vertices": None, "regular_share": None}


def _layers():
    """Predicted: an exact box, an L that overlaps its reference with IoU 0.8, a traced disc; reference: box, L, far box."""
    box = shapely.box(X0 + 2, Y0 + 2, X0 + 12, Y0 + 10)
    ell = affinity.translate(L_SHAPE, X0 + 20, Y0 + 2)
    ell_pred = affinity.translate(L_SHAPE, X0 + 20, Y0 + 4)  # shifted 2 m north
    disc = Point(X0 + 60, Y0 + 10).buffer(5, quad_segs=8)  # 32 vertices, no reference
    far = shapely.box(X0 + 75, Y0 + 2, X0 + 85, Y0 + 8)
    return [box, ell_pred, disc], [box, ell, far]


def test_evaluate_reports_shape_and_matched_iou_with_known_answers():
    pred, ref = _layers()
    grid = grid_from_extent((X0, Y0, X0 + 90, Y0 + 25), 0.25, UTM)
    res = evaluate(pred, ref, grid)
    iou_l = pred[1].intersection(ref[1]).area / pred[1].union(ref[1]).area
    assert res.n_matched == 2 and res.mean_matched_iou() == pytest.approx((1.0 + iou_l) / 2)
    d = res.as_dict()
    assert d["shape"]["predicted"] == {"count": 3, "median_vertices": 6.0, "regular_share": pytest.approx(2 / 3)}
    assert d["shape"]["reference"] == {"count": 3, "median_vertices": 4.0, "regular_share": 1.0}
    empty = evaluate([], ref, grid).as_dict()
    assert empty["shape"]["predicted"]["median_vertices"] is None and empty["object"]["mean_matched_iou"] is None


def test_cli_evaluate_prints_and_writes_the_shape_figures(tmp_path, capsys):
    pred, ref = _layers()
    p = write_gpkg(tmp_path / "pred.gpkg", pred, UTM)
    r = write_gpkg(tmp_path / "ref.gpkg", ref, UTM)
    grid_args = ["--extent", str(X0), str(Y0), str(X0 + 90), str(Y0 + 25), "--pixel-size", "0.25"]
    assert main(["evaluate", "--predicted", p, "--reference", r, *grid_args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"]["predicted"]["median_vertices"] == 6.0
    assert d["shape"]["reference"]["regular_share"] == 1.0
    assert main(["evaluate", "--predicted", p, "--reference", r, *grid_args]) == 0
    text = capsys.readouterr().out
    assert "predicted  median vertices 6, regular 66.7%" in text
    assert "reference  median vertices 4, regular 100.0%" in text
    assert "mean IoU of matched buildings" in text
