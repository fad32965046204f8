"""The network alone on the CPU: one ONNX Runtime run on every core against two single-threaded runs in flight.

    python scripts/cpu_streams.py [--rounds 5] [--batches 30] [--model models/roof_unet.pt]

Rounds alternate the two ways (A B, then B A), because this kind of machine's speed drifts
by tens of per cent over minutes; prints tiles/s and the cores used per run, then the medians
and their ratio. The pipeline runs the way ``onnx_twin.cpu_streams`` chooses (two in flight
by default, ``ROOF_DETECTOR_CPU_STREAMS=1`` for one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roof_detector.core import onnx_twin  # noqa: E402
from roof_detector.core.model_io import BUNDLED_MODEL_PATH, read_metadata  # noqa: E402


def rate(module: onnx_twin.OnnxModule, x: np.ndarray, batches: int):
    """(tiles/s, cores used) of ``batches`` passes with ``module.streams`` runs in flight."""
    per = max(1, batches // module.streams)

    def work(n: int) -> None:
        for _ in range(n):
            module.run_numpy(x)

    work(1)
    threads = [threading.Thread(target=work, args=(per,)) for _ in range(module.streams - 1)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    work(per)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return len(x) * per * module.streams / wall, (time.process_time() - c0) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(BUNDLED_MODEL_PATH))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    twin, why = onnx_twin.find_twin(args.model, read_metadata(args.model))
    if twin is None:
        sys.exit(f"no usable ONNX twin: {why}")
    cores = onnx_twin.default_threads()
    tile = int(read_metadata(args.model)["tile_size_px"])
    x = np.random.default_rng(0).random((args.batch_size, 3, tile, tile), dtype=np.float32)
    modules = {}
    for streams in ("1", "2"):
        onnx_twin.CPU_STREAMS = streams
        modules[streams] = onnx_twin.OnnxModule(twin, threads=cores)
    names = {"1": f"one run x {cores} threads", "2": f"two runs x {max(1, cores // 2)} thread(s)"}
    got = {k: [] for k in modules}
    for r in range(args.rounds):
        for k in ("1", "2") if r % 2 == 0 else ("2", "1"):
            tiles_s, used = rate(modules[k], x, args.batches)
            got[k].append(tiles_s)
            print(f"round {r}: {names[k]}: {tiles_s:.1f} tiles/s, {used:.2f} cores", flush=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    print(
        f"median: {names['1']} {med['1']:.1f} tiles/s, {names['2']} {med['2']:.1f} tiles/s, ratio {med['2'] / med['1']:.2f}"
    )


if __name__ == "__main__":
    main()
