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


def resample(rgb: np.ndarray, valid: np.ndarray, col_off: float, row_off: float, width: float, height: float,
             out_shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
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
