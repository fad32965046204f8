"""Detection jobs: records under the data dir, and one runner that does them one at a time.

Layout of ``DATA_DIR``::

    jobs/<id>/job.json      the record (state, progress, timings, error), replaced atomically
    jobs/<id>/input.tif     the uploaded raster (absent for a data-dir path)
    jobs/<id>/buildings.gpkg, buildings.geojson   the result, each written under a temporary
                                                  name and renamed when complete
    uploads/                uploads being received (moved into the job once checked)

A restart reads every record back: finished jobs keep their results; a job
that was queued or running when the server stopped is marked failed with the
reason, so no client polls forever.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from ..core.errors import Cancelled, RoofDetectorError

log = logging.getLogger("roof_detector.service")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL_STATES = (DONE, FAILED, CANCELLED)
INTERRUPTED = (
    "Interrupted: the server stopped while this job was {state}; nothing was lost but this job, submit it again"
)
# A running job's record is rewritten at most this often for progress (state changes always).
_SAVE_PROGRESS_EVERY_S = 1.0


class QueueFull(Exception):
    """The queue holds its maximum of waiting jobs; try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"The job queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    """One detection request and what became of it (the JSON record)."""

    id: str
    owner: str  # a hash of the caller's token ("" without tokens)
    input_name: str  # the uploaded file's name or the data-dir path, as the client gave it
    raster_path: str  # what the engine reads
    options: Dict[str, Any] = field(default_factory=dict)  # the request's options, as given
    aoi: Optional[Any] = None  # GeoJSON (EPSG:4326), as given
    state: str = QUEUED
    progress: float = 0.0
    message: str = ""
    tiles_done: int = 0
    tiles_total: int = 0
    created_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    error: Optional[str] = None
    buildings: Optional[int] = None
    total_area_m2: Optional[float] = None
    warnings: List[str] = field(default_factory=list)
    timings_s: Dict[str, float] = field(default_factory=dict)

    def public(self) -> Dict[str, Any]:
        """The record as the API shows it (no server paths, no owner)."""
        out = asdict(self)
        for key in ("owner", "raster_path"):
            out.pop(key)
        if self.started_at is not None:
            end = self.finished_at if self.finished_at is not None else time.time()
            out["seconds"] = round(end - self.started_at, 3)
        return out


def write_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that a reader or a crash sees the old or the new file, never half."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JobStore:
    """The job records under ``DATA_DIR/jobs`` (thread-safe)."""

    def __init__(self, data_dir: str):
        self.data_dir = os.path.realpath(data_dir)
        self.jobs_dir = os.path.join(self.data_dir, "jobs")
        self.uploads_dir = os.path.join(self.data_dir, "uploads")
        os.makedirs(self.jobs_dir, exist_ok=True)
        os.makedirs(self.uploads_dir, exist_ok=True)
        self._lock = threading.RLock()
        self._jobs: Dict[str, Job] = {}
        self._load()

    def _load(self) -> None:
        for name in os.listdir(self.uploads_dir):  # uploads cut short by the stop
            os.unlink(os.path.join(self.uploads_dir, name))
        interrupted = 0
        for job_id in sorted(os.listdir(self.jobs_dir)):
            folder = os.path.join(self.jobs_dir, job_id)
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if name.endswith(".tmp") or ".tmp." in name:  # a write cut short by the stop
                    os.unlink(os.path.join(folder, name))
            try:
                with open(os.path.join(folder, "job.json"), encoding="utf-8") as f:
                    job = Job(**json.load(f))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping job folder %s: unreadable record (%s)", job_id, exc)
                continue
            if job.state not in FINAL_STATES:
                job.error = INTERRUPTED.format(state=job.state)
                job.state = FAILED
                job.finished_at = time.time()
                self._write(job)
                interrupted += 1
            self._jobs[job.id] = job
        if self._jobs:
            log.info(
                "data dir %s: %d jobs read back, %d interrupted ones marked failed",
                self.data_dir,
                len(self._jobs),
                interrupted,
            )

    def job_dir(self, job_id: str) -> str:
        """The folder of job ``job_id``."""
        return os.path.join(self.jobs_dir, job_id)

    def create(
        self,
        owner: str,
        input_name: str,
        options: Dict[str, Any],
        aoi: Any,
        upload_path: Optional[str] = None,
        raster_path: Optional[str] = None,
    ) -> Job:
        """A new queued job; an upload is moved into the job's folder."""
        job_id = uuid.uuid4().hex
        folder = self.job_dir(job_id)
        os.makedirs(folder)
        if upload_path is not None:
            raster_path = os.path.join(folder, "input.tif")
            os.replace(upload_path, raster_path)
        job = Job(
            id=job_id,
            owner=owner,
            input_name=input_name,
            raster_path=raster_path or "",
            options=dict(options or {}),
            aoi=aoi,
            created_at=time.time(),
        )
        self.save(job)
        return job

    def get(self, job_id: str, owner: Optional[str] = None) -> Optional[Job]:
        """Job ``job_id``, or None (also when it belongs to another owner)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    def list(self, owner: Optional[str] = None) -> List[Job]:
        """The jobs of ``owner`` (all with None), oldest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted((j for j in jobs if owner is None or j.owner == owner), key=lambda j: j.created_at)

    def save(self, job: Job) -> None:
        """Keep ``job`` and write its record atomically."""
        with self._lock:
            self._jobs[job.id] = job
            self._write(job)

    def _write(self, job: Job) -> None:
        write_json_atomic(os.path.join(self.job_dir(job.id), "job.json"), asdict(job))

    def delete(self, job_id: str) -> None:
        """Forget a finished job and delete its files."""
        with self._lock:
            self._jobs.pop(job_id, None)
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def counts(self) -> Dict[str, int]:
        """Number of jobs per state."""
        with self._lock:
            return dict(collections.Counter(j.state for j in self._jobs.values()))


RunFn = Callable[[Job, Callable[[float, str], None], Callable[[], bool]], Dict[str, Any]]


class JobRunner:
    """Runs queued jobs one at a time on one worker thread (inference is compute-bound).

    ``run(job, progress, is_cancelled)`` does the work and returns fields to
    set on the finished job; :class:`Cancelled` ends it as cancelled, an
    engine error as failed with its message, anything else as failed with
    the exception's text (logged with its traceback).
    """

    def __init__(self, store: JobStore, run: RunFn, max_queued: int):
        self.store = store
        self._run = run
        self.max_queued = max(1, int(max_queued))
        self._queue: Deque[str] = collections.deque()
        self._cond = threading.Condition()
        self._cancel: Dict[str, threading.Event] = {}
        self._running: Optional[str] = None
        self._stopping = False
        self._recent_s: Deque[float] = collections.deque(maxlen=20)
        self.jobs_finished = collections.Counter()
        self._thread = threading.Thread(target=self._loop, name="roof-detector-jobs", daemon=True)
        self._thread.start()

    # -- requests -----------------------------------------------------------
    def retry_after_s(self) -> int:
        """Seconds until a place in the queue is likely to be free."""
        mean = sum(self._recent_s) / len(self._recent_s) if self._recent_s else 5.0
        return max(1, int(math.ceil(mean)))

    def check_room(self) -> None:
        """Raise :class:`QueueFull` when no job can be queued now."""
        with self._cond:
            if len(self._queue) >= self.max_queued:
                raise QueueFull(self.retry_after_s())

    def submit(self, job: Job) -> None:
        """Queue a saved job (raises :class:`QueueFull`)."""
        with self._cond:
            if len(self._queue) >= self.max_queued:
                raise QueueFull(self.retry_after_s())
            self._cancel[job.id] = threading.Event()
            self._queue.append(job.id)
            self._cond.notify()
        log.info("job %s queued (%s), %d waiting", job.id, job.input_name, len(self._queue))

    def cancel(self, job: Job) -> None:
        """Cancel a queued job at once, or ask the running one to stop (it ends as cancelled)."""
        with self._cond:
            if job.id in self._queue:
                self._queue.remove(job.id)
                self._cancel.pop(job.id, None)
                self._finish(job, CANCELLED, error="Cancelled by the client before it started")
                return
            event = self._cancel.get(job.id)
        if event is not None:
            event.set()
            log.info("job %s: cancel requested", job.id)

    @property
    def queue_length(self) -> int:
        """Jobs waiting (not counting the running one)."""
        return len(self._queue)

    @property
    def running(self) -> Optional[str]:
        """Id of the running job, if any."""
        return self._running

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking jobs, cancel the running one, wait for it; mark everything unfinished failed."""
        with self._cond:
            self._stopping = True
            waiting = list(self._queue)
            self._queue.clear()
            for event in self._cancel.values():
                event.set()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        for job_id in waiting + ([self._running] if self._running else []):
            job = self.store.get(job_id)
            if job is not None and job.state not in FINAL_STATES:
                self._finish(job, FAILED, error=INTERRUPTED.format(state=job.state))

    # -- worker thread --------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                self._running = job_id
                cancel = self._cancel[job_id]
            try:
                job = self.store.get(job_id)
                if job is not None:
                    self._do(job, cancel)
            finally:
                with self._cond:
                    self._running = None
                    self._cancel.pop(job_id, None)

    def _do(self, job: Job, cancel: threading.Event) -> None:
        job.state, job.started_at, job.message = RUNNING, time.time(), "Starting"
        self.store.save(job)
        log.info("job %s running (%s)", job.id, job.input_name)
        last_save = [time.monotonic()]

        def progress(fraction: float, message: str) -> None:
            job.progress = round(float(min(max(fraction, 0.0), 1.0)), 4)
            job.message = message
            done_total = _tiles(message)
            if done_total:
                job.tiles_done, job.tiles_total = done_total
            if time.monotonic() - last_save[0] >= _SAVE_PROGRESS_EVERY_S:
                last_save[0] = time.monotonic()
                self.store.save(job)

        try:
            fields = self._run(job, progress, cancel.is_set) or {}
        except Cancelled:
            if self._stopping:
                self._finish(job, FAILED, error=INTERRUPTED.format(state=RUNNING))
            else:
                self._finish(job, CANCELLED, error="Cancelled by the client; nothing was kept")
            return
        except RoofDetectorError as exc:
            self._finish(job, FAILED, error=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the job fails, the server goes on
            log.exception("job %s failed unexpectedly", job.id)
            self._finish(job, FAILED, error=f"Unexpected error: {exc or type(exc).__name__}")
            return
        for key, value in fields.items():
            setattr(job, key, value)
        job.progress = 1.0
        self._finish(job, DONE)

    def _finish(self, job: Job, state: str, error: Optional[str] = None) -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        if job.started_at is not None and state == DONE:
            self._recent_s.append(job.finished_at - job.started_at)
        self.store.save(job)
        self.jobs_finished[state] += 1
        seconds = f"{job.finished_at - job.started_at:.1f} s" if job.started_at else "not started"
        log.info(
            "job %s %s (%s)%s%s",
            job.id,
            state,
            seconds,
            f", {job.buildings} buildings" if state == DONE else "",
            f": {error}" if error else "",
        )


def _tiles(message: str):
    """(done, total) from the engine's 'tile 12/40' progress messages."""
    import re

    m = re.search(r"tile (\d+)/(\d+)", message)
    return (int(m.group(1)), int(m.group(2))) if m else None
