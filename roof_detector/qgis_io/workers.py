"""Qt worker threads, the retry policy and one HTTP GET through QGIS's network stack.

Why QThreads: the engine reads from a plain Python thread (its read-ahead
reader), where Qt has no event dispatcher, so QGIS network requests could not
time out there and a provider's own event loop has nothing to run on. The
readers in this package therefore do all their QGIS work (creating the layer,
``provider.block()``, network requests) in their own QThreads, each of which
owns what it created; the engine's thread only waits for the results.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from qgis.core import QgsNetworkAccessManager
from qgis.PyQt.QtCore import QThread, QUrl
from qgis.PyQt.QtNetwork import QNetworkRequest

from ..core.errors import Cancelled, InputRasterError
from ..qgis_adapter.http_reply import read_reply

CancelFn = Callable[[], bool]


class ServiceError(InputRasterError):
    """A web service could not deliver the imagery (down, refusing, answering garbage)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed request is repeated.

    Attempt ``n`` (1-based) that fails waits ``first_delay_s * factor ** (n - 1)``
    seconds (at most ``max_delay_s``, +-20 % jitter so parallel requests do not
    retry in lockstep) before the next; a ``Retry-After`` header is honoured up
    to ``max_delay_s``.
    """

    attempts: int = 4
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 8.0

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        base = min(self.max_delay_s, self.first_delay_s * self.factor ** (attempt - 1))
        if retry_after is not None and retry_after > 0:
            base = min(self.max_delay_s, max(base, retry_after))
        return base * random.uniform(0.8, 1.2)


DEFAULT_RETRY = RetryPolicy()


def sleep_unless_cancelled(
    seconds: float, is_cancelled: Optional[CancelFn], stop: Optional[threading.Event] = None
) -> None:
    """Sleep ``seconds`` in small steps; raise :class:`Cancelled` as soon as cancel is asked for."""
    end = time.monotonic() + seconds
    while True:
        if (is_cancelled is not None and is_cancelled()) or (stop is not None and stop.is_set()):
            raise Cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.05, left))


class _Worker(QThread):
    def __init__(self, jobs: "queue.Queue[Any]", state: Dict[str, Any]):
        super().__init__()
        self._jobs = jobs
        self._state = state

    def run(self) -> None:  # noqa: D401 - QThread API
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self._state))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)


class QtWorkers:
    """``count`` QThreads running submitted functions; at most ``count`` run at once.

    ``fn(state)`` gets a dict private to the thread that runs it, for objects
    that must stay in that thread (a layer, a provider). With ``count=1`` every
    job runs in the same thread, in submission order.
    """

    def __init__(self, count: int, name: str = "roof-qgis-io"):
        self._jobs: "queue.Queue[Any]" = queue.Queue()
        self._threads: List[_Worker] = []
        self._states: List[Dict[str, Any]] = []
        for i in range(max(1, count)):
            state: Dict[str, Any] = {}
            worker = _Worker(self._jobs, state)
            worker.setObjectName(f"{name}-{i}")
            self._threads.append(worker)
            self._states.append(state)
            worker.start()
        self._closed = False

    @property
    def count(self) -> int:
        return len(self._threads)

    def state(self, index: int) -> Dict[str, Any]:
        """The private dict of thread ``index`` (read it from elsewhere only for thread-safe calls)."""
        return self._states[index]

    def submit(self, fn: Callable[[Dict[str, Any]], Any]) -> Future:
        if self._closed:
            raise RuntimeError("the workers are closed")
        future: Future = Future()
        self._jobs.put((fn, future))
        return future

    def close(self, cleanup: Optional[Callable[[Dict[str, Any]], None]] = None, timeout_s: float = 30.0) -> None:
        """Drop queued jobs, run ``cleanup(state)`` in every thread, stop the threads."""
        if self._closed:
            return
        self._closed = True
        while True:  # jobs not started yet are cancelled
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[1].cancel()
        if cleanup is not None:
            # One cleanup per thread: each blocks its thread until all have started,
            # so no thread takes two of them.
            barrier = threading.Barrier(len(self._threads))

            def run_cleanup(state: Dict[str, Any]) -> None:
                try:
                    barrier.wait(timeout_s)
                except threading.BrokenBarrierError:
                    pass
                cleanup(state)

            cleanups = [Future() for _ in self._threads]
            for future in cleanups:
                self._jobs.put((run_cleanup, future))
        for _ in self._threads:
            self._jobs.put(None)
        for worker in self._threads:
            worker.wait(int(timeout_s * 1000))


@dataclass
class HttpResult:
    """What one GET produced."""

    status: int  # HTTP status (0 when no HTTP answer came)
    content: bytes
    error: str  # '' on success
    network_error: bool  # no HTTP answer at all (refused, timeout, DNS...)
    retry_after: Optional[float] = None


def http_get(url: str, headers: Optional[Dict[str, str]] = None, authcfg: str = "") -> HttpResult:
    """GET ``url`` with QGIS's network manager (its proxy, authentication, SSL settings and cache).

    Call it from a QThread (see :class:`QtWorkers`). Never raises for
    network or HTTP failures; the result says what happened.
    """
    request = QNetworkRequest(QUrl(url))
    for key, value in (headers or {}).items():
        request.setRawHeader(key.encode("utf-8"), value.encode("utf-8"))
    # The static call builds its QgsBlockingNetworkRequest in C++. One built
    # from Python is a sip subclass whose connect/disconnect hooks need the
    # GIL while Qt holds its signal-slot mutexes: with another worker holding
    # the GIL and waiting for one of those mutexes (PyQt calls keep the GIL),
    # the two threads deadlocked (1 run in 3 of the web-layer tests).
    parts = read_reply(QgsNetworkAccessManager.blockingGet(request, authcfg, False))
    status = parts.status or 0
    if parts.succeeded:
        return HttpResult(status, parts.body, "", False)
    # No answer: refused, timed out, host unknown, proxy failure... An error
    # that comes with a 2xx status is no trustworthy answer either (CI saw
    # "HTTP 200" carrying a 503's "server replied: Busy" once): try again.
    no_answer = status == 0 or 200 <= status < 300
    return HttpResult(status, parts.body, parts.error or f"HTTP {status}", no_answer, parts.retry_after_s)


def is_transient(result: HttpResult) -> bool:
    """Worth another try: no answer, 408, 425, 429 or a 5xx."""
    return result.network_error or result.status in (408, 425, 429) or result.status >= 500


def with_retries(
    attempt: Callable[[], Tuple[bool, Any, Optional[float]]],
    policy: RetryPolicy,
    is_cancelled: Optional[CancelFn],
    stop: Optional[threading.Event] = None,
) -> Tuple[bool, Any, int]:
    """Call ``attempt()`` until it succeeds or ``policy.attempts`` are used, backing off in between.

    ``attempt()`` returns ``(done, value, retry_after)``: ``done`` True ends
    the loop with ``value``; False means a transient failure (``value`` is
    kept as the last failure). Cancel is checked before every attempt and
    while waiting. Returns ``(done, value, attempts_made)``.
    """
    value: Any = None
    for n in range(1, policy.attempts + 1):
        if (is_cancelled is not None and is_cancelled()) or (stop is not None and stop.is_set()):
            raise Cancelled()
        done, value, retry_after = attempt()
        if done:
            return True, value, n
        if n < policy.attempts:
            sleep_unless_cancelled(policy.delay(n, retry_after), is_cancelled, stop)
    return False, value, policy.attempts
