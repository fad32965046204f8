"""Validation blocks of a fine-tuning run: whole square blocks of the labelled area held out of training.

Training and validation never share pixels (a spatial split). A block is one model tile when the
labelled area holds :data:`MIN_BLOCKS` of them; a small area (a fifth of a neighbourhood, about one
model tile of imagery) is cut into smaller blocks, down to :data:`MIN_BLOCK_PX`, so that it still
splits near the asked share (issue 16: a fifth of OAM area 4 held a single 256 px block).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ..errors import LabelError

#: Smallest validation block, in pixels at the model GSD (about 19 m at 0.3 m: a few houses).
MIN_BLOCK_PX = 64
#: Blocks the labelled area should hold before a larger block size is used (one in five validates).
MIN_BLOCKS = 5


def validation_block_px(valid: np.ndarray, tile_px: int) -> int:
    """Side of the validation blocks: one model tile, halved (down to :data:`MIN_BLOCK_PX`) until the
    labelled area holds :data:`MIN_BLOCKS` usable blocks, so that a small area (a fifth of a
    neighbourhood, ~30 buildings) still splits into training and validation near the asked share."""
    block = tile_px
    while block // 2 >= MIN_BLOCK_PX and len(_usable_blocks(valid, block)[0]) < MIN_BLOCKS:
        block //= 2
    return block


def _usable_blocks(valid: np.ndarray, block_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """(row, col) of the blocks with at least an eighth of their pixels valid, and every block's valid count."""
    h, w = valid.shape
    rows, cols = -(-h // block_px), -(-w // block_px)
    padded = np.zeros((rows * block_px, cols * block_px), dtype=np.int64)
    padded[:h, :w] = valid
    counts = padded.reshape(rows, block_px, cols, block_px).sum(axis=(1, 3))
    return np.argwhere(counts > block_px * block_px // 8), counts


def choose_validation_blocks(valid: np.ndarray, block_px: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Pixel mask of whole ``block_px`` blocks holding about ``fraction`` of the valid pixels.

    Raises :class:`LabelError` when the area has fewer than two blocks with
    labelled pixels (one for training, one for validation).
    """
    usable, counts = _usable_blocks(valid, block_px)
    if len(usable) < 2:
        raise LabelError(
            f"The labelled area is too small to hold out validation: it needs imagery in at least two "
            f"blocks of {block_px} x {block_px} px at the model's resolution, and holds "
            f"{int(valid.sum())} px; draw a larger area (or label more buildings around it)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(usable))
    target = fraction * counts.sum()
    picked, total = [], 0
    for i in order:
        if total >= target or len(picked) == len(usable) - 1:
            break
        # a block that would overshoot the share by more than half of it is skipped (unless none is picked yet)
        if picked and total + counts[tuple(usable[i])] > 1.5 * target:
            continue
        picked.append(tuple(usable[i]))
        total += counts[tuple(usable[i])]
    mask = np.zeros_like(valid, dtype=bool)
    for r, c in picked:
        mask[r * block_px : (r + 1) * block_px, c * block_px : (c + 1) * block_px] = True
    return mask
