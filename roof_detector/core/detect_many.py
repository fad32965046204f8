"""Building detection over many rasters on Dask distributed: :func:`detect_many`.

The client (this process) plans the jobs (:mod:`.mosaic_plan`), submits one
Dask task per job (:func:`.many_job.run_job`, which runs the same
:func:`~roof_detector.core.pipeline.detect_buildings` as every front end),
and is the only writer: each job's buildings become a GeoPackage part as
soon as they arrive (:mod:`.many_manifest`), so memory holds the jobs in
flight, not the region. When every job is finished the parts are streamed,
in job order, into the output layer (:func:`.many_merge.merge_parts`),
which appears complete or not at all.

Local workers: a single one runs as threads of this process, two or more as
processes (:mod:`.many_cluster`).

Faults: a worker that dies mid-job (killed, out of memory) loses nothing
written; Dask's scheduler runs its job again on another worker and the
client, which accepts each job's result once, writes it once. A crash or
Ctrl-C of the client keeps the finished parts: the same command again skips
them (the manifest) and gives the same output.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from .errors import Cancelled, RoofDetectorError
from .gpkg_writer import check_output, write_buildings
from .many_cluster import cluster_workers, dashboard_link, dask_client, stopping
from .many_job import JobResult, run_job
from .many_merge import merge_parts, seam_part_path, settle_seams
from .many_manifest import Manifest, saved_setting
from .mosaic_plan import (
    Job,
    auto_group,
    expand_inputs,
    plan_jobs,
    read_mosaic,
    total_area_km2,
    write_mosaic_vrt,
)
from .mosaic_tiles import mosaic_tiling
from .params import MANY, check

#: Metres read around each input tile so that buildings on its border are seen whole (declared in .params).
DEFAULT_MARGIN_M = MANY["margin_m"].default
#: Inputs larger than this (pixels a side) are cut into blocks, one job each (declared in .params).
DEFAULT_BLOCK_PX = MANY["block_px"].default


@dataclass
class ManyProgress:
    """Where a run stands, given to the ``progress`` callback after each job."""

    done: int
    total: int
    skipped: int
    area_km2: float
    buildings: int
    dashboard: Optional[str] = None
    group_tiles: int = 1  # each job is a block of group_tiles x group_tiles input tiles


@dataclass
class ManyResult:
    """Summary of a finished run (the buildings themselves are in the output file)."""

    output: str
    layer: str
    jobs: int
    skipped: int
    buildings: int
    area_km2: float
    building_area_m2: float
    seconds: float
    cut_at_margin: int
    dashboard: Optional[str]
    warnings: List[str] = field(default_factory=list)
    stats: Dict[str, Any] = field(default_factory=dict)


def detect_many(
    inputs: Sequence[str],
    output: str,
    options,
    *,
    layer: str = "buildings",
    overwrite: bool = False,
    workers: int = MANY["workers"].default,
    scheduler: Optional[str] = None,
    threads_per_worker: Optional[int] = MANY["threads_per_worker"].default,
    margin_m: float = DEFAULT_MARGIN_M,
    group_tiles: Optional[int] = MANY["group_tiles"].default,
    block_px: int = DEFAULT_BLOCK_PX,
    work_dir: Optional[str] = None,
    keep_parts: bool = False,
    restart: bool = False,
    processes: Optional[bool] = None,
    progress: Optional[Callable[[ManyProgress], None]] = None,
    is_cancelled: Optional[Callable[[], bool]] = None,
    on_cluster: Optional[Callable[[Any], None]] = None,
) -> ManyResult:
    """Detect the buildings of every raster in ``inputs`` into one layer of GeoPackage ``output``.

    ``options`` is the :class:`~roof_detector.core.pipeline.DetectOptions` of a
    single-raster run. ``scheduler`` (an address such as
    ``tcp://host:8786``) uses an existing Dask cluster; otherwise a
    ``LocalCluster`` of ``workers`` workers is started and stopped: processes,
    or threads of this process when ``processes`` is False (None: threads for a
    single worker, processes for more). ``on_cluster(client)`` is called
    once the client is connected (tests use it to reach the workers).
    ``group_tiles`` K makes each job a block of K x K neighbouring inputs
    (None: :func:`auto_group`, for ``workers`` or, with ``scheduler``, for the
    workers the scheduler has when the run starts).
    """
    t0 = time.perf_counter()
    # The declared ranges (core.params MANY, DETECT...): a ParameterError before any work.
    checked = _checked(workers, threads_per_worker, margin_m, group_tiles, block_px)
    group_tiles = checked["group_tiles"]
    workers, threads_per_worker = checked["workers"], checked["threads_per_worker"]
    margin_m, block_px = checked["margin_m"], checked["block_px"]
    options.validate()
    check_output(output, layer, overwrite)
    paths = expand_inputs(inputs)
    mosaic = read_mosaic(paths)
    work_dir = work_dir or f"{output}.parts"
    if restart and os.path.isdir(work_dir):
        shutil.rmtree(work_dir)
    group_tiles = _group_tiles(group_tiles, work_dir, mosaic, margin_m, block_px, scheduler, workers)
    jobs, job_options = _plan(mosaic, options, margin_m, block_px, group_tiles)
    manifest = Manifest(work_dir, _run_settings(paths, options, margin_m, block_px, group_tiles))
    stretch, options = _mosaic_stretch(mosaic, work_dir), job_options
    if threads_per_worker is None and scheduler is None:
        threads_per_worker = _threads_per_worker(workers)
    pending = [j for j in jobs if j.index not in manifest.done]
    tally = _Tally.of_finished(manifest, len(jobs), len(pending), group_tiles)
    report = progress or (lambda _state: None)
    if processes is None:
        processes = workers > 1
    if pending:
        run_id = f"{os.getpid()}-{uuid.uuid4().hex}"
        with dask_client(scheduler, workers, threads_per_worker, processes) as client, stopping(run_id):
            tally.state.dashboard = dashboard_link(client)
            if on_cluster is not None:
                on_cluster(client)
            report(tally.state)
            for res in _results(client, pending, options, threads_per_worker, stretch, run_id, is_cancelled):
                tally.add(res, jobs[res.index], manifest)
                report(tally.state)
    else:
        report(tally.state)

    tally.warn_if_cut(margin_m)
    provenance = dict(
        tally.meta, sources=len(paths), jobs=len(jobs), margin_m=margin_m, min_area_m2=options.min_area_m2
    )
    building_count, area_m2 = _merge(jobs, manifest, output, mosaic.crs_wkt, layer, overwrite, provenance)
    if not keep_parts:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return ManyResult(
        output,
        layer,
        len(jobs),
        tally.state.skipped,
        building_count,
        total_area_km2(jobs),
        area_m2,
        seconds,
        tally.cut,
        tally.state.dashboard,
        tally.warnings,
        dict(tally.stats(), inputs=len(paths), group_tiles=group_tiles),
    )


def _checked(workers, threads_per_worker, margin_m, group_tiles, block_px) -> Dict[str, Any]:
    """The run's numbers checked against their declarations (one ParameterError before any work)."""
    values = {
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "margin_m": margin_m,
        "group_tiles": group_tiles,
        "block_px": block_px,
    }
    return check("many", values)


def _group_tiles(group_tiles, work_dir, mosaic, margin_m, block_px, scheduler, workers) -> int:
    """Tiles per job side: as asked, else as the interrupted run in ``work_dir`` had it, else :func:`auto_group`.

    An interrupted run goes on with the blocks it started with, whatever --workers says now.
    """
    if group_tiles is not None:
        return group_tiles
    return saved_setting(work_dir, "group_tiles") or auto_group(
        mosaic, margin_m, block_px, cluster_workers(scheduler) if scheduler else workers
    )


def _run_settings(paths: List[str], options, margin_m: float, block_px: int, group_tiles: int) -> Dict[str, Any]:
    """What makes an earlier run's finished parts reusable (the manifest refuses them when any differs)."""
    return {
        "inputs": paths,
        "options": dataclasses.asdict(options),
        "margin_m": margin_m,
        "group_tiles": group_tiles,
        "block_px": block_px,
        "model": _model_fingerprint(options.model_path),
    }


def _threads_per_worker(workers: int) -> int:
    """The CPUs this process may use, shared among ``workers`` (at least one thread each)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // workers)


@dataclass
class _Tally:
    """What the client has gathered so far: progress, warnings, buildings cut at a margin, model, workers."""

    state: ManyProgress
    cut: int
    warnings: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)
    busy_s: float = 0.0
    pids: set = field(default_factory=set)

    @classmethod
    def of_finished(cls, manifest: Manifest, n_jobs: int, n_pending: int, group_tiles: int) -> "_Tally":
        """The tally of the jobs an earlier run finished (the manifest's)."""
        done = manifest.done.values()
        state = ManyProgress(
            n_jobs - n_pending,
            n_jobs,
            n_jobs - n_pending,
            sum(e["area_km2"] for e in done),
            sum(e["buildings"] for e in done),
            group_tiles=group_tiles,
        )
        return cls(state, sum(e.get("cut_at_margin", 0) for e in done))

    def add(self, res: JobResult, job: Job, manifest: Manifest) -> None:
        """Write a finished job's part, record it in the manifest and count it."""
        write_buildings(res.buildings, manifest.part_path(job.index), res.crs_wkt, layer="buildings", overwrite=True)
        seam = seam_part_path(manifest, job.index)
        if os.path.exists(seam):  # left by an earlier attempt at this job
            os.remove(seam)
        if res.seam:
            write_buildings(res.seam, seam, res.crs_wkt, layer="buildings", overwrite=True)
        manifest.record(
            job.index,
            {
                "name": job.name,
                "buildings": len(res.buildings),
                "area_km2": job.area_km2,
                "seconds": round(res.seconds, 3),
                "cut_at_margin": res.cut_at_margin,
                "worker_pid": res.worker_pid,
            },
        )
        self.warnings.extend(res.warnings)
        self.cut += res.cut_at_margin
        self.busy_s += res.seconds
        self.pids.add(res.worker_pid)
        self.meta = self.meta or {
            "model": f"{res.model_metadata.get('name', '?')} {res.model_metadata.get('version', '')}".strip(),
            "threshold": res.threshold,
        }
        self.state.done += 1
        self.state.area_km2 += job.area_km2
        self.state.buildings += len(res.buildings)

    def stats(self) -> Dict[str, Any]:
        """The run's figures for :attr:`ManyResult.stats`: busy seconds summed over jobs, worker processes."""
        return {"job_seconds_sum": round(self.busy_s, 3), "worker_pids": sorted(self.pids)}

    def warn_if_cut(self, margin_m: float) -> None:
        """Say so when buildings reached the edge of the margin read around their tile."""
        if self.cut:
            self.warnings.append(
                f"{self.cut} buildings reach the edge of the {margin_m:g} m margin read around their tile and "
                f"may be cut there: pass a larger --margin-m (the largest buildings' reach from their "
                "middle, plus 5 m)"
            )


def _results(
    client,
    jobs: Sequence[Job],
    options,
    threads: Optional[int],
    stretch,
    run_id: str,
    is_cancelled: Optional[Callable[[], bool]],
) -> Iterator[JobResult]:
    """Each job's result once, as jobs finish (in any order); cancels the rest on an error or cancel."""
    from distributed import as_completed

    futures = [
        client.submit(
            run_job,
            job,
            options,
            threads,
            stretch,
            run_id,
            key=f"roof-job-{job.index:06d}-{run_id}",
            pure=False,
        )
        for job in jobs
    ]
    names = {f.key: job.name for f, job in zip(futures, jobs)}
    finished = as_completed(futures)

    def check_cancel() -> None:
        if is_cancelled is not None and is_cancelled():
            raise Cancelled("Cancelled; the finished tiles are kept: run the same command again to go on")

    try:
        while not finished.is_empty():
            # Polled, not blocking on the next result: a cancel need not wait for a long job to end.
            check_cancel()
            batch = finished.next_batch(block=False)
            if not batch:
                time.sleep(0.1)
                continue
            for future in batch:
                check_cancel()  # also between the results of one batch: small jobs finish many at once
                res = _job_result(future, names[future.key])
                future.release()
                _raise_refusal(res, names[future.key])
                yield res
    finally:
        for f in futures:
            if not f.done():
                f.cancel()


def _job_result(future, name: str) -> JobResult:
    """A finished job's result; a job that raised becomes one error naming its tile ``name``."""
    try:
        return future.result()
    except RoofDetectorError as exc:
        raise type(exc)(
            f"{name}: {exc}; the finished tiles are kept: run the same command again once the input is fixed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a job's crash becomes one line naming its tile
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            raise RoofDetectorError(
                f"{name}: its worker died on every try (out of memory?); the finished "
                "tiles are kept: give workers more memory or fewer threads and run again"
            ) from None
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise RoofDetectorError(
            f"{name} failed: {text}; the finished tiles are kept: "
            "fix or remove that input and run the same command again"
        ) from None


def _raise_refusal(res: JobResult, name: str) -> None:
    """Raise the error a job reported (the engine refused its input, or the job crashed), naming its tile."""
    if res.error is not None:
        from . import errors

        kind, text = res.error
        if not kind:  # a crash of the job, not a refusal: say what was kept
            raise RoofDetectorError(
                f"{name} failed: {text}; the finished tiles are kept: "
                "fix or remove the input it names and run the same command again"
            )
        cls = getattr(errors, kind, RoofDetectorError)
        raise (cls if isinstance(cls, type) and issubclass(cls, RoofDetectorError) else RoofDetectorError)(
            f"{name}: {text}; the finished tiles are kept: run the same command again once the input is fixed"
        )


def _model_fingerprint(model_path: Optional[str]) -> Any:
    from .model_io import BUNDLED_MODEL_PATH

    path = str(model_path or BUNDLED_MODEL_PATH)
    try:
        st = os.stat(path)
    except OSError:
        return path
    return [os.path.abspath(path), st.st_size, int(st.st_mtime)]


def _merge(jobs, manifest, output, crs_wkt, layer, overwrite, provenance):
    """The buildings near seams settled for the whole mosaic, then every part into the output."""
    seams = settle_seams(jobs, manifest, crs_wkt)
    return merge_parts(jobs, manifest, output, crs_wkt, layer, overwrite, provenance, [seams] if seams else [])


def _plan(mosaic, options, margin_m: float, block_px: int, group_tiles: int):
    """The jobs, and the options they run with: on the model-pixel lattice and the tiling of one
    run over the whole mosaic (:func:`_tiling`)."""
    tiling = _tiling(mosaic, options.model_path)
    jobs = plan_jobs(mosaic, margin_m, block_px, group_tiles, tiling)
    return jobs, dataclasses.replace(options, grid_lattice=tiling[0] if tiling else None)


def _tiling(mosaic, model_path: Optional[str]):
    """(:func:`.mosaic_tiles.mosaic_lattice` for the model's GSD, tile size, overlap): the model
    pixels and tiles every job lays, as one run over the whole mosaic would; None when the model's
    metadata cannot be read (each job then says why, as a single-raster run would). Not part of the
    run's saved settings: the inputs and the model, which are, fix it."""
    from .model_io import BUNDLED_MODEL_PATH, read_metadata

    try:
        meta = read_metadata(str(model_path or BUNDLED_MODEL_PATH))
        gsd_m, tile_px, overlap_px = float(meta["gsd_m"]), int(meta["tile_size_px"]), int(meta["overlap_px"])
    except (RoofDetectorError, KeyError, TypeError, ValueError):
        return None
    if tile_px <= 0 or not 0 <= overlap_px < tile_px:
        return None  # a job refuses it with the single-raster run's words
    return mosaic_tiling(mosaic, gsd_m, tile_px, overlap_px)


def _mosaic_stretch(mosaic, work_dir: str):
    """One percentile stretch for the whole mosaic (non-uint8 data), so that tiles match; None for uint8."""
    if mosaic.dtype == "Byte":
        return None
    from .raster_source import RasterioSource

    vrt = write_mosaic_vrt(mosaic, os.path.join(work_dir, "mosaic.vrt"))
    with RasterioSource(vrt) as src:
        return src.stretch


__all__ = ["detect_many", "ManyResult", "ManyProgress", "DEFAULT_MARGIN_M", "DEFAULT_BLOCK_PX"]
