"""Resampling a block of pixels to the window the engine asks for (numpy only, no qgis).

The QGIS readers fetch whole source pixels (a provider block, web tiles)
and the engine asks for a fractional window resampled to ``out_shape``.
This does that step the way GDAL's bilinear does for :class:`RasterioSource`:
a separable triangle filter whose half-width is one source pixel when
enlarging and the reduction factor when reducing (so it does not alias).

Invalid pixels (nodata, transparent, missing tiles) carry no weight: each
output pixel is the weighted mean of the valid pixels under its kernel, and
is valid when at least half of its kernel's weight lies on valid pixels.
So there are no dark fringes along the edge of a web service's coverage.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def axis_weights(start: float, length: float, n_out: int, n_src: int) -> Tuple[np.ndarray, np.ndarray]:
    """Kernel taps along one axis: ``(index, weight)``, both ``n_out x K``.

    Output pixel ``i`` covers source coordinates ``start + [i, i + 1) * length / n_out``
    (pixel corners; source pixel ``j`` has its centre at ``j + 0.5``). Indexes
    are clipped to ``[0, n_src)``; taps that fall outside get weight 0 and each
    row of weights sums to 1 (or 0 if no tap lies inside).
    """
    scale = length / n_out
    support = max(1.0, scale)
    centres = start + (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    taps = int(math.ceil(2.0 * support)) + 1
    first = np.floor(centres - support).astype(np.int64) + 1
    idx = first[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    w = np.clip(1.0 - np.abs(idx - centres[:, None]) / support, 0.0, None)
    inside = (idx >= 0) & (idx < n_src)
    w[~inside] = 0.0
    total = w.sum(axis=1, keepdims=True)
    np.divide(w, total, out=w, where=total > 0)
    return np.clip(idx, 0, max(n_src - 1, 0)), w.astype(np.float32)


def _apply(data: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Filter ``data`` (... x H x W) along ``axis`` (-2 rows, -1 columns) with the taps."""
    moved = np.moveaxis(data, axis, 0)
    out = np.zeros((idx.shape[0],) + moved.shape[1:], dtype=np.float32)
    for k in range(idx.shape[1]):
        wk = w[:, k]
        if not wk.any():
            continue
        out += wk.reshape((-1,) + (1,) * (moved.ndim - 1)) * moved[idx[:, k]]
    return np.moveaxis(out, 0, axis)


def resample(
    rgb: np.ndarray,
    valid: np.ndarray,
    col_off: float,
    row_off: float,
    width: float,
    height: float,
    out_shape: Tuple[int, int],
) -> Tuple[np.ndarray, np.ndarray]:
    """Resample ``rgb`` (3 x H x W float32) with its ``valid`` mask (H x W bool) to ``out_shape``.

    ``(col_off, row_off, width, height)`` is the window to produce, in pixel
    coordinates of the given arrays (fractional, may reach past their edges:
    missing pixels count as invalid). Returns ``(rgb, valid)`` as the
    :meth:`RasterSource.read` contract wants (RGB 0 where invalid).
    """
    rows, cols = int(out_shape[0]), int(out_shape[1])
    h, w = valid.shape
    ridx, rw = axis_weights(row_off, height, rows, h)
    cidx, cw = axis_weights(col_off, width, cols, w)
    v = valid.astype(np.float32)
    stack = np.concatenate([rgb.astype(np.float32, copy=False) * v[None], v[None]], axis=0)
    out = _apply(_apply(stack, ridx, rw, -2), cidx, cw, -1)
    weight = out[3]
    ok = weight >= 0.5 - 1e-6
    result = np.zeros((3, rows, cols), dtype=np.float32)
    np.divide(out[:3], weight[None], out=result, where=(weight > 0)[None])
    np.clip(result, 0.0, 1.0, out=result)
    result[:, ~ok] = 0.0
    return result, ok


# -- the steps both QGIS readers (provider blocks, web tiles) take around resample() --------------
def read_span(
    col_off: float,
    row_off: float,
    width: float,
    height: float,
    out_shape: Tuple[int, int],
    limits: Tuple[int, int, int, int],
) -> Tuple[int, int, int, int]:
    """The whole source pixels ``(c0, r0, c1, r1)`` a window needs, end exclusive.

    The window plus the filter's reach (one output pixel's footprint, at
    least one source pixel, and one more), clipped to ``limits``
    ``(col_min, row_min, col_max, row_max)`` in the same pixel coordinates.
    """
    rows, cols = int(out_shape[0]), int(out_shape[1])
    margin = int(math.ceil(max(1.0, width / cols, height / rows))) + 1
    c0 = max(limits[0], int(math.floor(col_off)) - margin)
    r0 = max(limits[1], int(math.floor(row_off)) - margin)
    c1 = min(limits[2], int(math.ceil(col_off + width)) + margin)
    r1 = min(limits[3], int(math.ceil(row_off + height)) + margin)
    return c0, r0, c1, r1


def paste(canvas: np.ndarray, c0: int, r0: int, block: np.ndarray, block_c0: int, block_r0: int) -> None:
    """Copy the part of ``block`` (rows x cols x ...) whose top-left pixel is at ``(block_c0, block_r0)``
    that overlaps ``canvas``, whose top-left pixel is at ``(c0, r0)``."""
    c1, r1 = c0 + canvas.shape[1], r0 + canvas.shape[0]
    x0, y0 = max(c0, block_c0), max(r0, block_r0)
    x1, y1 = min(c1, block_c0 + block.shape[1]), min(r1, block_r0 + block.shape[0])
    canvas[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = block[y0 - block_r0 : y1 - block_r0, x0 - block_c0 : x1 - block_c0]


def resample_rgba(
    rgba: np.ndarray, col_off: float, row_off: float, width: float, height: float, out_shape: Tuple[int, int]
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`resample` an 8-bit RGBA block (rows x cols x 4): transparent pixels are invalid."""
    valid = rgba[..., 3] > 0
    rgb = np.moveaxis(rgba[..., :3], -1, 0).astype(np.float32) * np.float32(1.0 / 255.0)
    return resample(rgb, valid, col_off, row_off, width, height, out_shape)
