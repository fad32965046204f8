"""Building axes computed for a whole batch at once (core/axes.py)."""

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import Polygon, box

from roof_detector.core.axes import AXES_OFFSETS, batch_axes, wall_directions, working_rings


def _blob(angle_deg, seed, w=12.0, h=7.0):
    """A rectangle at ``angle_deg`` whose walls snap to a 0.3 m grid (pixel stairs), jittered."""
    rect = affinity.rotate(box(0, 0, w, h), angle_deg, origin=(0, 0))
    xy = np.round(np.asarray(rect.segmentize(0.1).exterior.coords) / 0.3) * 0.3
    rng = np.random.default_rng(seed)
    xy = xy + rng.normal(0, 0.02, xy.shape)
    poly = shapely.make_valid(Polygon(xy))
    parts = list(getattr(poly, "geoms", [poly]))
    return max((g for g in parts if g.geom_type == "Polygon"), key=lambda g: g.area)


@pytest.mark.parametrize("angle", [0.0, 7.0, 23.0, 38.0, 61.0, 84.0])
def test_staircase_rectangles_get_their_true_axes(angle):
    ring = working_rings([_blob(angle, 1)])[0][1]
    got = batch_axes([ring])[0]
    assert abs((got - angle + 45.0) % 90.0 - 45.0) < 1.5


def test_batch_equals_one_by_one_and_none_stays_nan():
    polys = [_blob(a, i) for i, a in enumerate([3.0, 17.0, 44.0, 71.0])]
    rings = [r for _w, r in working_rings(polys)]
    together = batch_axes(rings[:2] + [None] + rings[2:])
    alone = [batch_axes([r])[0] for r in rings]
    assert np.isnan(together[2])
    np.testing.assert_allclose(np.delete(together, 2), alone, atol=1e-9)


def test_refinement_picks_the_smallest_bounding_rectangle_of_all_vertices():
    """The hull shortcut gives the extents of every vertex, not only of the hull's."""
    ring = working_rings([_blob(29.0, 5)])[0][1]
    theta = wall_directions([ring], 1.0)[0]
    xy = ring[:-1] - ring[:-1].mean(axis=0)
    areas = []
    for off in AXES_OFFSETS:
        t = np.radians(theta + off)
        u = xy[:, 0] * np.cos(t) + xy[:, 1] * np.sin(t)
        v = xy[:, 1] * np.cos(t) - xy[:, 0] * np.sin(t)
        areas.append((u.max() - u.min()) * (v.max() - v.min()))
    expected = (theta + AXES_OFFSETS[int(np.argmin(areas))]) % 90.0
    assert batch_axes([ring])[0] == pytest.approx(expected, abs=1e-9)


def test_working_rings_skip_what_is_not_a_polygon_with_area():
    line = shapely.LineString([(0, 0), (1, 1)])
    flat = Polygon([(0, 0), (1, 0), (2, 0), (0, 0)])
    out = working_rings([line, flat, box(0, 0, 4, 3)])
    assert out[0] == (None, None) and out[1] == (None, None)
    work, ring = out[2]
    assert work.equals(box(0, 0, 4, 3)) and ring[0].tolist() == ring[-1].tolist()
