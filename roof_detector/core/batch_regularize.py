"""Regularise a batch of outlines, settling the plain rectangles with array operations.

:func:`.regularize.fit_polygon` decides one building at a time. Most buildings
are rectangles, and for a rectangle its answer is known after two steps that
can run over the whole batch at once: the bounding rectangle along the
building's axes when the outline fills it (:data:`.regularize.FAST_FILL`), else
the best rectangle on the fitting grid when its IoU reaches
:data:`.regularize.RECT_ENOUGH_IOU` (:mod:`.batch_rectangles`), followed by the
same size check and the same "already regular" check. Every other outline
(wings, notches, diagonals, curves, courtyards, multi-part) goes through
:func:`.regularize.fit_polygon`, handed the grid and rectangle already computed,
so nothing is done twice. The results are those of :func:`.regularize.fit_polygon`
for every outline (``tests/core/test_batch_rectangles.py``).

No ``qgis`` import here.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from .batch_rectangles import best_rectangles, burn_many, filled_rectangles, rectangle_polygons
from .regularize import (
    ARC_FIT_IOU,
    FAST_FILL,
    RECT_ENOUGH_IOU,
    RECTILINEAR,
    _axes_to_try,
    _check_tolerance,
    fit_polygon,
    regularize_metric_shape,
)
from .snapping import MAX_AREA_CHANGE, UNCHANGED_M

Prepared = Tuple[Optional[Polygon], Optional[np.ndarray]]

#: Turns (degrees) of the axes also tried for an outline that its best rectangle does not fit
#: well (grid IoU under RECT_ENOUGH_IOU): the axes come from traced walls, whose pixel
#: staircases pull them towards the raster's axes by a degree or two (README, "How the
#: constants were chosen"). The turn whose best rectangle has the highest grid IoU is fitted.
AXES_TURNS_DEG: Tuple[float, ...] = (-2.0, -1.0, 1.0, 2.0)


def regularize_batch(
    metric: Sequence[BaseGeometry],
    thetas_deg: np.ndarray,
    own_deg: np.ndarray,
    prepared: List[Prepared],
    tolerance_m: float = 1.0,
) -> List[Tuple[BaseGeometry, str]]:
    """:func:`.regularize.regularize_metric_shape` of each valid outline (metres): (geometry, shape).

    ``thetas_deg``: the axes to fit along (shared with neighbours; NaN: the building's
    own), ``own_deg``: each building's own axes, ``prepared``: :func:`.axes.working_rings`
    of the outlines. A geometry left as it is comes back as the very same object.
    """
    _check_tolerance(tolerance_m)
    metric = list(metric)
    out: List[Optional[Tuple[BaseGeometry, str]]] = [None] * len(metric)
    simple = [
        i
        for i, (work, ring) in enumerate(prepared)
        if work is not None
        and ring is not None
        and own_deg[i] == own_deg[i]
        and metric[i].geom_type == "Polygon"
        and not work.interiors
    ]
    # fit_polygon's first axes: the shared ones unless they are the building's own
    first = np.array([_axes_to_try(thetas_deg[i], own_deg[i])[0] for i in simple], dtype=float)
    works = np.array([prepared[i][0] for i in simple], dtype=object)
    # only a building on its own axes is turned: shared axes keep a row of houses parallel
    on_own = np.array([first[k] == own_deg[i] for k, i in enumerate(simple)], dtype=bool)
    fitted, hints = _rectangles(works, first, on_own)
    done = np.flatnonzero(fitted != None)  # noqa: E711 (an object array, element-wise)
    _settle([simple[k] for k in done.tolist()], metric, fitted[done], out)
    for k, i in enumerate(simple):
        if out[i] is None:
            out[i] = _one(metric[i], first[k], own_deg[i], prepared[i], tolerance_m, hints.get(k))
    for i in range(len(metric)):
        if out[i] is None:
            out[i] = _one(metric[i], thetas_deg[i], own_deg[i], prepared[i], tolerance_m, None)
    return out  # type: ignore[return-value]


def _rectangles(works: np.ndarray, first: np.ndarray, turnable: np.ndarray) -> Tuple[np.ndarray, dict]:
    """The rectangles that settle outlines (None elsewhere), and for the others the grid and best
    rectangle along their first axes (``first``; where ``turnable``, turned by :data:`AXES_TURNS_DEG`
    when that fits better)."""
    fitted = filled_rectangles(works, first, FAST_FILL)
    miss = np.flatnonzero(fitted == None)  # noqa: E711
    grids = burn_many(works[miss], first[miss])
    iou, rects = best_rectangles(grids)
    enough = max(RECT_ENOUGH_IOU, ARC_FIT_IOU)
    slow = np.flatnonzero(~(iou >= enough) & (iou == iou) & turnable[miss])  # NaN: no grid
    if len(slow) and AXES_TURNS_DEG:
        _turn_axes(works, first, miss[slow], slow, grids, iou, rects)
    good = iou >= enough
    fitted[miss[good]] = rectangle_polygons([grids[j] for j in np.flatnonzero(good)], rects[good])
    hints = {int(miss[j]): (grids[j], float(iou[j]), rects[j]) for j in np.flatnonzero(~good & (iou == iou))}
    return fitted, hints


def _turn_axes(works, first, which, slots, grids, iou, rects) -> None:
    """Turn the axes of outlines ``which`` by :data:`AXES_TURNS_DEG` where a rectangle fits better.

    Updates ``first`` (per outline) and ``grids``/``iou``/``rects`` (at ``slots``) in place.
    """
    turns = np.asarray(AXES_TURNS_DEG, dtype=float)
    thetas = ((first[which][:, None] + turns[None, :]) % 90.0).ravel()
    turned = burn_many(np.repeat(works[which], len(turns)), thetas)
    t_iou, t_rects = best_rectangles(turned)
    t_iou = np.nan_to_num(t_iou, nan=-1.0).reshape(len(which), len(turns))
    pick = t_iou.argmax(axis=1)
    for j in np.flatnonzero(t_iou[np.arange(len(which)), pick] > iou[slots]).tolist():
        flat = j * len(turns) + int(pick[j])
        grids[slots[j]], iou[slots[j]], rects[slots[j]] = turned[flat], t_iou[j, pick[j]], t_rects[flat]
        first[which[j]] = thetas[flat]


def _one(geom, theta, own, prep, tolerance_m, hint):
    """One outline through :func:`.regularize.fit_polygon` (Polygon) or the MultiPolygon path."""
    theta = None if theta != theta else float(theta)
    own = None if own != own else float(own)
    if geom.geom_type == "Polygon":
        return fit_polygon(geom, tolerance_m, theta, known_valid=True, own_deg=own, prepared=prep, first_fit=hint)
    return regularize_metric_shape(geom, tolerance_m, theta_deg=theta, known_valid=True)


def _settle(which: List[int], metric: List[BaseGeometry], fitted: np.ndarray, out: list) -> None:
    """fit_polygon's last checks on rectangles found for the outlines ``which``: a rectangle of
    another size is no fit (left to fit_polygon), one within 1 mm keeps the outline's coordinates."""
    if not which:
        return
    polys = np.array([metric[i] for i in which], dtype=object)
    area = shapely.area(polys)
    size_ok = ~(np.abs(shapely.area(fitted) - area) > MAX_AREA_CHANGE * area)
    same = shapely.hausdorff_distance(fitted, polys) < UNCHANGED_M
    for i, p, f, ok, keep in zip(which, polys, fitted, size_ok.tolist(), same.tolist()):
        if ok:
            out[i] = (p, RECTILINEAR) if keep else (f, RECTILINEAR)
