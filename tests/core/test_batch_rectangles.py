"""Rectangles fitted to a whole batch of outlines at once equal the one-by-one fits
(core/batch_rectangles.py, core/batch_regularize.py)."""

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box

from roof_detector.core import batch_rectangles, batch_regularize
from roof_detector.core.axes import consensus_orientations, own_axes, working_rings
from roof_detector.core.batch_rectangles import best_rectangles, burn_many, rectangle_polygons
from roof_detector.core.batch_regularize import regularize_batch
from roof_detector.core.rectilinear import _build, burn, fit_rectilinear
from roof_detector.core.regularize import regularize_metric_shape

from .test_regularize_shapes import blob


def _outlines():
    """Traced-looking outlines: rectangles at many angles and sizes, L, T, discs, a slim shed."""
    shapes = [box(0, 0, 12, 7), box(0, 0, 30, 9), box(0, 0, 4, 3), box(0, 0, 90, 40)]
    shapes += [Polygon([(0, 0), (14, 0), (14, 5), (6, 5), (6, 12), (0, 12)])]  # L
    shapes += [Polygon([(0, 6), (18, 6), (18, 11), (0, 11)]).union(box(6, 0, 12, 6))]  # T
    shapes += [Point(0, 0).buffer(6.0), box(0, 0, 20, 2.5)]
    out = []
    for k, truth in enumerate(shapes):
        for angle in (0.0, 13.0, 37.0, 58.0, 81.0):
            out.append(blob(affinity.rotate(truth, angle, origin=(0, 0)), seed=k))
    # an outline whose horizontal edges lie exactly on the fitting grid's row centres
    out.append(box(0.0, 0.0, 6.0, 3.0))
    return out


def _same_grid(a, b):
    return (
        a.mask.shape == b.mask.shape
        and bool((a.mask == b.mask).all())
        and (a.cell_m, a.x0, a.y0, a.cx, a.cy, a.cos_t, a.sin_t) == (b.cell_m, b.x0, b.y0, b.cx, b.cy, b.cos_t, b.sin_t)
    )


@pytest.mark.parametrize("chunk_cells", [batch_rectangles.CHUNK_CELLS, 3000])
def test_grids_equal_burn_one_by_one(monkeypatch, chunk_cells):
    monkeypatch.setattr(batch_rectangles, "CHUNK_CELLS", chunk_cells)
    polys = _outlines()
    thetas = [float(t) for t in np.linspace(0.0, 89.0, len(polys))]
    thetas[-1] = 0.0
    grids = burn_many(polys, thetas)
    assert len(grids) == len(polys)
    for poly, theta, grid in zip(polys, thetas, grids):
        assert _same_grid(grid, burn(poly, theta))


def test_best_rectangles_equal_the_first_rectangle_of_fit_rectilinear(monkeypatch):
    monkeypatch.setattr(batch_rectangles, "CHUNK_CELLS", 20000)  # several padded stacks
    polys = _outlines()
    thetas = [float(t) for t in own_axes(polys)]
    grids = burn_many(polys, thetas) + [None]
    iou, rects = best_rectangles(grids)
    assert np.isnan(iou[-1])
    polygons = rectangle_polygons(grids[:-1], rects[:-1])
    for grid, v, rect, polygon in zip(grids[:-1], iou[:-1], rects[:-1], polygons):
        alone = fit_rectilinear(grid, 1.0, 1.0, max_parts=0)  # the rectangle alone
        assert v == alone.grid_iou
        assert _build(grid, [(+1, tuple(int(x) for x in rect))]).equals_exact(alone.polygon, 0.0)
        assert polygon.equals_exact(alone.polygon, 0.0)


def test_outlines_with_holes_are_refused_and_an_empty_batch_is_fine():
    with pytest.raises(ValueError):
        burn_many([box(0, 0, 10, 10).difference(box(4, 4, 6, 6))], [0.0])
    assert burn_many([], []) == []
    assert best_rectangles([])[0].shape == (0,)


def _one_by_one(metric, thetas, own, prepared):
    out = []
    for m, t, o, p in zip(metric, thetas.tolist(), own.tolist(), prepared):
        out.append(
            regularize_metric_shape(m, 1.0, theta_deg=t if t == t else None, own_deg=o, known_valid=True, prepared=p)
        )
    return out


def test_regularize_batch_equals_fit_polygon_one_by_one(monkeypatch):
    monkeypatch.setattr(batch_regularize, "AXES_TURNS_DEG", ())  # fit_polygon alone never turns the axes
    calls = []
    real_fit = batch_regularize.fit_polygon
    monkeypatch.setattr(batch_regularize, "fit_polygon", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    courtyard = blob(box(0, 0, 30, 30).difference(box(10, 10, 20, 20)), seed=3)
    two_parts = MultiPolygon([blob(box(0, 0, 10, 6)), blob(box(20, 0, 28, 9), seed=1)])
    metric = np.array(_outlines() + [courtyard, two_parts, Polygon()], dtype=object)
    prepared = working_rings(metric)
    own = own_axes(metric, 1.0, prepared)
    thetas = consensus_orientations(metric, np.zeros(len(metric), dtype=int), own=own)
    together = regularize_batch(metric, thetas, own, prepared)
    alone = _one_by_one(metric, thetas, own, prepared)
    for m, (g1, s1), (g2, s2) in zip(metric, together, alone):
        assert s1 == s2
        assert (g1 is m) == (g2 is m)
        assert g1.equals_exact(g2, 0.0)
    assert 0 < len(calls) < len(metric)  # some settled by the batch, the rest one by one


def test_plain_rectangles_are_settled_without_fit_polygon(monkeypatch):
    calls = []
    monkeypatch.setattr(batch_regularize, "fit_polygon", lambda *a, **k: calls.append(1))
    metric = [
        blob(affinity.rotate(box(0, 0, 12 + k, 8), 9.0 * k, origin=(0, 0)), corner_m=0.3, noise=0.03, seed=k)
        for k in range(8)
    ]
    prepared = working_rings(metric)
    own = own_axes(metric, 1.0, prepared)
    out = regularize_batch(metric, own, own, prepared)
    assert not calls
    assert all(s == "rectilinear" and len(g.exterior.coords) == 5 for g, s in out)


def test_regularize_batch_checks_the_tolerance():
    poly = blob(box(0, 0, 12, 7))
    prepared = working_rings([poly])
    own = own_axes([poly], 1.0, prepared)
    with pytest.raises(ValueError):
        regularize_batch([poly], own, own, prepared, tolerance_m=0.0)
    assert shapely.equals(regularize_batch([poly], own, own, prepared)[0][0], regularize_metric_shape(poly)[0])


def test_first_row_at_puts_a_crossing_on_a_row_centre_where_burn_does():
    """burn() counts a row whose centre equals an edge's lower end (``>=``) and not its upper end (``<``)."""
    rng = np.random.default_rng(0)
    n = 2000
    y0 = rng.uniform(-50, 50, n)
    cell = rng.uniform(0.05, 0.25, n)
    height = rng.integers(3, 200, n)
    r = rng.integers(0, height)
    centre = y0 + (r + 0.5) * cell
    for v, want in ((centre, r), (np.nextafter(centre, np.inf), r + 1), (np.nextafter(centre, -np.inf), r)):
        assert (batch_rectangles._first_row_at(v, y0, cell, height) == want).all()
    below, above = y0 - 10.0, y0 + (height + 5) * cell
    assert (batch_rectangles._first_row_at(below, y0, cell, height) == 0).all()
    assert (batch_rectangles._first_row_at(above, y0, cell, height) == height).all()


def _direction(poly):
    xy = np.asarray(poly.exterior.coords)
    d = np.diff(xy, axis=0)
    k = int(np.argmax(np.hypot(d[:, 0], d[:, 1])))
    return (np.degrees(np.arctan2(d[k, 1], d[k, 0])) + 45.0) % 90.0 - 45.0


@pytest.mark.parametrize("off_deg", [1.8, -1.6])
def test_own_axes_a_degree_or_two_off_are_turned_to_where_the_rectangle_fits(monkeypatch, off_deg):
    house = blob(box(0, 0, 40, 7), corner_m=1.0, noise=0.1, seed=4)  # long: a turn of 2 degrees costs IoU
    prepared = working_rings([house])
    off = np.array([off_deg % 90.0])  # its own axes, pulled off by a pixel staircase
    nan = np.array([np.nan])
    ((fit, shape),) = regularize_batch([house], nan, off, prepared)
    assert shape == "rectilinear" and len(fit.exterior.coords) == 5
    assert abs(_direction(fit)) < 0.6
    # axes shared with neighbours are kept (rows stay parallel), and without turns the own are too
    ((shared, _),) = regularize_batch([house], off, np.array([0.0]), prepared)
    assert abs(_direction(shared) - off_deg) < 0.6
    monkeypatch.setattr(batch_regularize, "AXES_TURNS_DEG", ())
    ((unturned, _),) = regularize_batch([house], nan, off, prepared)
    assert abs(_direction(unturned) - off_deg) < 0.6
