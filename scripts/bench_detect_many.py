"""Figures of ``detect-many``: 16 generated tiles, 1 and 2 Dask workers vs ``detect`` on their mosaic.

    python scripts/bench_detect_many.py [--tile-px 2048] [--repeats 3] [--out out/bench_many]

Each variant runs as its own process (the CLI as a user runs it), timed end
to end (cluster start and merge included), in wall time and in CPU seconds of
the run and all its processes (getrusage of the reaped children). Memory: the peak RSS of each
process of the run (client, each worker), sampled every 0.2 s. Prints one
line per run and a JSON summary of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_tiles(folder: Path, tile_px: int, grid: int = 4) -> Path:
    from osgeo import gdal

    from devtools.synthetic import write_orthophoto

    gdal.UseExceptions()
    folder.mkdir(parents=True, exist_ok=True)
    whole = folder / "whole.tif"
    if not whole.exists():
        write_orthophoto(str(whole), tile_px * grid, gsd_m=0.3)
    tiles = folder / "tiles"
    if not tiles.exists():
        tiles.mkdir()
        for i in range(grid):
            for j in range(grid):
                gdal.Translate(
                    str(tiles / f"t_{i}_{j}.tif"),
                    str(whole),
                    srcWin=[j * tile_px, i * tile_px, tile_px, tile_px],
                    creationOptions=["TILED=YES", "COMPRESS=DEFLATE"],
                )
        gdal.BuildVRT(str(folder / "mosaic.vrt"), sorted(str(p) for p in tiles.glob("*.tif")))
    return folder


def run(cmd, label):
    import psutil

    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peaks = {}
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        name = "client" if p.pid == proc.pid else " ".join(p.cmdline()[-3:])[-40:]
                        peaks[p.pid] = (name, max(peaks.get(p.pid, ("", 0))[1], p.memory_info().rss))
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the run and every process it started and reaped (its Dask workers): on a
    # machine shared with other jobs this moves far less than the wall time.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode})")
    client = max(v[1] for k, v in peaks.items() if v[0] == "client") / 2**20
    # Workers: the biggest children (the nanny and the resource tracker are small).
    workers = sorted((v[1] / 2**20 for k, v in peaks.items() if v[0] != "client"), reverse=True)
    line = out.strip().splitlines()[-1]
    print(
        f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU, client {client:.0f} MB, children {[round(w) for w in workers[:4]]} MB | {line}",
        flush=True,
    )
    return {"wall_s": wall, "cpu_s": cpu, "client_mb": client, "children_mb": workers[:4], "summary": line}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile-px", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--margin-m", type=float, default=30.0)
    ap.add_argument("--out", default="out/bench_many")
    ap.add_argument("--variants", default="cli,w1,w2")
    a = ap.parse_args()
    folder = make_tiles(REPO / a.out, a.tile_px)
    py = [sys.executable, "-m", "roof_detector"]
    variants = {
        "cli": py + ["detect", str(folder / "mosaic.vrt"), "-o", str(folder / "cli.gpkg"), "--overwrite"],
        "w1": py
        + [
            "detect-many",
            str(folder / "tiles"),
            "-o",
            str(folder / "w1.gpkg"),
            "--overwrite",
            "--workers",
            "1",
            "--restart",
            "--margin-m",
            str(a.margin_m),
        ],
        "w2": py
        + [
            "detect-many",
            str(folder / "tiles"),
            "-o",
            str(folder / "w2.gpkg"),
            "--overwrite",
            "--workers",
            "2",
            "--restart",
            "--margin-m",
            str(a.margin_m),
        ],
        "w1m0": py
        + [
            "detect-many",
            str(folder / "tiles"),
            "-o",
            str(folder / "w1m0.gpkg"),
            "--overwrite",
            "--workers",
            "1",
            "--restart",
            "--margin-m",
            "0",
        ],
    }
    results = {k: [] for k in a.variants.split(",")}
    for r in range(a.repeats):
        for k in results:
            results[k].append(run(variants[k], f"{k} #{r + 1}"))
    summary = {
        k: {
            "median_wall_s": round(statistics.median(x["wall_s"] for x in v), 2),
            "walls_s": [round(x["wall_s"], 2) for x in v],
            "median_cpu_s": round(statistics.median(x["cpu_s"] for x in v), 2),
            "cpus_s": [round(x["cpu_s"], 2) for x in v],
            "tiles_per_s": round(16 / statistics.median(x["wall_s"] for x in v), 3),
            "max_child_mb": round(max(max(x["children_mb"] or [0]) for x in v)),
            "client_mb": round(max(x["client_mb"] for x in v)),
            "summary": v[-1]["summary"],
        }
        for k, v in results.items()
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
