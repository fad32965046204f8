"""Steps 1 and 2 of :mod:`.rectilinear` for a whole batch of outlines at once.

Most buildings are rectangles: for them :func:`.rectilinear.fit_rectilinear`
stops after burning the outline onto its fitting grid (step 1) and finding the
best rectangle by coordinate ascent on its edges (step 2). One building at a
time, that costs several hundred small numpy calls, and the Python around them
is most of the cost (about 0.3 ms per traced rectangle). Here both steps run as
array operations over many outlines. The arithmetic is the per-building one,
operation for operation (the same rotations, row centres, crossings, prefix
sums and IoU divisions), so grids and rectangles are identical to
:func:`.rectilinear.burn` and the first rectangle of
:func:`.rectilinear.fit_rectilinear`; ``tests/core/test_batch_rectangles.py``
compares them.

No ``qgis`` import here.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import Polygon

from .rectilinear import GRID_CELLS, MAX_CELL_M, MIN_CELL_M, Grid

#: Grid cells burnt in one pass (bounds the temporary arrays to a few tens of MB).
CHUNK_CELLS = 2_000_000

Rect = Tuple[int, int, int, int]


def burn_many(polys: Sequence[Polygon], thetas_deg: Sequence[float]) -> List[Optional[Grid]]:
    """:func:`.rectilinear.burn` of each polygon (without holes) along its angle; None where it has no extent."""
    polys = np.asarray(polys, dtype=object)
    if not len(polys):
        return []
    if shapely.get_num_interior_rings(polys).any():
        raise ValueError("burn_many takes outlines without holes")
    xy, owner = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
    cen = shapely.get_coordinates(shapely.centroid(polys))
    # math, not numpy, for the angles: numpy's vectorised cos/sin may differ in the last bit
    cos_t = np.array([math.cos(math.radians(t)) for t in thetas_deg])
    sin_t = np.array([math.sin(math.radians(t)) for t in thetas_deg])
    x, y = xy[:, 0] - cen[owner, 0], xy[:, 1] - cen[owner, 1]
    c, s = cos_t[owner], sin_t[owner]
    rx, ry = x * c + y * s, -x * s + y * c
    starts = np.searchsorted(owner, np.arange(len(polys)))
    xmin, xmax = np.minimum.reduceat(rx, starts), np.maximum.reduceat(rx, starts)
    ymin, ymax = np.minimum.reduceat(ry, starts), np.maximum.reduceat(ry, starts)
    extent = np.maximum(xmax - xmin, ymax - ymin)
    ok = extent > 0
    cell = np.where(ok, np.minimum(np.maximum(extent / GRID_CELLS, MIN_CELL_M), MAX_CELL_M), 1.0)
    # one empty cell of margin on every side, as in burn()
    x0, y0 = xmin - cell, ymin - cell
    width = np.where(ok, np.ceil((xmax - x0) / cell).astype(np.int64) + 1, 1)
    height = np.where(ok, np.ceil((ymax - y0) / cell).astype(np.int64) + 1, 1)
    grid = (x0, y0, cell, width, height)
    masks: List[Optional[np.ndarray]] = [None] * len(polys)
    for lo, hi in _chunks(height * (width + 1)):
        sel = np.arange(lo, hi)
        on = (owner >= lo) & (owner < hi)
        for i, mask in zip(sel, _fill_chunk(rx[on], ry[on], owner[on] - lo, [g[sel] for g in grid])):
            masks[i] = mask
    return [
        Grid(
            masks[i],
            float(cell[i]),
            float(x0[i]),
            float(y0[i]),
            float(cen[i, 0]),
            float(cen[i, 1]),
            float(cos_t[i]),
            float(sin_t[i]),
        )
        if ok[i]
        else None
        for i in range(len(polys))
    ]


def _chunks(cells: np.ndarray) -> List[Tuple[int, int]]:
    """Consecutive index ranges holding at most :data:`CHUNK_CELLS` cells (at least one item each)."""
    out, lo, total = [], 0, 0
    for i, n in enumerate(cells.tolist()):
        if i > lo and total + n > CHUNK_CELLS:
            out.append((lo, i))
            lo, total = i, 0
        total += n
    out.append((lo, len(cells)))
    return out


def _first_row_at(v: np.ndarray, y0: np.ndarray, cell: np.ndarray, height: np.ndarray) -> np.ndarray:
    """The first row whose centre ``y0 + (r + 0.5) * cell`` is at or above ``v`` (``height`` if none).

    Estimated by division, then corrected with the very row centres burn() compares, so
    a crossing exactly on a row centre falls on the same side as there.
    """
    r = np.clip(np.ceil((v - y0) / cell - 0.5), 0, height).astype(np.int64)
    while True:
        up = (r < height) & (y0 + (r + 0.5) * cell < v)
        down = (r > 0) & (y0 + (r - 0.5) * cell >= v)
        if not (up.any() or down.any()):
            return r
        r = r + up - down


def _fill_chunk(rx, ry, owner, grid) -> List[np.ndarray]:
    """Even-odd scanline fill (:func:`.rectilinear._scanline_fill`) of several rings at once."""
    x0, y0, cell, width, height = grid
    e = np.flatnonzero(owner[:-1] == owner[1:])  # edges: consecutive vertices of one ring
    o = owner[e]
    ax, ay, bx, by = rx[e], ry[e], rx[e + 1], ry[e + 1]
    lo, hi = np.minimum(ay, by), np.maximum(ay, by)
    r_lo = _first_row_at(lo, y0[o], cell[o], height[o])
    count = _first_row_at(hi, y0[o], cell[o], height[o]) - r_lo
    k = np.repeat(np.arange(len(e)), count)
    r = r_lo[k] + (np.arange(len(k)) - np.repeat(np.cumsum(count) - count, count))
    o = o[k]
    ax, ay, bx, by = ax[k], ay[k], bx[k], by[k]
    rows_y = y0[o] + (r + 0.5) * cell[o]
    x = ax + (rows_y - ay) * (bx - ax) / (by - ay)
    col = np.clip(np.ceil((x - x0[o]) / cell[o] - 0.5).astype(np.int64), 0, width[o])
    row_len = width + 1
    base = np.cumsum(height * row_len) - height * row_len
    toggles = np.bincount(base[o] + r * row_len[o] + col, minlength=int((height * row_len).sum()))
    # parity of the toggles up to each cell of its row (row by row, as burn() sums along a row)
    parity = np.cumsum(toggles) & 1
    row_len_each = np.repeat(row_len, height)
    row_start = np.cumsum(row_len_each) - row_len_each
    before = np.where(row_start > 0, parity[np.maximum(row_start - 1, 0)], 0)
    cells = (parity ^ np.repeat(before, row_len_each)).astype(bool)
    return [
        cells[b : b + h * (w + 1)].reshape(h, w + 1)[:, :w]
        for b, h, w in zip(base.tolist(), height.tolist(), width.tolist())
    ]


def best_rectangles(grids: Sequence[Optional[Grid]]) -> Tuple[np.ndarray, np.ndarray]:
    """The first rectangle of :func:`.rectilinear.fit_rectilinear` for each grid: (grid IoU, rows/cols).

    Returns the IoUs (NaN where a grid is None or empty) and an ``(n, 4)`` array of
    ``r0, r1, c0, c1`` (rows ``r0:r1``, columns ``c0:c1`` of the grid).
    """
    n = len(grids)
    iou, rects = np.full(n, np.nan), np.zeros((n, 4), dtype=np.int64)
    usable = [i for i, g in enumerate(grids) if g is not None and g.mask.any()]
    for idx in _similar_shapes([grids[i].mask.shape for i in usable]):
        chosen = [usable[k] for k in idx]
        iou[chosen], rects[chosen] = _ascend([grids[i].mask for i in chosen])
    return iou, rects


def _similar_shapes(shapes: List[Tuple[int, int]]) -> List[List[int]]:
    """Groups of indices whose grids share one padded stack: padding at most about half the cells."""
    groups: List[List[int]] = []
    group: List[int] = []
    top_h = top_w = cells = 0
    for k in sorted(range(len(shapes)), key=lambda k: shapes[k]):
        h, w = shapes[k]
        padded = (len(group) + 1) * max(top_h, h) * max(top_w, w)
        if group and (padded > 1.5 * (cells + h * w) + 4096 or padded > CHUNK_CELLS):
            groups.append(group)
            group, top_h, top_w, cells = [], 0, 0, 0
        group.append(k)
        top_h, top_w, cells = max(top_h, h), max(top_w, w), cells + h * w
    if group:
        groups.append(group)
    return groups


def _ascend(masks: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Coordinate ascent (:func:`.rectilinear._best_rect`, adding to an empty shape) on padded masks."""
    m = len(masks)
    h = np.array([a.shape[0] for a in masks])
    w = np.array([a.shape[1] for a in masks])
    target = np.zeros((m, h.max(), w.max()), dtype=bool)
    for i, a in enumerate(masks):
        target[i, : h[i], : w[i]] = a
    # prefix sums as in rectilinear._prefix; the padding is never inside a candidate rectangle
    pg = np.zeros((m, h.max() + 1, w.max() + 1), dtype=np.int32)
    np.cumsum(np.cumsum(target, axis=1, dtype=np.int32), axis=2, out=pg[:, 1:, 1:])
    # the cells that are not building: all r x c cells of the prefix but the building's
    # (the same integers as the prefix sums of ~target wherever a rectangle can lie)
    pc = np.arange(h.max() + 1, dtype=np.int32)[:, None] * np.arange(w.max() + 1, dtype=np.int32)[None, :] - pg
    union = target.sum(axis=(1, 2))
    rows, cols = target.any(axis=2), target.any(axis=1)
    r0, c0 = rows.argmax(axis=1), cols.argmax(axis=1)
    r1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    c1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    best = np.full(m, -1.0)
    ar = np.arange(m)
    for _ in range(6):
        g, c = pg[ar, :, c1] - pg[ar, :, c0], pc[ar, :, c1] - pc[ar, :, c0]
        r0, r1, best, moved_rows = _move_edges(g, c, r0, r1, h, union, best)
        g, c = pg[ar, r1, :] - pg[ar, r0, :], pc[ar, r1, :] - pc[ar, r0, :]
        c0, c1, best, moved_cols = _move_edges(g, c, c0, c1, w, union, best)
        if not (moved_rows | moved_cols).any():
            break
    return best, np.column_stack([r0, r1, c0, c1])


def _move_edges(g, c, lo, hi, size, union, best):
    """:func:`.rectilinear._move_edges` (adding, to an empty shape) for every row of ``g``/``c`` at once."""
    ar, pos = np.arange(len(g)), np.arange(g.shape[1])[None, :]
    moved = np.zeros(len(g), dtype=bool)
    for edge in (0, 1):
        if edge == 0:  # low edge in [0, hi)
            gs, cs = g[ar, hi][:, None] - g, c[ar, hi][:, None] - c
            valid = pos < hi[:, None]
        else:  # high edge in (lo, size]
            gs, cs = g - g[ar, lo][:, None], c - c[ar, lo][:, None]
            valid = (pos > lo[:, None]) & (pos <= size[:, None])
        v = np.where(valid, gs / np.maximum(union[:, None] + cs, 1), -np.inf)
        k = v.argmax(axis=1)
        better = v[ar, k] > best + 1e-12
        best = np.where(better, v[ar, k], best)
        moved |= better
        if edge == 0:
            lo = np.where(better, k, lo)
        else:
            hi = np.where(better, k, hi)
    return lo, hi, best, moved


def rectangle_polygons(grids: Sequence[Grid], rects: np.ndarray) -> np.ndarray:
    """The rectangles ``rects`` (rows/columns of each grid) as polygons in the source frame.

    The same coordinates as :func:`.rectilinear._build` of a single rectangle (the
    corners of :meth:`.rectilinear.Grid.box` in its order, rotated back).
    """
    if not len(grids):
        return np.zeros(0, dtype=object)
    x0, y0, cell, cx, cy, cos_t, sin_t = (
        np.array([getattr(g, k) for g in grids]) for k in ("x0", "y0", "cell_m", "cx", "cy", "cos_t", "sin_t")
    )
    r0, r1, c0, c1 = np.asarray(rects, dtype=np.int64).T
    minx, miny, maxx, maxy = x0 + c0 * cell, y0 + r0 * cell, x0 + c1 * cell, y0 + r1 * cell
    x = np.stack([maxx, maxx, minx, minx, maxx], axis=1)
    y = np.stack([miny, maxy, maxy, miny, miny], axis=1)
    c, s = cos_t[:, None], sin_t[:, None]
    return shapely.polygons(np.stack([cx[:, None] + x * c - y * s, cy[:, None] + x * s + y * c], axis=2))


def filled_rectangles(works: Sequence[Polygon], thetas_deg: Sequence[float], min_fill: float) -> np.ndarray:
    """The bounding rectangle of each outline along its angle where the outline fills at least
    ``min_fill`` of it (their IoU: the outline lies inside); None elsewhere.

    No grid and no overlay: the many clean rectangles cost a few array operations.
    """
    works = np.asarray(works, dtype=object)
    thetas_deg = np.asarray(thetas_deg, dtype=float)
    out = np.full(len(works), None, dtype=object)
    if not len(works):
        return out
    xy, owner = shapely.get_coordinates(shapely.get_exterior_ring(works), return_index=True)
    c = np.array([math.cos(math.radians(t)) for t in thetas_deg.tolist()])
    s = np.array([math.sin(math.radians(t)) for t in thetas_deg.tolist()])
    co, so = c[owner], s[owner]
    u = xy[:, 0] * co + xy[:, 1] * so
    v = -xy[:, 0] * so + xy[:, 1] * co
    starts = np.searchsorted(owner, np.arange(len(works)))
    u0, u1 = np.minimum.reduceat(u, starts), np.maximum.reduceat(u, starts)
    v0, v1 = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
    box_area = (u1 - u0) * (v1 - v0)
    hit = np.flatnonzero((box_area > 0) & (shapely.area(works) >= min_fill * box_area))
    if not len(hit):
        return out
    cu = np.stack([u0[hit], u1[hit], u1[hit], u0[hit], u0[hit]], axis=1)
    cv = np.stack([v0[hit], v0[hit], v1[hit], v1[hit], v0[hit]], axis=1)
    ch, sh = c[hit][:, None], s[hit][:, None]
    rings = np.stack([cu * ch - cv * sh, cu * sh + cv * ch], axis=2)
    out[hit] = shapely.polygons(rings)
    return out
