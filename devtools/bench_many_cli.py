"""``python -m devtools bench-many``: the distributed path against one process, at equal core count.

16 generated tiles (4 x 4, ``--tile-px`` a side at the model's 0.3 m, cut
from one raster), three runs of the same work on the same cores:

* ``cli``: ``python -m roof_detector detect`` on the tiles' mosaic VRT;
* ``w1t2``: ``detect-many`` on the tiles, 1 worker x ``--cores`` threads (the
  single local worker runs as threads of the client's process);
* ``w2t1``: ``detect-many``, ``--cores`` workers x 1 thread (worker processes).

Each run is its own process, timed end to end (Python start, cluster start,
merge included), repeated ``--repeats`` times in turn (cli, w1t2, w2t1,
then w2t1, w1t2, cli, ...) so that a drift of the machine hits all three alike. Reported per
run: wall time (median), tiles/s, overhead over ``cli`` (of the medians, and
each run over the ``cli`` run of its round, whose median is the figure to
quote: this VM's speed drifts between rounds; rounds alternate the order,
A B C then C B A), CPU seconds
(getrusage of the run and every process it started and reaped), peak RSS of
the client and of each worker process (psutil, every 0.2 s; a worker running
in the client's process is the client's peak), buildings; and the
model tiles each plan runs (tiling maths). From the figures, the cost of
10,000 km² at 0.25 m (1 km tiles). Publish only figures from a quiet machine.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TILES = 16
#: A child process larger than this is a worker (it holds the engine: ~500 MB and more).
WORKER_MIN_MB = 100


def add_parser(sub) -> None:
    p = sub.add_parser("bench-many", help="detect-many vs detect on the same cores", description=__doc__)
    p.add_argument("--tile-px", type=int, default=3072, help="tile size in px at 0.3 m (default 3072, 922 m)")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant (median reported; default 3)")
    p.add_argument("--cores", type=int, default=2, help="cores every variant uses (default 2)")
    p.add_argument("--out", default="out/bench_many", help="work folder (tiles are kept for the next run)")
    p.add_argument("--variants", default="cli,w1t2,w2t1", help="comma-separated subset of cli,w1t2,w2t1")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def make_tiles(folder: Path, tile_px: int, grid: int = 4) -> Path:
    """16 tiles cut from one generated raster, and their mosaic VRT (kept between runs)."""
    from osgeo import gdal

    from .synthetic import write_orthophoto

    gdal.UseExceptions()
    folder = folder / f"{tile_px}px"
    tiles = folder / "tiles"
    if (folder / "mosaic.vrt").exists():
        return folder
    tiles.mkdir(parents=True, exist_ok=True)
    whole = folder / "whole.tif"
    write_orthophoto(str(whole), tile_px * grid, gsd_m=0.3)
    for i in range(grid):
        for j in range(grid):
            gdal.Translate(
                str(tiles / f"t_{i}_{j}.tif"),
                str(whole),
                srcWin=[j * tile_px, i * tile_px, tile_px, tile_px],
                creationOptions=["TILED=YES", "COMPRESS=DEFLATE"],
            )
    whole.unlink()
    gdal.BuildVRT(str(folder / "mosaic.vrt"), sorted(str(p) for p in tiles.glob("*.tif")))
    return folder


def commands(folder: Path, cores: int):
    py = [sys.executable, "-m", "roof_detector"]
    many = py + ["detect-many", str(folder / "tiles"), "--overwrite", "--restart"]
    return {
        # The CLI's model threads are the process's cores: pinned to `cores` CPUs, like the workers.
        "cli": py + ["detect", str(folder / "mosaic.vrt"), "-o", str(folder / "cli.gpkg"), "--overwrite"],
        "w1t2": many + ["-o", str(folder / "w1t2.gpkg"), "--workers", "1", "--threads-per-worker", str(cores)],
        "w2t1": many + ["-o", str(folder / "w2t1.gpkg"), "--workers", str(cores), "--threads-per-worker", "1"],
    }


def run_once(cmd, cores: int) -> dict:
    """Wall, CPU seconds and peak RSS per process of one run of ``cmd``."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cpus = sorted(os.sched_getaffinity(0))[:cores] if hasattr(os, "sched_getaffinity") else None
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    peaks: dict = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                root = psutil.Process(proc.pid)
                for p in [root] + root.children(recursive=True):
                    try:
                        peaks[p.pid] = (p.pid == proc.pid, max(peaks.get(p.pid, (0, 0))[1], p.memory_info().rss))
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        from roof_detector.core.errors import RoofDetectorError

        raise RoofDetectorError(f"{' '.join(cmd[2:4])} failed ({proc.returncode}): {err.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    client = max(v[1] for v in peaks.values() if v[0]) / 2**20
    # Worker processes: the children that load the engine (the resource tracker is small). None: the
    # run had no worker process (`detect`, or one local worker running on the client's threads).
    children = sorted((v[1] / 2**20 for v in peaks.values() if not v[0]), reverse=True)
    workers = [mb for mb in children if mb >= WORKER_MIN_MB][:4]
    return {"wall_s": wall, "cpu_s": cpu, "client_mb": client, "children_mb": workers, "summary": out.strip()}


def plan_figures(folder: Path, workers: int) -> dict:
    """Model tiles of detect-many's plan (the group it picks, and one job per tile) and of one run on the mosaic."""
    from roof_detector.core.detect_many import DEFAULT_BLOCK_PX, DEFAULT_MARGIN_M
    from roof_detector.core.mosaic_plan import auto_group
    from roof_detector.core.mosaic_plan import expand_inputs, plan_jobs, read_mosaic
    from roof_detector.core.mosaic_tiles import model_tile_count, planned_tiling

    mosaic = read_mosaic(expand_inputs([str(folder / "tiles")]))
    k = auto_group(mosaic, DEFAULT_MARGIN_M, DEFAULT_BLOCK_PX, workers)
    on = planned_tiling(mosaic)  # as detect-many plans: windows grown to whole tiles of the mosaic's
    grouped, whole = model_tile_count(plan_jobs(mosaic, DEFAULT_MARGIN_M, DEFAULT_BLOCK_PX, k, on), mosaic, tiling=on)
    single, _ = model_tile_count(plan_jobs(mosaic, DEFAULT_MARGIN_M, DEFAULT_BLOCK_PX, 1, on), mosaic, tiling=on)
    area = (mosaic.bounds[2] - mosaic.bounds[0]) * (mosaic.bounds[3] - mosaic.bounds[1]) / 1e6
    return {"group_tiles": k, "model_tiles": grouped, "model_tiles_k1": single, "model_tiles_cli": whole, "km2": area}


def grid_mosaic(n: int, tile_m: float, res_m: float):
    """Headers of n x n abutting tiles of ``tile_m`` metres at ``res_m`` in UTM 31N (planning needs no pixels)."""
    from roof_detector.core.mosaic_plan import MosaicInfo, RasterInfo
    from roof_detector.core.osgeo_exc import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    px = round(tile_m / res_m)
    x0, y1 = 500000.0, 5000000.0  # on the zone's central meridian: a metre of easting is a metre
    rasters = [
        RasterInfo(
            f"t{i}_{j}",
            (x0 + j * tile_m, y1 - (i + 1) * tile_m, x0 + (j + 1) * tile_m, y1 - i * tile_m),
            (res_m, res_m),
            px,
            px,
        )
        for i in range(n)
        for j in range(n)
    ]
    bounds = (x0, y1 - n * tile_m, x0 + n * tile_m, y1)
    return MosaicInfo(rasters, srs.ExportToWkt(), (res_m, res_m), bounds, 3, "Byte")


def region_plan() -> dict:
    """Model tiles of 10,000 km² of 1 km tiles at 0.25 m: one run, and detect-many's blocks of 4 x 4."""
    from roof_detector.core.detect_many import DEFAULT_MARGIN_M
    from roof_detector.core.mosaic_plan import plan_jobs
    from roof_detector.core.mosaic_tiles import model_tile_count, planned_tiling

    mosaic = grid_mosaic(100, 1000.0, 0.25)
    on = planned_tiling(mosaic)
    jobs = plan_jobs(mosaic, DEFAULT_MARGIN_M, 10000, 4, on)
    tiles, whole = model_tile_count(jobs, mosaic, tiling=on)
    return {"jobs": len(jobs), "model_tiles": tiles, "model_tiles_one_run": whole}


def run(args) -> int:
    from roof_detector.core.errors import RoofDetectorError

    if args.tile_px < 256 or args.repeats < 1 or args.cores < 1:
        raise RoofDetectorError("--tile-px must be at least 256, --repeats and --cores at least 1")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    folder = make_tiles(REPO / args.out, args.tile_px)
    for tif in (folder / "tiles").glob("*.tif"):  # the page cache holds them for every variant alike
        tif.read_bytes()
    cmds = commands(folder, args.cores)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in cmds]
    if unknown:
        raise RoofDetectorError(f"unknown variant(s) {', '.join(unknown)}; use cli, w1t2, w2t1")
    plan = plan_figures(folder, args.cores)
    say(
        f"16 tiles of {args.tile_px} px at 0.3 m ({plan['km2']:.3f} km²), {args.cores} cores per variant; "
        f"model tiles: detect {plan['model_tiles_cli']}, detect-many {plan['model_tiles']} (blocks of "
        f"{plan['group_tiles']}x{plan['group_tiles']} tiles; one job per tile would run {plan['model_tiles_k1']})"
    )
    runs: dict = {v: [] for v in names}
    for r in range(args.repeats):
        # A, B, C then C, B, A: a drift of the machine's speed during a round weighs on every variant alike.
        for v in names if r % 2 == 0 else names[::-1]:
            res = run_once(cmds[v], args.cores)
            runs[v].append(res)
            workers = (
                f"workers {[round(m) for m in res['children_mb']]} MB" if res["children_mb"] else "no worker process"
            )
            say(
                f"{v} #{r + 1}: {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} CPU s, client {res['client_mb']:.0f} MB, "
                f"{workers} | {res['summary'].splitlines()[-1]}"
            )
    figures = {"tile_px": args.tile_px, "cores": args.cores, "repeats": args.repeats, "plan": plan}
    figures["runs"] = {v: summarize(v, rs, plan) for v, rs in runs.items()}
    _add_overheads(figures, runs, say)
    figures["region"] = region_estimate(figures, plan, args.cores)
    reg = figures["region"]
    if reg:
        say(
            f"10,000 km² at 0.25 m (1 km tiles, blocks of 4x4, {reg['model_tiles']} model tiles, "
            f"{reg['core_ms_per_tile']} core-ms per tile as {reg['rate_from']} here): {reg['core_hours']} core-hours; "
            + ", ".join(f"{n} workers of {args.cores} cores {h} h" for n, h in reg["wall_h"].items())
        )
    figures["bench_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(figures))
    return 0


def _add_overheads(figures: dict, runs: dict, say) -> None:
    """Each detect-many variant's overhead over ``cli``: of the medians, and per round (paired)."""
    base = figures["runs"].get("cli")
    for v, f in figures["runs"].items():
        if base and v != "cli":
            # of the medians before they are rounded to 10 ms: a sub-second `detect` (the fp32 graph
            # loaded without torch) made the rounding move the ratio by 0.01-0.03
            f["overhead_wall"] = round(_median(runs[v], "wall_s") / _median(runs["cli"], "wall_s") - 1, 4)
            f["overhead_cpu"] = round(_median(runs[v], "cpu_s") / _median(runs["cli"], "cpu_s") - 1, 4)
            # Each run over the `detect` run of its own round (minutes apart at most): this VM's speed
            # drifts by up to 30 % between rounds, which the ratio of medians would mix in.
            paired = [a["wall_s"] / c["wall_s"] - 1 for a, c in zip(runs[v], runs["cli"])]
            f["overhead_wall_paired"] = [round(x, 4) for x in paired]
            f["overhead_wall_paired_median"] = round(statistics.median(paired), 4)
            where = " (in the client process)" if f["worker_in_client"] else ""
            say(
                f"{v}: {f['median_wall_s']} s ({f['overhead_wall']:+.1%} wall, {f['overhead_cpu']:+.1%} CPU s over "
                f"detect; per round {', '.join(f'{x:+.1%}' for x in paired)}, median "
                f"{f['overhead_wall_paired_median']:+.1%}), {f['tiles_per_s']} tiles/s, "
                f"worker peak {f['worker_peak_mb']} MB{where}"
            )
        elif v == "cli":
            say(f"cli: {f['median_wall_s']} s, {f['tiles_per_s']} tiles/s, peak {f['client_peak_mb']} MB")


def _median(rs: list, key: str) -> float:
    return statistics.median(x[key] for x in rs)


def summarize(variant: str, rs: list, plan: dict) -> dict:
    """Medians and peaks of one variant's runs."""
    wall = statistics.median(x["wall_s"] for x in rs)
    # No worker process: detect-many's single local worker ran on the client's threads, so its
    # memory is the client's (the client's own share is the few hundred MB of `detect`'s start).
    in_client = variant != "cli" and not any(x["children_mb"] for x in rs)
    return {
        "median_wall_s": round(wall, 2),
        "walls_s": [round(x["wall_s"], 2) for x in rs],
        "tiles_per_s": round(TILES / wall, 3),
        "model_tiles_per_s": round((plan["model_tiles_cli"] if variant == "cli" else plan["model_tiles"]) / wall, 1),
        "median_cpu_s": round(statistics.median(x["cpu_s"] for x in rs), 2),
        "client_peak_mb": round(max(x["client_mb"] for x in rs)),
        "worker_peak_mb": round(max(max(x["children_mb"] or [x["client_mb"] if in_client else 0]) for x in rs)),
        "worker_in_client": in_client,
        "summary": rs[-1]["summary"].splitlines()[-1],
    }


def region_estimate(figures: dict, plan: dict, cores: int) -> dict:
    """Core-hours and wall time of 10,000 km² at 0.25 m, at the rate of the best detect-many run here."""
    many = {v: f for v, f in figures["runs"].items() if v != "cli"}
    if not many:
        return {}
    best = min(many, key=lambda v: many[v]["median_wall_s"])
    f = many[best]
    # Cores x wall per model tile of the whole run (start-up and merge included: an upper bound).
    core_s_per_tile = cores * f["median_wall_s"] / plan["model_tiles"]
    region = region_plan()
    core_h = core_s_per_tile * region["model_tiles"] / 3600
    return {
        "rate_from": best,
        "core_ms_per_tile": round(1000 * core_s_per_tile, 1),
        "model_tiles": region["model_tiles"],
        "model_tiles_one_run": region["model_tiles_one_run"],
        "jobs": region["jobs"],
        "core_hours": round(core_h, 1),
        "wall_h": {n: round(core_h / (n * cores), 2) for n in (1, 10, 100) if math.isfinite(core_h)},
    }
