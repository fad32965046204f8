"""What the outline thread costs the whole detection: the same run with its work removed, in turn.

    PYTHONPATH=. python scripts/outline_thread_cost.py [--size 8192] [--rounds 4]

On the bench's generated raster (``devtools.synthetic.write_orthophoto``), each round
times the network alone over as many tiles as a detection (random input, one total),
the detection with the outline thread's batch handler replaced by one that does
nothing (no stitching, tracing, measuring, regularising, writing: a study, never a
product option), the usual detection, then the network alone again. Prints per round
and the medians: each detection over the mean of the two network totals around it,
and over the network's median batch timed just before the round (the bench's
``pipeline_over_model`` reference). Pairs in one process a minute apart, so the
machine's drift (large on a shared VM) moves both cases alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="raster size in px (default 8192, the bench's)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    from devtools import bench
    from devtools.synthetic import write_orthophoto
    from roof_detector.core import outline_worker
    from roof_detector.core.inference import fitted_batch_size
    from roof_detector.core.model_io import load_model

    model = load_model(None, "auto")
    batch = fitted_batch_size(model)
    forward = bench._forward_timer(model, batch)
    forward(3)
    usual_take = outline_worker.OutlineWorker._take

    def nothing(self, batch_items) -> None:
        pass

    rows = []
    with tempfile.TemporaryDirectory(prefix="roofdet-outline-cost-") as tmp:
        raster = os.path.join(tmp, "ortho.tif")
        write_orthophoto(raster, args.size, model.gsd_m)

        runs = itertools.count()

        def detect(outlines: bool):
            outline_worker.OutlineWorker._take = usual_take if outlines else nothing
            gpkg = os.path.join(tmp, f"out{next(runs)}.gpkg")
            try:
                res, seconds = bench._detect_and_write(raster, gpkg, model, None, "auto", None)
            finally:
                outline_worker.OutlineWorker._take = usual_take
            return res.stats["tiles"], seconds

        tiles, _ = detect(True)  # warm-up, and the tile count
        for _ in range(args.rounds):
            rate = forward(bench.PAIRED_MODEL_BATCHES)
            before = bench._sustained_seconds(model, batch, tiles)
            _, none_s = detect(False)
            _, full_s = detect(True)
            after = bench._sustained_seconds(model, batch, tiles)
            network_s = (before + after) / 2
            row = {
                "network_median_batch_tiles_per_s": round(rate, 1),
                "network_sustained_s": [round(before, 2), round(after, 2)],
                "no_outline_work_s": round(none_s, 2),
                "usual_s": round(full_s, 2),
                "no_outline_work_over_sustained": round(network_s / none_s, 3),
                "usual_over_sustained": round(network_s / full_s, 3),
                "no_outline_work_over_median_batch": round(tiles / none_s / rate, 3),
                "usual_over_median_batch": round(tiles / full_s / rate, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for key in (
        "usual_over_sustained",
        "no_outline_work_over_sustained",
        "usual_over_median_batch",
        "no_outline_work_over_median_batch",
    ):
        print(f"{key}: median {statistics.median(r[key] for r in rows)}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
