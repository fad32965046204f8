"""Model calls that Ctrl-C, SIGTERM and a cancel can always interrupt.

A model file is code: a TorchScript ``while`` loop or an ONNX ``Loop`` whose
condition never turns false runs in C++ for ever, and Python only handles a
signal between bytecodes, so a model run on the main thread would ignore
Ctrl-C and SIGTERM (and a QGIS task's cancel) until it returns. Here the model
runs on a daemon thread while the caller waits in short slices: the signal is
handled at once (Python interrupts a lock wait on POSIX), a cancel is seen
within :data:`POLL_S`, and the call still running is abandoned.

An abandoned ONNX Runtime run is stopped through its ``RunOptions.terminate``
flag (``stop`` below); a TorchScript call cannot be stopped and keeps its
thread busy until the process ends. A process leaving with such a thread must
not run the interpreter's normal exit (C++ destructors under a running model):
see :func:`stuck_calls` and ``roof_detector.cli.main``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, List, Optional, TypeVar

from .errors import Cancelled

T = TypeVar("T")

#: Seconds between two looks at ``is_cancelled`` while a model call runs.
POLL_S = 0.1

_ABANDONED: List[threading.Thread] = []


def call_interruptibly(
    fn: Callable[[], T],
    is_cancelled: Optional[Callable[[], bool]] = None,
    stop: Optional[Callable[[], None]] = None,
) -> T:
    """``fn()`` run on a daemon thread; its result, or its exception re-raised here.

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) or a
    :class:`Cancelled` (``is_cancelled()`` true) while ``fn`` runs reaches the
    caller at once; ``fn`` is abandoned and ``stop()`` (if given) asked to end it.
    Thread-local state (``torch.inference_mode``) must be set inside ``fn``.
    """
    done = threading.Event()
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="roof-model-call", daemon=True)
    try:
        worker.start()
    except RuntimeError:  # "can't start new thread": memory so short that no thread stack can be
        # mapped (a memory cap). Run it here instead: not interruptible, but the out-of-memory
        # retries with fewer tiles can still end the run well.
        return fn()
    try:
        _wait_in_slices(done.wait, is_cancelled)
    except BaseException:
        if not done.is_set():
            _ABANDONED.append(worker)
            if stop is not None:
                try:
                    stop()
                except Exception:  # noqa: BLE001 - stopping is best effort; the call is abandoned anyway
                    pass
        raise
    if "error" in box:
        error = box.pop("error")
        try:
            raise error
        finally:
            del error  # no reference cycle through the traceback
    return box.pop("value")


@contextlib.contextmanager
def holding(lock: Optional[threading.Lock], is_cancelled: Optional[Callable[[], bool]] = None) -> Iterator[None]:
    """Hold ``lock`` (None: nothing to hold) for the block; the wait for it ends on a cancel.

    Waits in slices of :data:`POLL_S`, so Ctrl-C reaches the caller at once and
    ``is_cancelled()`` (raising :class:`Cancelled`) within a slice.
    """
    if lock is None:
        yield
        return
    _wait_in_slices(lambda timeout: lock.acquire(timeout=timeout), is_cancelled)
    try:
        yield
    finally:
        lock.release()


def _wait_in_slices(wait: Callable[[float], bool], is_cancelled: Optional[Callable[[], bool]]) -> None:
    """Call ``wait(POLL_S)`` until it returns True; raise :class:`Cancelled` when ``is_cancelled()``
    turns true in between. A lock or event wait, so Ctrl-C interrupts it at once."""
    while not wait(POLL_S):
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()


def stuck_calls(grace_s: float = 1.0) -> int:
    """How many abandoned model calls are still running after waiting up to ``grace_s`` for them."""
    deadline = time.monotonic() + grace_s
    for worker in list(_ABANDONED):
        worker.join(max(0.0, deadline - time.monotonic()))
    _ABANDONED[:] = [w for w in _ABANDONED if w.is_alive()]
    return len(_ABANDONED)
