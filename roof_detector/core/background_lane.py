"""One background thread that runs work items in order at the lowest CPU priority, and hands its
queue to a normal-priority thread when other programs starve it.

A detection's reader and outline threads (:mod:`.inference`, :mod:`.outline_worker`) run in
Linux's SCHED_IDLE class on a quiet machine: they fill the gaps the network's threads leave,
and a waking network thread takes its core back at once. But an idle-class thread gets almost
no CPU while any other program keeps the cores busy, and the network waits for it: on a 2-core
machine beside two busy processes, a 4096 px detection took 358 s instead of 2.8 s (release
0.2.0's outline thread). So:

- a lane enters the idle class only where other work (other programs, and this process's
  other threads: another QGIS task) used less than :data:`BUSY_MACHINE_CORES` over the last
  moments (:func:`other_work_cores`); otherwise
  its thread keeps the caller's priority (the same run: 5.8 s);
- load that starts later is caught by watching the thread: when, over at least
  :data:`STARVED_WINDOW_S` seconds in which the lane had work, its thread ran less than
  :data:`STARVED_CPU_SHARE` of them, a thread at the caller's priority takes the queue once the
  item in progress ends. Unprivileged threads cannot leave the idle class (Linux's
  RLIMIT_NICE rule), so that one item still runs starved. The caller looks at each
  :meth:`~BackgroundLane.submit` and while it waits.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Deque, List, Optional, Tuple

#: Nice value of the low-priority threads on Linux (``ROOF_DETECTOR_OUTLINE_NICE=0`` turns the
#: low priority off, to compare).
BACKGROUND_NICE = int(os.environ.get("ROOF_DETECTOR_OUTLINE_NICE", "19"))
#: Their Linux scheduling class: ``idle`` (SCHED_IDLE, the default) or ``nice`` (SCHED_OTHER at
#: :data:`BACKGROUND_NICE` only), from ``ROOF_DETECTOR_OUTLINE_SCHED``.
BACKGROUND_SCHED = os.environ.get("ROOF_DETECTOR_OUTLINE_SCHED", "idle")

#: A waiting caller looks at the lane's thread this often (seconds).
STARVED_CHECK_S = 0.25
#: The lane's thread is starved when, over at least :data:`STARVED_WINDOW_S` seconds in which it
#: had work, it ran less than this share of them (an idle-class thread in a quiet detection
#: gets most of its work time; beside busy programs, about 0.2 %).
STARVED_CPU_SHARE = 0.1
STARVED_WINDOW_S = 0.5
#: Other work's CPU use (in cores: other programs, this process's other threads) above which a
#: lane's thread keeps the caller's priority rather than entering the idle class: an item an
#: idle-class thread has started cannot be moved, and beside busy programs it runs about a
#: thousand times slower.
BUSY_MACHINE_CORES = 0.25
#: The window over which that use is measured (seconds), and how long a measure is reused.
LOAD_WINDOW_S = 0.05
LOAD_REUSE_S = 1.0


def _cpu_sample() -> Optional[Tuple[float, float]]:
    """(CPU s the whole machine was busy, CPU s of the calling thread), or None where unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal...: busy = all but idle, iowait and steal
    busy = sum(fields[:3]) + sum(fields[5:7])
    return busy / os.sysconf("SC_CLK_TCK"), time.thread_time()


_last_measure: Tuple[float, Optional[float]] = (-1e9, None)  # (monotonic s, cores)
_measure_lock = threading.Lock()


def other_work_cores() -> Optional[float]:
    """How many cores other work keeps busy (over :data:`LOAD_WINDOW_S`, reused for
    :data:`LOAD_REUSE_S`), or None where unknown (not Linux).

    Other work is everything but the calling thread: other programs, and this process's other
    threads (another QGIS task such as a fine-tuning, a previous run still tracing). A lane is
    made before its run's network starts, so none of that is the run's own.
    """
    global _last_measure
    with _measure_lock:
        if time.monotonic() - _last_measure[0] < LOAD_REUSE_S:
            return _last_measure[1]
        t0, first = time.monotonic(), _cpu_sample()
        if first is None:  # no /proc/stat (not Linux): no idle class to choose either
            return None
        time.sleep(LOAD_WINDOW_S)
        t1, now = time.monotonic(), _cpu_sample()
        cores = None if now is None else max(0.0, (now[0] - first[0]) - (now[1] - first[1])) / (t1 - t0)
        _last_measure = (t1, cores)
        return cores


def lower_thread_priority() -> None:
    """Run the calling thread at the lowest CPU priority, where the OS allows it (Linux).

    The network's operators run on all cores and each waits for its slowest
    thread, so a helper thread that takes a core from it stalls the whole
    network, not just one thread. At nice 19 a helper runs in the gaps the
    network leaves (between operators and batches); SCHED_IDLE goes further: a
    model thread that wakes takes the core from an idle-class thread at once,
    where a nice-19 one may keep it for the scheduler's wake-up granularity. On
    the 8192 px bench (three pairs of runs): 23.2 / 20.9, 19.9 / 17.8, 21.6 / 18.6 s.
    Linux only: elsewhere a thread id is not a process id setpriority accepts.
    """
    if BACKGROUND_NICE <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same result, less overlap
        pass
    if BACKGROUND_SCHED == "idle":
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # no SCHED_IDLE here (or not allowed): nice 19 stays
            pass


def leave_idle_class(tid: int) -> None:
    """Move thread ``tid`` from SCHED_IDLE back to the normal class (its nice value stays).

    Allowed only with CAP_SYS_NICE (root) or a raised RLIMIT_NICE; otherwise nothing changes.
    """
    try:
        if os.sched_getscheduler(tid) == os.SCHED_IDLE:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, not allowed, or the thread is gone
        pass


def _thread_cpu_s(ident: Optional[int]) -> Optional[float]:
    """CPU seconds thread ``ident`` (``threading.get_ident()``) has run, or None where unknown."""
    if ident is None:
        return None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError, ValueError):  # not POSIX, or the thread has ended
        return None


class BackgroundLane:
    """Runs submitted callables one at a time, in submission order, on one low-priority thread.

    :meth:`result` waits for one of them and, where that thread is starved,
    rescues the lane (see the module docstring). :meth:`close` ends the lane:
    with ``cancel`` the items not started are dropped; either way it waits for
    the item in progress.
    """

    def __init__(self, name: str):
        self.name = name
        self.rescued_after_s: Optional[float] = None  # when a normal-priority thread took over
        self._t0 = time.monotonic()
        self._cond = threading.Condition()
        self._queue: Deque[Tuple[Future, Callable[..., Any], Tuple[Any, ...]]] = deque()
        self._busy = False
        self._closed = False
        self._work_since: Optional[float] = None  # since when the lane has had work (None: idle)
        self._work_s = 0.0  # wall seconds with work, before _work_since
        self._sample: Tuple[float, Optional[float]] = (0.0, None)  # work seconds, thread CPU seconds
        self._low_ident: Optional[int] = None  # the low-priority thread, for its CPU clock
        self.low_tid: Optional[int] = None  # its native id, for the scheduler
        others = other_work_cores()
        #: whether the lane's thread runs in the idle class (else, on a busy machine, at the caller's priority)
        self.idle_class = others is None or others < BUSY_MACHINE_CORES
        self._threads: List[threading.Thread] = [self._start(low=True)]

    def _start(self, low: bool) -> threading.Thread:
        suffix = "" if low else "-rescue"
        thread = threading.Thread(target=self._loop, args=(low,), name=f"{self.name}{suffix}", daemon=True)
        thread.start()
        return thread

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue ``fn(*args)``; its :class:`~concurrent.futures.Future`."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._work_since is None:
                self._work_since = time.monotonic()
            self._queue.append((future, fn, args))
            self._cond.notify_all()
        self._check()
        return future

    def result(self, future: Future) -> Any:
        """``future``'s result (or its exception, raised here), rescuing the lane if it starves."""
        while True:
            try:
                return future.result(timeout=STARVED_CHECK_S)
            except FutureTimeout:
                self._check()

    def _check(self) -> None:
        """Rescue the lane when its thread ran less than :data:`STARVED_CPU_SHARE` of its last
        :data:`STARVED_WINDOW_S` (or more) seconds with work."""
        if self.rescued_after_s is not None or not self.idle_class:
            return
        with self._cond:
            work_s = self._work_s + (time.monotonic() - self._work_since if self._work_since is not None else 0.0)
        work0, cpu0 = self._sample
        if work_s - work0 < STARVED_WINDOW_S:
            return
        cpu = _thread_cpu_s(self._low_ident)
        self._sample = (work_s, cpu)
        if cpu0 is not None and cpu is not None and cpu - cpu0 < STARVED_CPU_SHARE * (work_s - work0):
            self.rescue()

    def rescue(self) -> None:
        """Hand the queue to a thread at the caller's priority once the item in progress ends
        (call it from the thread whose priority the work should have: the new thread inherits it)."""
        with self._cond:
            if self.rescued_after_s is not None or self._closed:
                return
            self.rescued_after_s = time.monotonic() - self._t0
            self._cond.notify_all()
        self._threads.append(self._start(low=False))

    def close(self, cancel: bool = False) -> None:
        """End the lane: run (or with ``cancel``, drop) what is queued, and wait for its threads."""
        with self._cond:
            if cancel:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _loop(self, low: bool) -> None:
        if low and self.idle_class:
            lower_thread_priority()
        if low:
            self._low_ident, self.low_tid = threading.get_ident(), threading.get_native_id()
            with self._cond:  # starvation counts from here: work time and CPU time so far
                self._sample = (self._work_s, _thread_cpu_s(self._low_ident))
        while True:
            with self._cond:
                while True:
                    if low and self.rescued_after_s is not None:
                        return  # the rescue thread goes on; this one was starved
                    if self._queue and not self._busy:
                        break
                    if self._closed and not self._queue:
                        return
                    self._cond.wait()
                future, fn, args = self._queue.popleft()
                if not future.set_running_or_notify_cancel():
                    self._stop_work_clock()
                    continue
                self._busy = True
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._stop_work_clock()
                    self._cond.notify_all()

    def _stop_work_clock(self) -> None:
        """With the lock held: stop counting time with work once nothing is left to do."""
        if not self._queue and not self._busy and self._work_since is not None:
            self._work_s += time.monotonic() - self._work_since
            self._work_since = None
