"""A detection beside busy programs (or busy threads of this process), against the same on a quiet machine.

    PYTHONPATH=. python scripts/busy_machine_detect.py [--busy N] [--in-process] [--size 4096]

Generates the bench's orthophoto (``devtools.synthetic``), runs one warm-up detection, one
on the quiet machine, then starts N busy processes (``while True: pass``; with
``--in-process``, N numpy threads of this process, as another QGIS task's would be) and runs
it again. Prints both wall times, the network's wait for the outline queue and the lanes'
rescues (``core/background_lane.py``). Session 12, 2 cores, 4096 px, N = 2: release 0.2.0's
helper threads 2.8 s quiet / 358 s busy; this code 2.8 / 5.8 s (in-process 5.6 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    parser.add_argument("--in-process", action="store_true", help="busy threads of this process instead")
    parser.add_argument("--size", type=int, default=4096, help="raster size in px (default 4096)")
    args = parser.parse_args()

    import numpy as np

    from devtools.synthetic import write_orthophoto
    from roof_detector.core.model_io import load_model
    from roof_detector.core.pipeline import DetectOptions, detect_buildings

    model = load_model(None, "cpu")
    with tempfile.TemporaryDirectory(prefix="roofdet-busy-") as tmp:
        raster = os.path.join(tmp, "ortho.tif")
        write_orthophoto(raster, args.size, model.gsd_m)

        def run():
            t0 = time.perf_counter()
            res = detect_buildings(raster, DetectOptions(device="cpu"), model=model)
            return time.perf_counter() - t0, res.stats["timings_s"]

        run()  # warm-up
        quiet_s, _ = run()
        stop = threading.Event()
        procs, threads = [], []
        if args.in_process:

            def spin():
                a = np.random.default_rng(0).random((600, 600))
                while not stop.is_set():
                    a @ a  # numpy releases the GIL

            threads = [threading.Thread(target=spin) for _ in range(args.busy)]
            for t in threads:
                t.start()
        else:
            procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            time.sleep(0.5)
            busy_s, timings = run()
        finally:
            stop.set()
            for t in threads:
                t.join()
            for p in procs:
                p.kill()
                p.wait()
    rescues = {k: round(v, 2) for k, v in timings.items() if "rescued" in k}
    where = "threads of this process" if args.in_process else "processes"
    print(
        f"{args.size} px: quiet {quiet_s:.2f} s; beside {args.busy} busy {where} {busy_s:.2f} s "
        f"(network waiting for the outline queue {timings.get('queue_wait', 0):.2f} s; rescues {rescues or 'none'})"
    )


if __name__ == "__main__":
    main()
