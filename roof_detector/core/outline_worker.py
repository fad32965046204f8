"""The outline thread of a detection run: stitches predicted batches and traces finished strips.

:func:`~.pipeline.detect_buildings` hands each predicted batch to an
:class:`OutlineWorker` and goes on with the model, so tracing overlaps inference.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, List, Optional, Tuple

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


#: Nice value of the outline thread on Linux, so that it yields to the model's threads at
#: once (``ROOF_DETECTOR_OUTLINE_NICE=0`` turns it off, to compare).
OUTLINE_THREAD_NICE = int(os.environ.get("ROOF_DETECTOR_OUTLINE_NICE", "19"))
#: Linux scheduling class of the outline thread: ``idle`` (SCHED_IDLE, the default) or ``nice``
#: (SCHED_OTHER at :data:`OUTLINE_THREAD_NICE` only), from ``ROOF_DETECTOR_OUTLINE_SCHED``.
OUTLINE_THREAD_SCHED = os.environ.get("ROOF_DETECTOR_OUTLINE_SCHED", "idle")


def _lower_thread_priority() -> None:
    """Run the calling thread at the lowest CPU priority, where the OS allows it (Linux).

    The network's operators run on all cores and each waits for its slowest
    thread, so a tracing thread that takes a core from it stalls the whole
    network, not just one thread. At nice 19 the tracing thread runs in the
    gaps the network leaves (between operators and batches) instead: the
    8192 px bench went from 19.4 to 18.3 s, inference itself from 19.0 to 16.6 s.
    SCHED_IDLE goes further: a model thread that wakes up takes the core from an
    idle-class thread at once, where a nice-19 one may keep it for the scheduler's
    wake-up granularity (milliseconds, at every operator's sync point). On the same
    bench, three pairs of runs in turn (nice 19 / SCHED_IDLE): 23.2 / 20.9, 19.9 / 17.8,
    21.6 / 18.6 s, and 2–4 CPU s less. An idle-class thread still gets a small share of a
    busy CPU (as a nice-19 one does), so it is never starved for good.
    Linux only: elsewhere a thread id is not a process id setpriority accepts.
    """
    if OUTLINE_THREAD_NICE <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, OUTLINE_THREAD_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same result, less overlap
        pass
    if OUTLINE_THREAD_SCHED == "idle":
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # no SCHED_IDLE here (or not allowed): nice 19 stays
            pass


def _leave_idle_class(tid: int) -> None:
    """Move thread ``tid`` from SCHED_IDLE back to the normal class (its nice value stays)."""
    try:
        if os.sched_getscheduler(tid) == os.SCHED_IDLE:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or the thread is gone: nothing to do
        pass


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
    drops the batches not started and waits for the one running.
    """

    def __init__(self, mosaic: StripMosaic, vectorizer: StripVectorizer, max_pending: int = MIN_PENDING_BATCHES):
        self.max_pending = max(1, max_pending)
        self.mosaic = mosaic
        self.vectorizer = vectorizer
        self.valid_px = 0
        self.stitch_s = 0.0
        self.wait_s = 0.0  # the model's thread waiting for a free place in the queue
        self._tid: Optional[int] = None  # the outline thread's id, once it runs
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="roof-outlines", initializer=self._start_thread
        )
        self._pending: List[Future] = []

    def _start_thread(self) -> None:
        self._tid = threading.get_native_id()
        _lower_thread_priority()

    def submit(self, batch: List[Tuple[Tile, Any, Any]]) -> None:
        """Queue one predicted batch ``[(tile, probability, valid), ...]`` (in run order)."""
        t0 = time.perf_counter()
        self._reap(block=len(self._pending) >= self.max_pending)
        self.wait_s += time.perf_counter() - t0
        self._pending.append(self._pool.submit(self._take, batch))

    def finish(self) -> List[Building]:
        """Wait for every queued batch, trace the last rows and return the buildings."""
        self._pending.append(self._pool.submit(self.vectorizer.finish))
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
            self._pending.pop(0).result()  # re-raises the worker's error here
            block = False

    def __enter__(self) -> "OutlineWorker":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for f in self._pending:
            f.cancel()
        if exc_type is not None and self._tid is not None:
            # Leaving early (cancel, Ctrl-C, an error): a model call left running (a TorchScript call
            # cannot be stopped) may still hold every core, where an idle-class thread would get
            # almost nothing; the strip in progress then ends at nice 19, as before SCHED_IDLE.
            _leave_idle_class(self._tid)
        self._pool.shutdown(wait=True)
