"""One job of ``detect-many``, as a Dask worker runs it: :func:`run_job`.

The job reads its window (footprint + margin) through a small VRT of the
rasters under it, runs :func:`~roof_detector.core.pipeline.detect_buildings`
(the function every front end calls) and keeps the buildings whose
representative point it owns (:func:`.mosaic_plan.owns`). The model is
loaded once per worker and kept for its next jobs. The buildings go back to
the client, which alone writes them: workers need to read the inputs, never
to write anywhere shared.

A single local worker runs as threads of the client's own process (see
:mod:`.many_cluster`): there the client stops its run's jobs itself
(:func:`stop_jobs`), since Dask cannot stop a running task and closing the
cluster would wait for it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import shapely

from .building import Building
from .many_seams import SEAM_BAND_M, split_at_seams
from .mosaic_plan import Job, owns, pixel_grid, write_job_vrt

_MODELS: Dict[Tuple[Any, ...], Any] = {}
_MODELS_LOCK = threading.Lock()
#: Runs whose client has stopped (done, Ctrl-C, SIGTERM, an error, a cancel): their jobs still
#: running in this process give up at their next check (at least once per batch of tiles).
_STOPPED_RUNS: Set[str] = set()
#: Held by the job whose tiles the model is predicting: a worker runs two jobs at once (see
#: :data:`.many_cluster.JOBS_PER_WORKER`) and they take turns on the network, so one job's last
#: outlines are traced while the next one's tiles are predicted, and the model's cores are never
#: shared by two networks.
NETWORK_LOCK = threading.Lock()


@dataclass
class JobResult:
    """What a job sends back: its buildings (owned only) and how it went."""

    index: int
    buildings: List[Building]
    crs_wkt: str
    seconds: float
    area_km2: float
    dropped: int = 0  # buildings found in the margin, owned by a neighbour
    cut_at_margin: int = 0  # owned buildings touching the window's inner edge: maybe larger than the margin
    warnings: List[str] = field(default_factory=list)
    model_metadata: Dict[str, Any] = field(default_factory=dict)
    threshold: Optional[float] = None
    worker_pid: int = 0
    error: Optional[Tuple[str, str]] = None  # (RoofDetectorError subclass name, message): bad input, not a crash
    # buildings near a seam, owned or not: the merge settles them for the whole mosaic (many_seams)
    seam: List[Building] = field(default_factory=list)


def worker_model(options, threads: Optional[int] = None):
    """The model of ``options`` for this process, loaded on its first job and kept."""
    from .pipeline import _load_model

    key = (options.model_path, options.device, threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            # Dask's nanny sets OMP_NUM_THREADS=1 in workers: give the model its share of cores
            # (all of this machine's when not told: a remote worker's machine is not ours).
            import torch

            torch.set_num_threads(
                int(
                    threads
                    or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                )
            )
            model = _MODELS[key] = _load_model(options)
        return model


def release_models() -> None:
    """Forget the models loaded by jobs run in this process (a single local worker's): a
    long-lived process (QGIS) frees them, and its next run reads the model file again."""
    with _MODELS_LOCK:
        _MODELS.clear()


def stop_jobs(run_id: str) -> None:
    """Make the jobs of run ``run_id`` that run in this process stop at their next check."""
    _STOPPED_RUNS.add(run_id)


def run_job(
    job: Job,
    options,
    threads: Optional[int] = None,
    stretch: Optional[np.ndarray] = None,
    run_id: Optional[str] = None,
) -> JobResult:
    """Detect the buildings ``job`` owns (the engine function every front end calls, on the job's window).

    ``run_id`` names the run for :func:`stop_jobs`: a job of a stopped run raises
    :class:`~roof_detector.core.errors.Cancelled` inside the engine (its model call is left at once).
    """
    from .pipeline import detect_buildings
    from .raster_source import RasterioSource

    from .errors import RoofDetectorError

    t0 = time.perf_counter()
    folder = tempfile.mkdtemp(prefix=f"roof-job-{job.index}-")
    try:
        model = worker_model(options, threads)
        vrt = write_job_vrt(job, os.path.join(folder, f"{job.index:06d}.vrt"))
        stopped = (lambda: run_id in _STOPPED_RUNS) if run_id else None
        with RasterioSource(vrt, stretch=stretch) as source:
            result = detect_buildings(source, options, model=model, is_cancelled=stopped, network_lock=NETWORK_LOCK)
    except Exception as exc:  # noqa: BLE001 - sent back as data (below)
        # As data, not raised: the message arrives whole whatever Dask's exception transport can
        # unpickle (it turns a RasterioIOError into a bare Exception and drops the GDAL messages
        # chained to it, which name the file that failed).
        name = type(exc).__name__ if isinstance(exc, RoofDetectorError) else ""
        text = _in_mosaic_terms(str(exc) if name else _chained_messages(exc), job, os.path.join(folder, ""))
        return JobResult(
            job.index, [], "", time.perf_counter() - t0, job.area_km2, error=(name, text), worker_pid=os.getpid()
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    off_seam, seam = split_at_seams(job, result.buildings, _seam_band_crs(job, result.crs_wkt))
    kept, dropped, cut = keep_owned(job, off_seam, seam, _edge_band_crs(job, options, model))
    warnings = [f"{job.name}: {w}" for w in result.warnings if "no valid pixels" not in w]
    return JobResult(
        job.index,
        kept,
        result.crs_wkt,
        time.perf_counter() - t0,
        job.area_km2,
        dropped,
        cut,
        warnings,
        dict(result.model_metadata),
        result.stats.get("threshold"),
        os.getpid(),
        seam=seam,
    )


def _seam_band_crs(job: Job, crs_wkt: str) -> float:
    """:data:`.many_seams.SEAM_BAND_M` in the mosaic's CRS units, at the job's window."""
    from .geo import pixel_size_m

    px_m = pixel_size_m(crs_wkt, *pixel_grid(job.window, job.res))
    return SEAM_BAND_M * job.res[0] / px_m[0]


def _in_mosaic_terms(text: str, job: Job, job_folder: str) -> str:
    """An engine message about the job's window VRT (a temporary file, gone by the time anyone reads
    it), told in the user's files: the input it names as failing (it may be a neighbour, read for the
    job's margin), else the job's inputs; without "Nothing was written" (finished tiles are kept)."""
    vrt = re.search(re.escape(job_folder) + r"\S*?\.vrt", text)
    if vrt is None:
        return text
    rest = text.replace(vrt.group(0), "")
    named = [os.path.basename(src) for src in job.sources if src in rest]
    if named:
        subject = ", ".join(named) + ("" if job.name in named else f" (read for the margin of {job.name})")
    else:
        subject = f"an input of {job.name} ({', '.join(os.path.basename(src) for src in job.sources)})"
    text = text.replace(vrt.group(0), subject)
    return re.sub(r"\. Nothing was written; (\w)", lambda m: ". " + m.group(1).upper(), text)


def _chained_messages(exc: BaseException) -> str:
    """``exc``'s message and those of the exceptions it was raised from, on one line."""
    parts: List[str] = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split()) or type(exc).__name__
        if text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return "; ".join(parts)


def _edge_band_crs(job: Job, options, model) -> float:
    """Half a tile overlap in CRS units: the band along a window's cut edge whose pixels the job
    keeps from its last tile, where one run over the whole mosaic keeps them from the next one."""
    lattice = options.grid_lattice
    step = max(lattice.step_x, lattice.step_y) if lattice is not None else max(job.res)
    return model.overlap_px / 2 * step


def _owned(job: Job, buildings: Sequence[Building]) -> List[bool]:
    """Whether ``job`` owns each building's representative point."""
    if not buildings:
        return []
    points = shapely.point_on_surface(np.asarray([b.geometry for b in buildings], dtype=object))
    return [owns(job, float(x), float(y)) for x, y in zip(shapely.get_x(points), shapely.get_y(points))]


def keep_owned(
    job: Job, buildings: List[Building], seam: List[Building] = (), edge_band: float = 0.0
) -> Tuple[List[Building], int, int]:
    """``(kept, dropped, cut)``: the buildings whose representative point ``job`` owns, in their order;
    ``cut`` counts those, and the ``seam`` candidates it owns, that reach within ``edge_band`` (CRS
    units; at least 1.5 pixels) of a cut edge of the window."""
    if not buildings and not seam:
        return [], 0, 0
    kept = [b for b, mine in zip(buildings, _owned(job, buildings)) if mine]
    # A kept building touching a cut edge of the window may be larger than the margin (then cut);
    # one reaching into the band the job keeps from another tile than a whole run may differ.
    # A seam candidate the neighbour owns is settled from the neighbour's whole outline: where it
    # reaches this window's edge it is no sign of a small margin (the demo in 683 px blocks).
    edge = max(1.5 * max(job.res), edge_band)
    x0, y0, x1, y1 = job.window
    cut = 0
    for b in kept + [b for b, mine in zip(seam, _owned(job, seam)) if mine]:
        bx0, by0, bx1, by1 = b.geometry.bounds
        near = (bx0 - x0 < edge, by0 - y0 < edge, x1 - bx1 < edge, y1 - by1 < edge)
        cut += any(n and inner for n, inner in zip(near, job.inner_edges))
    return kept, len(buildings) - len(kept), cut


__all__ = ["JobResult", "run_job", "keep_owned", "worker_model", "stop_jobs", "release_models"]
