"""Stitching predicted tiles into full-width strips of finished rows.

Tiles arrive row of tiles by row of tiles (:func:`.tiling.tile_grid` order).
Each tile writes only its kept block (:attr:`.tiling.Tile.keep`), so every
model pixel comes from exactly one tile and there are no seams; a row of
tiles keeps the same rows, so once its last tile is written those rows are
final and go, as one strip, to the outline tracer
(:class:`.vectorize.StripVectorizer`). Only one strip is ever held: memory
grows with the raster's width, not its area (a 20000 px wide strip of 224
rows is 9 MB).

Per pixel a strip holds the probability as uint8 (``round(p * 255)``, for
the buildings' confidence) and the building flag, ``p >= threshold`` on a
valid pixel, thresholded on the float probability so the model's threshold
is exact. Separation models also give a separation score per pixel
(:func:`.vectorize.separation_score`), held as uint8 beside the probability.
Pixels no tile wrote (outside the area of interest) are 0.
No ``qgis`` import here.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .tiling import ModelGrid, Tile

# (first row, probability uint8, building bool[, separation score uint8 for separation models])
Strip = Tuple[np.ndarray, ...]


class StripMosaic:
    """Collects the kept blocks of ``tiles`` and hands back each row strip when it is complete."""

    def __init__(self, grid: ModelGrid, tiles: Sequence[Tile], threshold: float):
        self.grid = grid
        self.threshold = float(threshold)
        # The last tile (in run order) of each row span: when it is written the strip is done.
        self._closing: Dict[Tuple[int, int], int] = {}
        for tile in tiles:
            self._closing[(tile.keep[1], tile.keep[3])] = tile.index
        self._span: Optional[Tuple[int, int]] = None
        self._prob: Optional[np.ndarray] = None
        self._building: Optional[np.ndarray] = None
        self._score: Optional[np.ndarray] = None

    def add(self, tile: Tile, probability: np.ndarray, valid: np.ndarray) -> Optional[Strip]:
        """Write the kept block of one tile (tile-local float probability and bool validity).

        ``probability`` is T x T, or 2 x T x T (building probability and
        separation score) for separation models. Returns the finished strip
        ``(row0, probability_u8, building[, score_u8])`` when ``tile`` was the
        last of its row, else None.
        """
        c0, r0, c1, r1 = tile.keep
        with_score = probability.ndim == 3
        if self._span != (r0, r1):
            self._span = (r0, r1)
            self._prob = np.zeros((r1 - r0, self.grid.width_px), dtype=np.uint8)
            self._building = np.zeros((r1 - r0, self.grid.width_px), dtype=bool)
            self._score = np.zeros((r1 - r0, self.grid.width_px), dtype=np.uint8) if with_score else None
        local = (slice(r0 - tile.row_off, r1 - tile.row_off), slice(c0 - tile.col_off, c1 - tile.col_off))
        ok = valid[local]
        if with_score:
            score_u8 = np.rint(np.clip(probability[1][local], 0.0, 1.0) * 255.0).astype(np.uint8)
            score_u8[~ok] = 0
            self._score[:, c0:c1] = score_u8
            probability = probability[0]
        prob = probability[local]
        prob_u8 = np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
        prob_u8[~ok] = 0
        self._prob[:, c0:c1] = prob_u8
        self._building[:, c0:c1] = (prob >= self.threshold) & ok
        if self._closing.get((r0, r1)) != tile.index:
            return None
        strip = (r0, self._prob, self._building) + ((self._score,) if self._score is not None else ())
        self._span = self._prob = self._building = self._score = None
        return strip
