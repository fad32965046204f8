"""Fit the right-angled polygon a person would draw to a traced building outline.

A traced outline is a blob: rounded corners, wobbling walls, a staircase on
every slanted edge. People draw buildings as rectangles and right-angled
polygons (L, T, U shapes, courtyards) with 4 to a dozen vertices. This module
fits such a polygon by **rectangle decomposition** in the building's own axes:

1. The outline is rotated by ``-theta`` (its dominant wall direction) and burnt
   onto a fine grid of at most :data:`GRID_CELLS` cells along its longer side
   (even-odd scanline fill of pixel centres, so courtyards stay holes).
2. The axis-aligned rectangle with the best IoU against that grid is found by
   coordinate ascent on its four edges, with 2-D prefix sums so that every
   candidate edge position costs O(1).
3. Greedily, the wing (building pixels outside the shape) or notch (shape
   pixels that are not building) whose best-fitting rectangle raises the IoU
   most is added or cut out, while the gain is at least ``min_gain`` and the
   part is at least ``min_part_m`` wide and long. Each step adds 2-4 vertices,
   so ``min_gain`` is the price of a vertex pair: an L comes back with 6, a T or
   U with 8, a courtyard as a rectangle with a rectangular hole.
4. The union/difference of the rectangles is built exactly with shapely in the
   rotated frame and rotated back.

Everything is in metres (the caller works in a local metric frame); the grid
is only used to choose the rectangles. The exact IoU of the result against the
outline is checked by the caller (:mod:`.regularize`).

No ``qgis`` import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import Polygon

#: Cells of the fitting grid along the outline's longer side (finer costs more, gains little).
GRID_CELLS = 60
#: The grid cell is never finer than this (metres): sub-decimetre detail is noise at 0.1-0.5 m GSD.
MIN_CELL_M = 0.05
#: Nor coarser (metres): a large building gets a larger grid rather than edges off by half a cell.
MAX_CELL_M = 0.25
#: Wings and notches added or cut at most (an outline with more detail is not a simple building).
MAX_PARTS = 4
#: A fit never has more corners than this (all rings; people draw buildings with fewer).
MAX_VERTICES = 16
#: The largest residual components tried at each step, per sign.
MAX_COMPONENTS = 2

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass
class RectilinearFit:
    """A fitted polygon in metres, its IoU with the outline on the grid, and how many parts it has."""

    polygon: Polygon
    grid_iou: float
    parts: int


@dataclass
class Grid:
    """An outline burnt onto a grid in its rotated frame: ``mask[row, col]``, cell size, origin."""

    mask: np.ndarray
    cell_m: float
    x0: float  # rotated-frame coordinates of the grid's lower-left corner
    y0: float
    cx: float  # the rotation centre (source metric coordinates)
    cy: float
    cos_t: float
    sin_t: float

    def to_source(self, xy: np.ndarray) -> np.ndarray:
        """Rotated-frame coordinates back to the source metric frame."""
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([self.cx + x * self.cos_t - y * self.sin_t, self.cy + x * self.sin_t + y * self.cos_t])

    def iou_of(self, polygon: Polygon) -> float:
        """IoU of ``polygon`` (source metric coordinates) with the mask, on this grid."""
        rings = [np.asarray(polygon.exterior.coords)[:, :2]] + [np.asarray(r.coords)[:, :2] for r in polygon.interiors]
        rotated = []
        for ring in rings:
            x, y = ring[:, 0] - self.cx, ring[:, 1] - self.cy
            rotated.append(np.column_stack([x * self.cos_t + y * self.sin_t, -x * self.sin_t + y * self.cos_t]))
        other = _scanline_fill(rotated, self.x0, self.y0, self.cell_m, *self.mask.shape)
        inter = int((other & self.mask).sum())
        union = int((other | self.mask).sum())
        return inter / union if union else 0.0

    def box(self, r0: int, r1: int, c0: int, c1: int) -> Polygon:
        """Rows ``r0:r1`` and columns ``c0:c1`` of the grid as a rectangle in the rotated frame."""
        c = self.cell_m
        return shapely.box(self.x0 + c0 * c, self.y0 + r0 * c, self.x0 + c1 * c, self.y0 + r1 * c)


def burn(polygon: Polygon, theta_deg: float) -> Optional[Grid]:
    """The polygon rotated by ``-theta_deg`` about its centroid, burnt onto the fitting grid."""
    rings = [np.asarray(polygon.exterior.coords)[:, :2]] + [np.asarray(r.coords)[:, :2] for r in polygon.interiors]
    cen = polygon.centroid
    cx, cy = cen.x, cen.y
    t = math.radians(theta_deg)
    cos_t, sin_t = math.cos(t), math.sin(t)
    rotated = []
    for ring in rings:
        x, y = ring[:, 0] - cx, ring[:, 1] - cy
        rotated.append(np.column_stack([x * cos_t + y * sin_t, -x * sin_t + y * cos_t]))
    allxy = np.vstack(rotated)
    xmin, ymin = allxy.min(axis=0)
    xmax, ymax = allxy.max(axis=0)
    extent = max(xmax - xmin, ymax - ymin)
    if not extent > 0:
        return None
    cell = min(max(extent / GRID_CELLS, MIN_CELL_M), MAX_CELL_M)
    # one empty cell of margin on every side, so that every part has an outside
    x0, y0 = xmin - cell, ymin - cell
    width = int(math.ceil((xmax - x0) / cell)) + 1
    height = int(math.ceil((ymax - y0) / cell)) + 1
    mask = _scanline_fill(rotated, x0, y0, cell, height, width)
    return Grid(mask, cell, x0, y0, cx, cy, cos_t, sin_t)


def _scanline_fill(rings: List[np.ndarray], x0: float, y0: float, cell: float, height: int, width: int) -> np.ndarray:
    """Even-odd fill of the cells whose centres lie inside the rings (all rings at once)."""
    a = np.vstack([r[:-1] for r in rings])
    b = np.vstack([r[1:] for r in rings])
    ya, yb = a[:, 1], b[:, 1]
    rows_y = y0 + (np.arange(height) + 0.5) * cell
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    crosses = (rows_y[:, None] >= lo[None, :]) & (rows_y[:, None] < hi[None, :])
    r_idx, e_idx = np.nonzero(crosses)
    if not len(r_idx):
        return np.zeros((height, width), dtype=bool)
    ax, ay, bx, by = a[e_idx, 0], ya[e_idx], b[e_idx, 0], yb[e_idx]
    x = ax + (rows_y[r_idx] - ay) * (bx - ax) / (by - ay)
    # the first cell whose centre is at or right of each crossing
    col = np.clip(np.ceil((x - x0) / cell - 0.5).astype(np.int64), 0, width)
    # even-odd: every crossing toggles; summing toggles along the row gives the parity
    diff = np.bincount(r_idx * (width + 1) + col, minlength=height * (width + 1)).reshape(height, width + 1)
    return (np.cumsum(diff[:, :width], axis=1) & 1).astype(bool)


def _prefix(a: np.ndarray) -> np.ndarray:
    """2-D prefix sums with a zero first row and column: p[r, c] = a[:r, :c].sum()."""
    p = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.int32), axis=1, out=p[1:, 1:])
    return p


def _best_rect(
    pg: np.ndarray, pc: np.ndarray, inter: int, union: int, sign: int, start: Tuple[int, int, int, int]
) -> Tuple[float, Tuple[int, int, int, int]]:
    """Coordinate ascent on the four edges of a rectangle maximising the new IoU.

    ``pg``, ``pc``: prefix sums (:func:`_prefix`) of the gain and cost cells. Adding
    (``sign`` +1) a rectangle r gives IoU (inter + Σ_r gain) / (union + Σ_r cost);
    cutting (``sign`` -1) gives (inter - Σ_r gain) / (union - Σ_r cost). Each edge
    is moved to its best position with the other three fixed, until none moves.
    """
    r0, r1, c0, c1 = start
    best = -1.0
    for _ in range(6):
        # sums over the current columns for every prefix of rows: the top and bottom edges move;
        # then the same over the current rows for the left and right edges
        r0, r1, best, moved_rows = _move_edges(
            pg[:, c1] - pg[:, c0], pc[:, c1] - pc[:, c0], r0, r1, inter, union, sign, best
        )
        c0, c1, best, moved_cols = _move_edges(
            pg[r1, :] - pg[r0, :], pc[r1, :] - pc[r0, :], c0, c1, inter, union, sign, best
        )
        if not (moved_rows or moved_cols):
            break
    return best, (r0, r1, c0, c1)


def _move_edges(
    g: np.ndarray, c: np.ndarray, lo: int, hi: int, inter: int, union: int, sign: int, best: float
) -> Tuple[int, int, float, bool]:
    """Move the low edge, then the high edge, of the interval ``[lo, hi)`` to its best position.

    ``g``, ``c``: prefix sums of gain and cost along one axis over the rectangle's
    extent on the other. Returns the interval, the best IoU and whether an edge moved.
    """
    moved = False
    for edge in (0, 1):
        if edge == 0:  # low edge in [0, hi)
            gs, cs = g[hi] - g[:hi], c[hi] - c[:hi]
        else:  # high edge in (lo, n]
            gs, cs = g[lo + 1 :] - g[lo], c[lo + 1 :] - c[lo]
        v = (inter + sign * gs) / np.maximum(union + sign * cs, 1)
        k = int(v.argmax())
        if v[k] > best + 1e-12:
            best, moved = float(v[k]), True
            if edge == 0:
                lo = k
            else:
                hi = lo + 1 + k
    return lo, hi, best, moved


def _bbox(mask: np.ndarray) -> Tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_rectilinear(
    grid: Grid,
    min_gain: float,
    min_part_m: float,
    max_parts: Optional[int] = None,
    enough_iou: float = 1.0,
    max_vertices: Optional[int] = None,
    first: Optional[Tuple[float, Tuple[int, int, int, int]]] = None,
) -> Optional[RectilinearFit]:
    """The rectangle plus wings minus notches that best fits ``grid.mask`` (see the module docstring).

    A rectangle whose IoU reaches ``enough_iou`` is returned without looking for
    parts; no part is added that would give the polygon more than ``max_vertices``
    corners (default :data:`MAX_VERTICES`: people draw buildings with fewer).
    ``first``: the best rectangle's grid IoU and rows/columns, when a batch found it
    already (:func:`.batch_rectangles.best_rectangles`).
    """
    max_parts = MAX_PARTS if max_parts is None else max_parts
    max_vertices = MAX_VERTICES if max_vertices is None else max_vertices
    target = grid.mask
    n_target = int(target.sum())
    if n_target == 0:
        return None
    empty = np.zeros_like(target)
    iou, rect = _first_rect(target, n_target, first)
    shape = empty.copy()
    shape[rect[0] : rect[1], rect[2] : rect[3]] = True
    ops: List[Tuple[int, Tuple[int, int, int, int]]] = [(+1, rect)]
    min_cells = max(1, int(math.ceil(min_part_m / grid.cell_m)))
    for _ in range(max_parts if iou < enough_iou else 0):
        inter = int((shape & target).sum())
        union = int((shape | target).sum())
        best = None
        for sign, residual in ((+1, target & ~shape), (-1, shape & ~target)):
            found = _best_part(sign, residual, target, shape, inter, union, iou + min_gain, min_cells)
            if found is not None and (best is None or found[0] > best[0]):
                best = (found[0], sign, found[1])
        if best is None or best[0] - iou < min_gain:
            break
        trial = shape.copy()
        trial[best[2][0] : best[2][1], best[2][2] : best[2][3]] = best[1] > 0
        if ndimage.label(trial, _FOUR)[1] != 1:
            break  # a cut that splits the building in two is not a notch
        if corner_count(trial) > max_vertices:
            break
        shape, iou = trial, best[0]
        ops.append((best[1], best[2]))
    polygon = _build(grid, ops)
    if polygon is None:
        return None
    return RectilinearFit(polygon, iou, len(ops))


def _best_part(
    sign: int,
    residual: np.ndarray,
    target: np.ndarray,
    shape: np.ndarray,
    inter: int,
    union: int,
    needed: float,
    min_cells: int,
) -> Optional[Tuple[float, Tuple[int, int, int, int]]]:
    """The best wing (``sign`` +1) or notch (-1) in ``residual``: (new IoU, rows/columns), or None
    when no component of at least ``min_cells`` squared could reach the IoU ``needed``."""
    if not _may_gain(int(residual.sum()), inter, union, sign, needed, min_cells):
        return None  # not even the whole residual would gain enough: no component can
    labels, n = ndimage.label(residual, _FOUR)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    # the IoU if the whole component were added or cut bounds what any rectangle in it gains
    bound = (inter + sizes) / union if sign > 0 else inter / np.maximum(union - sizes, 1)
    big = np.flatnonzero((sizes >= min_cells * min_cells) & (bound >= needed))
    if not len(big):
        return None
    # the same gain and cost cells serve every component of this sign
    if sign > 0:
        pg, pc = _prefix(residual), _prefix(~target & ~shape)
    else:
        pg, pc = _prefix(target & shape), _prefix(residual)
    # rank the components by the IoU of their bounding boxes (O(1) each); only the
    # best one is refined by coordinate ascent
    ranked = []
    for lab in big[np.argsort(sizes[big])[::-1][:MAX_COMPONENTS]] + 1:
        r0, r1, c0, c1 = _bbox(labels == lab)
        gain_sum = pg[r1, c1] - pg[r0, c1] - pg[r1, c0] + pg[r0, c0]
        cost_sum = pc[r1, c1] - pc[r0, c1] - pc[r1, c0] + pc[r0, c0]
        ranked.append(((inter + sign * gain_sum) / max(union + sign * cost_sum, 1), (r0, r1, c0, c1)))
    new_iou, r = _best_rect(pg, pc, inter, union, sign, max(ranked)[1])
    if r[1] - r[0] < min_cells or r[3] - r[2] < min_cells:
        return None
    return new_iou, r


def _may_gain(total: int, inter: int, union: int, sign: int, needed: float, min_cells: int) -> bool:
    """Whether a residual of ``total`` cells could hold a component worth adding (+1) or cutting (-1):
    the bound of fit_rectilinear's component test, taken for all components at once."""
    bound = (inter + total) / union if sign > 0 else inter / max(union - total, 1)
    return total >= min_cells * min_cells and bound >= needed


def _first_rect(target: np.ndarray, n_target: int, first) -> Tuple[float, Tuple[int, int, int, int]]:
    """The best rectangle alone (given as ``first`` when a batch found it)."""
    if first is not None:
        return float(first[0]), tuple(int(v) for v in first[1])
    return _best_rect(_prefix(target), _prefix(~target), 0, n_target, +1, _bbox(target))


def corner_count(mask: np.ndarray) -> int:
    """Corners of the outline(s) of a cell mask: 2x2 windows with one or three cells set count one,
    the two diagonal windows (cells touching at a corner only) count two."""
    m = np.pad(mask, 1).astype(np.int8)
    a, b, c, d = m[:-1, :-1], m[:-1, 1:], m[1:, :-1], m[1:, 1:]
    n = a + b + c + d
    diagonal = (n == 2) & (a == d)
    return int(((n == 1) | (n == 3)).sum() + 2 * diagonal.sum())


def _build(grid: Grid, ops) -> Optional[Polygon]:
    """The rectangles' union/difference, rotated back to the source frame, without collinear vertices."""
    geom = grid.box(*ops[0][1])
    if len(ops) == 1:  # a rectangle: nothing to merge
        return Polygon(grid.to_source(np.asarray(geom.exterior.coords)))
    for sign, r in ops[1:]:
        part = grid.box(*r)
        geom = shapely.union(geom, part) if sign > 0 else shapely.difference(geom, part)
    tol = grid.cell_m * 1e-3
    geom = shapely.simplify(geom, tol)
    if geom.geom_type != "Polygon" or geom.is_empty:
        return None
    ext = grid.to_source(_without_collinear_start(np.asarray(geom.exterior.coords), tol))
    holes = [grid.to_source(_without_collinear_start(np.asarray(r.coords), tol)) for r in geom.interiors]
    out = Polygon(ext, holes)
    return out if out.is_valid else None


def _without_collinear_start(ring: np.ndarray, tol: float) -> np.ndarray:
    """The closed ring without its first vertex when that one lies on the straight line through its two
    neighbours (within ``tol``): Douglas-Peucker keeps a ring's first point, so a union that starts
    mid-edge kept a vertex no corner needs (17 vertices for a 16-corner outline)."""
    pts = ring[:-1]
    if len(pts) <= 4:
        return ring
    prev, cur, nxt = pts[-1], pts[0], pts[1]
    span = nxt - prev
    length = math.hypot(span[0], span[1])
    off = abs(span[0] * (cur[1] - prev[1]) - span[1] * (cur[0] - prev[0])) / length if length > 0 else math.inf
    ahead = (cur[0] - prev[0]) * (nxt[0] - cur[0]) + (cur[1] - prev[1]) * (nxt[1] - cur[1]) > 0  # not a spike
    if off > tol or not ahead:
        return ring
    return np.vstack([pts[1:], pts[1:2]])


def ellipse_grid_iou(grid: Grid) -> float:
    """IoU of the mask with its moment ellipse (same centroid and second moments).

    A uniform ellipse with semi-axes a, b has variances a²/4 and b²/4 along its
    axes, so the moment ellipse of a true ellipse (a tank, a dome, an oval roof) is
    itself (IoU near 1), while that of a rectangle is about 0.8.
    """
    mask = grid.mask
    rows, cols = np.nonzero(mask)
    n = len(rows)
    if n < 3:
        return 0.0
    rc, cc = rows.mean(), cols.mean()
    dr, dc = rows - rc, cols - cc
    # population second moments (a uniform ellipse's variance is a²/4 along each axis)
    cov = np.array([[dr @ dr, dr @ dc], [dr @ dc, dc @ dc]]) / n
    evals, evecs = np.linalg.eigh(cov)
    if not evals.min() > 0:
        return 0.0
    axes = 2.0 * np.sqrt(evals)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d = np.stack([yy - rc, xx - cc], axis=-1) @ evecs
    inside = (d[..., 0] / axes[0]) ** 2 + (d[..., 1] / axes[1]) ** 2 <= 1.0
    inter = int((inside & mask).sum())
    return inter / (n + int(inside.sum()) - inter)
