"""Regularise building outlines into the polygons a person would draw.

A traced outline follows the mask's staircases and rounded corners. For each
outline (in metres, in a local metric frame) this module picks one of three
shapes, reported in the ``shape`` field of a detection:

* ``rectilinear``: a rectangle or right-angled polygon (L, T, U, courtyard)
  fitted by rectangle decomposition in the building's own axes
  (:mod:`.rectilinear`). It is kept when its IoU with the traced outline is at
  least :data:`ACCEPT_IOU`; each wing or notch must raise that IoU by
  :data:`MIN_GAIN` and be at least the tolerance wide, so detail smaller than
  the tolerance is not drawn.
* ``diagonal``: an outline squared edge by edge to right angles and 45°
  diagonals (:mod:`.snapping`), chosen over the right-angled fit only when it
  agrees with the traced outline clearly better (by :data:`DIAGONAL_MARGIN`).
* ``curved``: round structures (tanks, domes, oval roofs: the outline agrees with
  its moment ellipse better than with any right-angled fit, IoU >= :data:`ROUND_IOU`) and outlines
  that no fit matches keep their smooth traced outline, unchanged.

Orientation: a building's axes come from its own walls
(:mod:`.axes`). In a batch (a strip of a detection,
a layer), :func:`consensus_orientations` aligns neighbours within
:data:`.axes.NEIGHBOUR_RADIUS_M` whose axes differ by at most
:data:`.axes.NEIGHBOUR_MAX_DIFF_DEG`, so rows of houses come out parallel; a building
whose fit fails with the shared axes is fitted again with its own.

The constants were chosen on data that no test figure uses (OAM areas 1, 2, 3
and 5 at z19, INRIA validation chips); see the README. No ``qgis`` import here.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .axes import (
    batch_axes,
    consensus_orientations,
    own_axes,
    working_rings,
)
from .metric_frame import to_local_metric
from .batch_rectangles import best_rectangles, burn_many, filled_rectangles
from .rectilinear import Grid, burn, ellipse_grid_iou, fit_rectilinear
from .snapping import MAX_AREA_CHANGE, UNCHANGED_M, is_round, snap_polygon

__all__ = [
    "regularize_outline",
    "regularize_metric",
    "fit_polygon",
    "consensus_orientations",
    "building_axes",
    "own_axes",
    "working_rings",
    "is_round",
    "SHAPES",
]

RECTILINEAR, DIAGONAL, CURVED = "rectilinear", "diagonal", "curved"
SHAPES = (RECTILINEAR, DIAGONAL, CURVED)

#: A fitted polygon is kept when its IoU with the traced outline is at least this.
ACCEPT_IOU = 0.84
#: The IoU a wing or notch must add to be drawn (the price of two to four more vertices).
MIN_GAIN = 0.015
#: An outline whose moment ellipse has at least this IoU with it, more than any right-angled fit, is round.
ROUND_IOU = 0.93
#: A diagonal-edged outline replaces the right-angled fit only when its IoU is this much higher.
DIAGONAL_MARGIN = 0.03
#: Snapped outlines with more vertices than this are not what a person draws.
MAX_DIAGONAL_VERTICES = 16
#: Arcs (:func:`_has_long_arc`): outline simplified by this x tolerance, steps of at most
#: this many degrees, at least this much turning in all, share of the perimeter, radius x tolerance.
ARC_SIMPLIFY = 0.15
ARC_MAX_STEP_DEG = 30.0
ARC_MIN_TURN_DEG = 150.0
ARC_MIN_SHARE = 0.3
ARC_MIN_RADIUS = 3.0
ARC_FIT_IOU = 0.95
#: An outline that fills its bounding rectangle (along its axes) this much becomes that rectangle.
FAST_FILL = 0.97
#: A rectangle whose IoU with the outline reaches this is kept as it is (no wings, notches or diagonals).
RECT_ENOUGH_IOU = 0.95
#: Outlines filling more of their bounding rectangle than this are not round (a disc fills pi/4).
ROUNDISH_FILL = 0.88
#: A courtyard becomes its bounding rectangle when it fills it this much.
HOLE_FILL = 0.85
#: A hole that fits no right-angled polygon and is smaller than this share of its building is filled.
ODD_HOLE_SHARE = 0.05
#: An outline that no fit along its own (or shared) axes matches is tried along axes every this many
#: degrees over [0, 90): a blob's own axes come from walls its mask barely shows and can be far off.
SWEEP_STEP_DEG = 5.0
#: The swept axes whose best rectangle fits best that get the whole right-angled fit (at least
#: two steps apart).
SWEEP_TOP_K = 3
#: Turns (degrees) that refine each swept angle before its fit (the best rectangle decides).
SWEEP_REFINE_DEG: Tuple[float, ...] = (-2.0, -1.0, 1.0, 2.0)


def regularize_outline(
    geometry: BaseGeometry,
    crs_wkt: str,
    tolerance_m: float = 1.0,
    allow_diagonals: bool = True,
    max_area_change: float = MAX_AREA_CHANGE,
) -> BaseGeometry:
    """``geometry`` (Polygon/MultiPolygon in ``crs_wkt``) regularised; ``tolerance_m`` in true metres.

    Returns the input object itself when it is left as it is. One outline by itself, with
    :func:`fit_polygon`; a layer (detection, ``solar``, Processing) goes through
    :func:`.footprints.measure_metric_batch`, which adds what needs the batch: axes shared with
    aligned neighbours, and turning a poorly fitting building's own axes by a degree or two
    (:mod:`.batch_regularize`).
    """
    if geometry is None or geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
        return geometry
    metric, frame = to_local_metric(geometry, crs_wkt)
    result = regularize_metric(metric, tolerance_m, allow_diagonals, max_area_change)
    # An outline that is already regular comes back only moved by rounding (about 1e-5 m
    # through the metric frame): keep the original coordinates then.
    if result is metric or result.hausdorff_distance(metric) < UNCHANGED_M:
        return geometry
    return frame.from_metric(result)


def regularize_metric(
    geometry: BaseGeometry,
    tolerance_m: float = 1.0,
    allow_diagonals: bool = True,
    max_area_change: float = MAX_AREA_CHANGE,
    *,
    known_valid: bool = False,
) -> BaseGeometry:
    """Regularise a Polygon/MultiPolygon whose coordinates are metres (see :func:`fit_polygon`).

    Returns ``geometry`` itself when it is left as it is.
    """
    out, _shape = regularize_metric_shape(
        geometry, tolerance_m, allow_diagonals, max_area_change, known_valid=known_valid
    )
    return out


def regularize_metric_shape(
    geometry: BaseGeometry,
    tolerance_m: float = 1.0,
    allow_diagonals: bool = True,
    max_area_change: float = MAX_AREA_CHANGE,
    theta_deg: Optional[float] = None,
    *,
    own_deg: Optional[float] = None,
    known_valid: bool = False,
    prepared: Optional[Tuple[Optional[Polygon], Optional[np.ndarray]]] = None,
) -> Tuple[BaseGeometry, str]:
    """:func:`regularize_metric` and the ``shape`` class (of the largest part, for a MultiPolygon).

    ``theta_deg``, ``own_deg``, ``prepared``: see :func:`fit_polygon` (the last two are used
    for a Polygon only).
    """
    _check_tolerance(tolerance_m)
    if geometry is None or geometry.is_empty:
        return geometry, CURVED
    if geometry.geom_type == "Polygon":
        return fit_polygon(
            geometry,
            tolerance_m,
            theta_deg,
            allow_diagonals,
            max_area_change,
            known_valid,
            own_deg=own_deg,
            prepared=prepared,
        )
    if geometry.geom_type == "MultiPolygon":
        parts = list(geometry.geoms)  # each access to .geoms makes new objects: keep one set for `is`
        fits = [fit_polygon(p, tolerance_m, theta_deg, allow_diagonals, max_area_change, known_valid) for p in parts]
        largest = int(np.argmax([p.area for p in parts]))
        if all(f is p for (f, _), p in zip(fits, parts)):
            return geometry, fits[largest][1]
        merged = MultiPolygon([f for f, _ in fits])
        if not merged.is_valid:
            return geometry, CURVED
        return merged, fits[largest][1]
    return geometry, CURVED


def fit_polygon(
    poly: Polygon,
    tolerance_m: float = 1.0,
    theta_deg: Optional[float] = None,
    allow_diagonals: bool = True,
    max_area_change: float = MAX_AREA_CHANGE,
    known_valid: bool = False,
    *,
    own_deg: Optional[float] = None,
    prepared: Optional[Tuple[Optional[Polygon], Optional[np.ndarray]]] = None,
    first_fit: Optional[Tuple[Grid, float, Tuple[int, int, int, int]]] = None,
) -> Tuple[Polygon, str]:
    """The regularised polygon (metres) and its ``shape`` class; ``poly`` itself when left as it is.

    ``theta_deg``: the building's axes (degrees in [0, 90) from +x), e.g. shared
    with its neighbours; default: its own. When the fit with the given axes fails,
    the building's own axes are tried. ``own_deg``: its own axes when the caller
    has them already (:func:`own_axes`); ``prepared``: its :func:`working_rings` entry;
    ``first_fit``: the fitting grid along the first axes tried and its best rectangle
    (grid IoU, rows/columns), when a batch computed them (:mod:`.batch_regularize`).
    """
    if not known_valid and not poly.is_valid:
        return poly, CURVED
    work, ring = prepared if prepared is not None else working_rings([poly], tolerance_m)[0]
    if work is None or ring is None:
        return poly, CURVED
    own = building_axes(ring, tolerance_m) if own_deg is None or own_deg != own_deg else own_deg
    # Discs, ovals and half-rounds fill at most about pi/4 of their bounding rectangle; outlines
    # that fill much more are not round, which spares them the two roundness tests.
    roundish = _fill(ring, work.area, own) < ROUNDISH_FILL
    arc = _LazyArc(ring, tolerance_m) if roundish else None
    thetas = _axes_to_try(theta_deg, own)
    # Holes bigger than speckle (the detection fills those) are courtyards: the outer
    # outline is fitted alone and each courtyard is cut out of it, squared where it can be.
    shell = Polygon(work.exterior) if work.interiors else work
    for k, theta in enumerate(thetas):
        hint = first_fit if k == 0 else None
        out = _fit_with_axes(shell, theta, tolerance_m, allow_diagonals, max_area_change, arc, roundish, hint)
        if out is None:
            continue
        fitted, shape = out
        if shape == CURVED:
            return poly, CURVED
        if work.interiors:
            fitted = _cut_courtyards(fitted, work, theta, tolerance_m)
            if fitted is None:
                continue
        if abs(fitted.area - poly.area) > max_area_change * poly.area:
            continue  # a fit that agrees in shape but not in size (a thin sliver, a spike) is no fit
        return _kept(fitted, poly), shape
    # No fit along the axes tried, and neither round nor arced (those returned above)
    swept = None if arc else _swept_fit(shell, work, poly, tolerance_m, max_area_change)
    return (poly, CURVED) if swept is None else (_kept(swept, poly), RECTILINEAR)


def _refined(shell: Polygon, candidates: list) -> list:
    """Each swept ``(theta, grid, (rect IoU, rect))`` turned by :data:`SWEEP_REFINE_DEG` where its best
    rectangle fits better there (ties keep the swept angle): one batched burn for all turns."""
    if not candidates or not SWEEP_REFINE_DEG:
        return candidates
    turns = [(theta + d) % 90.0 for theta, _g, _f in candidates for d in SWEEP_REFINE_DEG]
    grids = burn_many([shell] * len(turns), turns)
    rect_iou, rects = best_rectangles(grids)
    out = []
    for k, (theta, grid, first) in enumerate(candidates):
        best = (theta, grid, first)
        for t in range(k * len(SWEEP_REFINE_DEG), (k + 1) * len(SWEEP_REFINE_DEG)):
            if rect_iou[t] > best[2][0]:
                best = (turns[t], grids[t], (rect_iou[t], rects[t]))
        out.append(best)
    return out


def _kept(fitted: Polygon, poly: Polygon) -> Polygon:
    """``fitted``, or ``poly`` itself when it is already what the fit draws (to 1 mm):
    an outline that is already regular keeps its exact coordinates."""
    return poly if fitted.hausdorff_distance(poly) < UNCHANGED_M else fitted


def _swept_fit(shell: Polygon, work: Polygon, poly: Polygon, tol: float, max_change: float) -> Optional[Polygon]:
    """The best right-angled fit along the axes of a sweep (:data:`SWEEP_STEP_DEG`), or None.

    The sweep's axes are ranked by their best rectangle (one batched burn and ascent);
    the :data:`SWEEP_TOP_K` best, at least two steps apart, get the whole fit, and the
    one with the highest grid IoU is kept when it reaches :data:`ACCEPT_IOU` and passes
    the same courtyard and size checks as any fit.
    """
    thetas = np.arange(0.0, 90.0, SWEEP_STEP_DEG)
    grids = burn_many([shell] * len(thetas), thetas)
    rect_iou, rects = best_rectangles(grids)
    picked: List[int] = []
    for j in np.argsort(-np.nan_to_num(rect_iou, nan=-1.0), kind="stable").tolist():
        if len(picked) == SWEEP_TOP_K or not rect_iou[j] == rect_iou[j]:
            break
        if all(abs((thetas[j] - thetas[p] + 45.0) % 90.0 - 45.0) >= 2 * SWEEP_STEP_DEG - 1e-9 for p in picked):
            picked.append(j)
    best_iou, best = ACCEPT_IOU, None
    for theta, grid, first in _refined(shell, [(float(thetas[j]), grids[j], (rect_iou[j], rects[j])) for j in picked]):
        fit = fit_rectilinear(grid, MIN_GAIN, tol, enough_iou=RECT_ENOUGH_IOU, first=first)
        if fit is None or fit.grid_iou < best_iou or (best is not None and fit.grid_iou == best_iou):
            continue
        fitted = _cut_courtyards(fit.polygon, work, theta, tol) if work.interiors else fit.polygon
        if fitted is None or abs(fitted.area - poly.area) > max_change * poly.area:
            continue
        best_iou, best = fit.grid_iou, fitted
    return best


def _axes_to_try(theta_deg: Optional[float], own: float) -> List[float]:
    """The axes a fit tries, in order: the given (shared) ones, then the building's own;
    only its own when none are given (None or NaN) or they are its own."""
    if theta_deg is None or theta_deg != theta_deg or abs(theta_deg - own) < 1e-9:
        return [own]
    return [theta_deg, own]


def _cut_courtyards(fitted: Polygon, poly: Polygon, theta: float, tol: float) -> Optional[Polygon]:
    """``fitted`` minus the holes of ``poly``, squared like buildings along the same axes.

    A hole that no right-angled polygon fits and that is small (under
    :data:`ODD_HOLE_SHARE` of the building) is a gap in the mask, not a courtyard:
    it is filled. A large one is cut out as traced.
    """
    holes = []
    for interior in poly.interiors:
        hole = Polygon(interior)
        rect = _filled_rectangle(hole, theta, HOLE_FILL)
        if rect is not None:
            holes.append(rect)
            continue
        grid = burn(hole, theta)
        fit = fit_rectilinear(grid, MIN_GAIN, tol) if grid is not None else None
        if fit is not None and fit.grid_iou >= ACCEPT_IOU:
            holes.append(fit.polygon)
        elif hole.area >= ODD_HOLE_SHARE * fitted.area:
            holes.append(hole)
    if not holes:
        return fitted
    out = shapely.difference(fitted, shapely.union_all(holes))
    return out if out.geom_type == "Polygon" and out.is_valid and not out.is_empty else None


def building_axes(ring: np.ndarray, tolerance_m: float = 1.0) -> float:
    """A building's axes, degrees in [0, 90) from +x: its dominant wall direction, refined
    (:mod:`.axes`; a batch of rings at once: :func:`.axes.batch_axes`)."""
    return float(batch_axes([ring], tolerance_m)[0])


class _LazyArc:
    """:func:`_has_long_arc` of a ring, computed on first use (most fits never need it)."""

    def __init__(self, ring: np.ndarray, tol: float):
        self.ring, self.tol, self._value = ring, tol, None

    def __bool__(self) -> bool:
        if self._value is None:
            self._value = _has_long_arc(self.ring, self.tol)
        return self._value


def _fill(ring: np.ndarray, area: float, theta: float) -> float:
    """Share of its bounding rectangle along ``theta`` that an outline of ``area`` fills."""
    t = math.radians(theta)
    c, s = math.cos(t), math.sin(t)
    u = ring[:, 0] * c + ring[:, 1] * s
    v = ring[:, 1] * c - ring[:, 0] * s
    box = (u.max() - u.min()) * (v.max() - v.min())
    return area / box if box > 0 else 0.0


def _fit_with_axes(
    poly: Polygon,
    theta: float,
    tol: float,
    diagonals: bool,
    max_change: float,
    arc=None,
    roundish: bool = True,
    hint: Optional[Tuple[Grid, float, Tuple[int, int, int, int]]] = None,
) -> Optional[Tuple[Polygon, str]]:
    """The best fit along ``theta``; None when none agrees with the outline.

    ``arc``: the outline has a long smooth arc; it then stays curved unless a fit
    agrees with it almost exactly (IoU >= :data:`ARC_FIT_IOU`: an octagon-like
    chamfered building, not a half-round one). ``hint``: the grid along ``theta``
    and its best rectangle, already computed (see :func:`fit_polygon`).
    """
    rect = _filled_rectangle(poly, theta)
    if rect is not None:
        return rect, RECTILINEAR
    grid = burn(poly, theta) if hint is None else hint[0]
    if grid is None:
        return None
    # IoUs are taken on the fitting grid (cells of at most 1/60 of the building): as good as
    # the exact overlay for these decisions, and no GEOS overlay per building
    first = None if hint is None else hint[1:]
    fit = fit_rectilinear(grid, MIN_GAIN, tol, enough_iou=RECT_ENOUGH_IOU, first=first)
    fit_iou = fit.grid_iou if fit is not None else 0.0
    if fit is not None and fit.parts == 1 and fit_iou >= RECT_ENOUGH_IOU and (fit_iou >= ARC_FIT_IOU or not arc):
        return fit.polygon, RECTILINEAR  # a rectangle this good leaves a diagonal fit no margin
    snapped, snapped_iou = None, 0.0
    if diagonals and fit_iou < 1.0 - DIAGONAL_MARGIN:
        snapped = snap_polygon(poly, tol, True, max_change, True)
        if snapped is not None and len(snapped.exterior.coords) - 1 <= MAX_DIAGONAL_VERTICES and _has_diagonal(snapped):
            snapped_iou = grid.iou_of(snapped)
    # round: the moment ellipse agrees better than any polygon a person would draw
    if roundish and ellipse_grid_iou(grid) >= max(ROUND_IOU, max(fit_iou, snapped_iou) + 0.02):
        return poly, CURVED
    best: Optional[Tuple[Polygon, str]] = None
    if fit_iou >= ACCEPT_IOU:
        best = (fit.polygon, RECTILINEAR)
    if snapped_iou >= ACCEPT_IOU and snapped_iou >= fit_iou + DIAGONAL_MARGIN:
        best = (snapped, DIAGONAL)
    best_iou = 0.0 if best is None else fit_iou if best[1] == RECTILINEAR else snapped_iou
    if best_iou < ARC_FIT_IOU and arc:
        return poly, CURVED
    return best


def _has_long_arc(ring: np.ndarray, tol: float) -> bool:
    """The outline has a smooth arc: a half-round end, a curved facade (see :data:`ARC_MIN_TURN_DEG`).

    On the outline simplified by ``ARC_SIMPLIFY`` x tolerance, an arc is a run of
    vertices turning the same way by at most ``ARC_MAX_STEP_DEG`` each, turning
    ``ARC_MIN_TURN_DEG`` in all, over at least ``ARC_MIN_SHARE`` of the perimeter,
    with a radius of at least ``ARC_MIN_RADIUS`` x tolerance. Pixel staircases turn
    both ways and blobby corners are short and tight, so neither counts.
    """
    pts = np.asarray(shapely.simplify(shapely.LineString(ring), ARC_SIMPLIFY * tol).coords)
    if len(pts) < 6:
        return False
    d = np.diff(pts, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    perimeter = float(length.sum())
    ang = np.arctan2(d[:, 1], d[:, 0])
    turn = np.degrees((np.roll(ang, -1) - ang + np.pi) % (2 * np.pi) - np.pi)  # at the end of each edge
    n = len(turn)
    # walk the closed ring twice so that an arc through the starting vertex is seen whole
    run_turn = run_len = 0.0
    sign = 0
    for k in range(2 * n):
        t, edge = float(turn[k % n]), float(length[(k + 1) % n])
        s = 1 if t > 0 else -1
        if abs(t) <= ARC_MAX_STEP_DEG and abs(t) > 0.5 and (sign == 0 or s == sign):
            sign = s
            run_turn += abs(t)
            run_len += edge
            if (
                run_turn >= ARC_MIN_TURN_DEG
                and run_len >= ARC_MIN_SHARE * perimeter
                and run_len / math.radians(run_turn) >= ARC_MIN_RADIUS * tol
            ):
                return True
        else:
            run_turn = run_len = 0.0
            sign = 0
    return False


def _filled_rectangle(poly: Polygon, theta: float, min_fill: Optional[float] = None) -> Optional[Polygon]:
    """The bounding rectangle along ``theta`` when the outline fills it (IoU >= ``min_fill``, :data:`FAST_FILL`)."""
    return filled_rectangles([poly], [theta], FAST_FILL if min_fill is None else min_fill)[0]


def _has_diagonal(poly: Polygon) -> bool:
    """Some edge runs at 45° to the longest edge."""
    xy = np.asarray(poly.exterior.coords)
    d = np.diff(xy, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    ang = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    rel = (ang - ang[int(length.argmax())]) % 90.0
    return bool(np.any(np.abs(rel - 45.0) < 1.0))


def _iou(a: BaseGeometry, b: BaseGeometry) -> float:
    inter = shapely.intersection(a, b).area
    union = a.area + b.area - inter
    return float(inter / union) if union > 0 else 0.0


def _check_tolerance(tolerance_m: float) -> None:
    if not (isinstance(tolerance_m, (int, float)) and math.isfinite(tolerance_m) and tolerance_m > 0):
        raise ValueError(f"tolerance must be a positive number of metres, not {tolerance_m}")
