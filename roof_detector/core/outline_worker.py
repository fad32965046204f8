"""The outline thread of a detection run: stitches predicted batches and traces finished strips.

:func:`~.pipeline.detect_buildings` hands each predicted batch to an
:class:`OutlineWorker` and goes on with the model, so tracing overlaps inference.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any, List, Optional, Tuple

from .background_lane import BackgroundLane, leave_idle_class
from .building import Building
from .strip_mosaic import StripMosaic
from .tiling import Tile
from .vectorize import StripVectorizer

# Predicted tiles waiting for the outline thread before the model's thread waits for it,
# in rows of tiles: a finished strip is a burst of tracing work, and the queue must absorb
# it rather than stop the network (a queue of 8 batches made the 20000 px run wait 8 s).
# Memory: 2 rows x 91 tiles x 330 kB = 60 MB at 20000 px, growing with width, not area.
MAX_PENDING_TILE_ROWS = 2
MIN_PENDING_BATCHES = 8


def max_pending_batches(tiles_per_row: int, batch_size: int) -> int:
    """How many predicted batches may wait for the outline thread (about two rows of tiles)."""
    return max(MIN_PENDING_BATCHES, -(-MAX_PENDING_TILE_ROWS * tiles_per_row // batch_size))


class OutlineWorker:
    """Stitches predicted batches and traces finished strips on one worker thread.

    The thread that calls the model is one of ONNX Runtime's (or torch's)
    compute threads, so anything else it does stalls the network; it only
    hands each batch over. The worker writes the tiles into the strip mosaic,
    counts valid pixels and, when a strip is complete, traces and measures
    its buildings, while the model goes on with the next batches. ONNX
    Runtime, torch, GDAL and shapely's array functions release the GIL. An
    error on the worker is raised in the caller at the next :meth:`submit`
    or at :meth:`finish`; leaving the ``with`` block early (cancel, error)
    drops the batches not started and waits for the one running. The thread
    is a :class:`~.background_lane.BackgroundLane`'s: the idle class on a quiet
    machine, the caller's priority beside busy programs.
    """

    def __init__(self, mosaic: StripMosaic, vectorizer: StripVectorizer, max_pending: int = MIN_PENDING_BATCHES):
        self.max_pending = max(1, max_pending)
        self.mosaic = mosaic
        self.vectorizer = vectorizer
        self.valid_px = 0
        self.stitch_s = 0.0
        self.wait_s = 0.0  # the model's thread waiting for a free place in the queue
        self._lane = BackgroundLane("roof-outlines")
        self._pending: List[Future] = []

    @property
    def rescued_after_s(self) -> Optional[float]:
        """Seconds into the run when other work's load moved the outlines to a normal-priority thread, or None."""
        return self._lane.rescued_after_s

    def submit(self, batch: List[Tuple[Tile, Any, Any]]) -> None:
        """Queue one predicted batch ``[(tile, probability, valid), ...]`` (in run order)."""
        t0 = time.perf_counter()
        self._reap(block=len(self._pending) >= self.max_pending)
        self.wait_s += time.perf_counter() - t0
        self._pending.append(self._lane.submit(self._take, batch))

    def finish(self) -> List[Building]:
        """Wait for every queued batch, trace the last rows and return the buildings."""
        self._pending.append(self._lane.submit(self.vectorizer.finish))
        while self._pending:
            self._reap(block=True)
        return self.vectorizer.buildings

    def _take(self, batch: List[Tuple[Tile, Any, Any]]) -> None:
        for tile, prob, valid in batch:
            t0 = time.perf_counter()
            strip = self.mosaic.add(tile, prob, valid)
            c0, r0, c1, r1 = tile.keep
            self.valid_px += int(
                valid[r0 - tile.row_off : r1 - tile.row_off, c0 - tile.col_off : c1 - tile.col_off].sum()
            )
            self.stitch_s += time.perf_counter() - t0
            if strip is not None:
                self.vectorizer.add(*strip)

    def _reap(self, block: bool) -> None:
        while self._pending and (block or self._pending[0].done()):
            self._lane.result(self._pending.pop(0))  # re-raises the worker's error here
            block = False

    def __enter__(self) -> "OutlineWorker":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._lane.low_tid is not None:
            # Leaving early (cancel, Ctrl-C, an error): a model call left running (a TorchScript call
            # cannot be stopped) may still hold every core, where an idle-class thread would get
            # almost nothing; the strip in progress then ends at nice 19 (where allowed: root).
            leave_idle_class(self._lane.low_tid)
        self._lane.close(cancel=exc_type is not None)
