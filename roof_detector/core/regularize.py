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
(:func:`.snapping.dominant_orientation`). In a batch (a strip of a detection,
a layer), :func:`consensus_orientations` aligns neighbours within
:data:`NEIGHBOUR_RADIUS_M` whose axes differ by at most
:data:`NEIGHBOUR_MAX_DIFF_DEG`, so rows of houses come out parallel; a building
whose fit fails with the shared axes is fitted again with its own.

The constants were chosen on data that no test figure uses (OAM areas 1, 2, 3
and 5 at z19, INRIA validation chips); see the README. No ``qgis`` import here.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry.base import BaseGeometry

from .metric_frame import to_local_metric
from .rectilinear import burn, ellipse_grid_iou, fit_rectilinear
from .snapping import MAX_AREA_CHANGE, UNCHANGED_M, _clean_ring, dominant_orientation, is_round, snap_polygon

__all__ = [
    "regularize_outline",
    "regularize_metric",
    "fit_polygon",
    "consensus_orientations",
    "building_axes",
    "own_axes",
    "dominant_orientation",
    "is_round",
    "SHAPES",
]

RECTILINEAR, DIAGONAL, CURVED = "rectilinear", "diagonal", "curved"
SHAPES = (RECTILINEAR, DIAGONAL, CURVED)

#: A fitted polygon is kept when its IoU with the traced outline is at least this.
ACCEPT_IOU = 0.80
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
#: Vertices that move the outline by less than this x tolerance are dropped before fitting.
PRESIMPLIFY = 0.1
#: How far (degrees) the smallest bounding rectangle may turn a building's axes from its walls' histogram.
AXES_SEARCH_DEG = 5.0
_AXES_OFFSETS = np.arange(-AXES_SEARCH_DEG, AXES_SEARCH_DEG + 1e-9, 0.25)
#: A rectangle whose IoU with the outline reaches this is kept as it is (no wings, notches or diagonals).
RECT_ENOUGH_IOU = 0.95
#: Outlines filling more of their bounding rectangle than this are not round (a disc fills pi/4).
ROUNDISH_FILL = 0.88
#: A courtyard becomes its bounding rectangle when it fills it this much.
HOLE_FILL = 0.85
#: A hole that fits no right-angled polygon and is smaller than this share of its building is filled.
ODD_HOLE_SHARE = 0.05
#: Neighbours within this distance (metres, edge to edge) share their axes when those are close.
NEIGHBOUR_RADIUS_M = 10.0
NEIGHBOUR_MAX_DIFF_DEG = 10.0


def regularize_outline(
    geometry: BaseGeometry,
    crs_wkt: str,
    tolerance_m: float = 1.0,
    allow_diagonals: bool = True,
    max_area_change: float = MAX_AREA_CHANGE,
) -> BaseGeometry:
    """``geometry`` (Polygon/MultiPolygon in ``crs_wkt``) regularised; ``tolerance_m`` in true metres.

    Returns the input object itself when it is left as it is.
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
) -> Tuple[BaseGeometry, str]:
    """:func:`regularize_metric` and the ``shape`` class (of the largest part, for a MultiPolygon).

    ``theta_deg``, ``own_deg``: see :func:`fit_polygon` (``own_deg`` is used for a Polygon only).
    """
    _check_tolerance(tolerance_m)
    if geometry is None or geometry.is_empty:
        return geometry, CURVED
    if geometry.geom_type == "Polygon":
        return fit_polygon(
            geometry, tolerance_m, theta_deg, allow_diagonals, max_area_change, known_valid, own_deg=own_deg
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
) -> Tuple[Polygon, str]:
    """The regularised polygon (metres) and its ``shape`` class; ``poly`` itself when left as it is.

    ``theta_deg``: the building's axes (degrees in [0, 90) from +x), e.g. shared
    with its neighbours; default: its own. When the fit with the given axes fails,
    the building's own axes are tried. ``own_deg``: its own axes when the caller
    has them already (:func:`own_axes`).
    """
    if not known_valid and not poly.is_valid:
        return poly, CURVED
    work = _working_outline(poly, tolerance_m)
    if work is None:
        return poly, CURVED
    ring = _clean_ring(shapely.get_coordinates(work.exterior))
    if ring is None:
        return poly, CURVED
    own = building_axes(ring, tolerance_m) if own_deg is None or own_deg != own_deg else own_deg
    # Discs, ovals and half-rounds fill at most about pi/4 of their bounding rectangle; outlines
    # that fill much more are not round, which spares them the two roundness tests.
    roundish = _fill(ring, work.area, own) < ROUNDISH_FILL
    arc = _LazyArc(ring, tolerance_m) if roundish else None
    thetas = [own] if theta_deg is None or abs(theta_deg - own) < 1e-9 else [theta_deg, own]
    # Holes bigger than speckle (the detection fills those) are courtyards: the outer
    # outline is fitted alone and each courtyard is cut out of it, squared where it can be.
    shell = Polygon(work.exterior) if work.interiors else work
    for theta in thetas:
        out = _fit_with_axes(shell, theta, tolerance_m, allow_diagonals, max_area_change, arc, roundish)
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
        # an outline that is already what the fit draws keeps its exact coordinates
        if fitted.hausdorff_distance(poly) < UNCHANGED_M:
            return poly, shape
        return fitted, shape
    return poly, CURVED


def _working_outline(poly: Polygon, tol: float) -> Optional[Polygon]:
    """``poly`` without vertices that move it by less than :data:`PRESIMPLIFY` x tolerance.

    A traced outline has a vertex every pixel or two; fitting needs only its
    shape, and every later step costs in proportion to its vertices.
    """
    if poly.area <= 0:
        return None
    if len(poly.exterior.coords) <= 16 and not poly.interiors:
        return poly
    # plain Douglas-Peucker (GEOS's topology-preserving variant costs ten times more); the
    # rare result that is no longer a valid polygon falls back to the outline itself
    out = shapely.simplify(poly, PRESIMPLIFY * tol, preserve_topology=False)
    return out if out.geom_type == "Polygon" and out.area > 0 and out.is_valid else poly


def own_axes(metric: Sequence[BaseGeometry], tolerance_m: float = 1.0) -> np.ndarray:
    """:func:`building_axes` of each polygon (metres), as :func:`fit_polygon` computes them; NaN if none."""
    out = np.full(len(metric), np.nan)
    for i, g in enumerate(metric):
        if g is not None and g.geom_type == "Polygon" and not g.is_empty:
            work = _working_outline(g, tolerance_m)
            ring = None if work is None else _clean_ring(shapely.get_coordinates(work.exterior))
            if ring is not None:
                out[i] = building_axes(ring, tolerance_m)
    return out


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
    """A building's axes, degrees in [0, 90) from +x: its dominant wall direction, refined.

    The edge-direction histogram (:func:`.snapping.dominant_orientation`) is pulled
    a degree or three towards the raster's axes or diagonals by pixel staircases;
    within ±:data:`AXES_SEARCH_DEG` of it, the direction whose bounding rectangle is
    smallest (walls, not stairs, touch the rectangle) is the building's.
    """
    theta = dominant_orientation(ring, tolerance_m)
    xy = ring[:-1] - ring[:-1].mean(axis=0)
    a = np.radians(theta + _AXES_OFFSETS)
    c, s = np.cos(a), np.sin(a)
    u = np.outer(xy[:, 0], c) + np.outer(xy[:, 1], s)
    v = np.outer(xy[:, 1], c) - np.outer(xy[:, 0], s)
    area = (u.max(axis=0) - u.min(axis=0)) * (v.max(axis=0) - v.min(axis=0))
    # ties (a rotation-symmetric outline) keep the histogram's direction
    best = int(np.argmin(area * (1.0 + 1e-9 * np.abs(_AXES_OFFSETS))))
    return float((theta + _AXES_OFFSETS[best]) % 90.0)


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
    poly: Polygon, theta: float, tol: float, diagonals: bool, max_change: float, arc=None, roundish: bool = True
) -> Optional[Tuple[Polygon, str]]:
    """The best fit along ``theta``; None when none agrees with the outline.

    ``arc``: the outline has a long smooth arc; it then stays curved unless a fit
    agrees with it almost exactly (IoU >= :data:`ARC_FIT_IOU`: an octagon-like
    chamfered building, not a half-round one).
    """
    rect = _filled_rectangle(poly, theta)
    if rect is not None:
        return rect, RECTILINEAR
    grid = burn(poly, theta)
    if grid is None:
        return None
    # IoUs are taken on the fitting grid (cells of at most 1/60 of the building): as good as
    # the exact overlay for these decisions, and no GEOS overlay per building
    fit = fit_rectilinear(grid, MIN_GAIN, tol, enough_iou=RECT_ENOUGH_IOU)
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
    """The bounding rectangle along ``theta`` when the outline fills it (IoU >= ``min_fill``, :data:`FAST_FILL`).

    The outline lies inside its bounding rectangle, so their IoU is the ratio of
    their areas: no grid and no overlay are needed for the many clean rectangles.
    """
    xy = np.asarray(poly.exterior.coords)[:, :2]
    t = math.radians(theta)
    c, s = math.cos(t), math.sin(t)
    u = xy[:, 0] * c + xy[:, 1] * s
    v = -xy[:, 0] * s + xy[:, 1] * c
    u0, u1, v0, v1 = u.min(), u.max(), v.min(), v.max()
    box_area = (u1 - u0) * (v1 - v0)
    if not (box_area > 0 and poly.area >= (FAST_FILL if min_fill is None else min_fill) * box_area):
        return None
    corners = np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1), (u0, v0)])
    return Polygon(np.column_stack([corners[:, 0] * c - corners[:, 1] * s, corners[:, 0] * s + corners[:, 1] * c]))


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


def consensus_orientations(
    metric: Sequence[BaseGeometry],
    groups: Sequence[int],
    tolerance_m: float = 1.0,
    radius_m: float = NEIGHBOUR_RADIUS_M,
    max_diff_deg: float = NEIGHBOUR_MAX_DIFF_DEG,
    own: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Axes (degrees in [0, 90)) per polygon, shared with aligned neighbours.

    ``metric``: polygons in metres; ``groups``: the metric frame of each (only
    polygons of one frame are compared); ``own``: their own axes
    (:func:`own_axes`, computed when not given). Polygons within ``radius_m`` of
    each other whose axes differ by at most ``max_diff_deg`` are linked; each
    cluster of linked polygons (a row, a block) takes the perimeter-weighted
    circular mean (modulo 90°) of its members' axes, except members farther than
    ``max_diff_deg`` from it. NaN where a polygon has no axes (empty, degenerate).
    """
    geoms = np.asarray(metric, dtype=object)
    n = len(geoms)
    own = own_axes(geoms, tolerance_m) if own is None else np.asarray(own, dtype=float)
    out = own.copy()
    ok = np.isfinite(own)
    if ok.sum() < 2:
        return out
    weight = shapely.length(geoms[ok]) if ok.any() else np.zeros(0)
    idx = np.flatnonzero(ok)
    w = np.zeros(n)
    w[idx] = weight
    vec = np.exp(1j * np.radians(4.0 * np.nan_to_num(own)))
    groups = np.asarray(groups)
    pairs_a, pairs_b = [], []
    for g in np.unique(groups[idx]):
        members = idx[groups[idx] == g]
        if len(members) < 2:
            continue
        tree = shapely.STRtree(geoms[members])
        a, b = tree.query(geoms[members], predicate="dwithin", distance=radius_m)
        a, b = members[a], members[b]
        close = np.abs((own[a] - own[b] + 45.0) % 90.0 - 45.0) <= max_diff_deg
        pairs_a.append(a[close])
        pairs_b.append(b[close])
    if not pairs_a:
        return out
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    # a row or block of aligned neighbours is one cluster with one axis (a link may join
    # buildings up to max_diff apart, so a member far from the cluster's axis keeps its own)
    n_clusters, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    total = np.zeros(n_clusters, dtype=complex)
    np.add.at(total, label[idx], w[idx] * vec[idx])
    mean = (np.degrees(np.angle(total[label[idx]])) / 4.0) % 90.0
    near = np.abs((mean - own[idx] + 45.0) % 90.0 - 45.0) <= max_diff_deg
    out[idx[near]] = mean[near]
    return out
