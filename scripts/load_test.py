"""Bounded load test of the REST service: many concurrent clients against one local server.

Starts ``python -m roof_detector serve`` on a free loopback port (127.0.0.1
only), then CLIENTS threads each submit JOBS_PER_CLIENT small generated
rasters, poll their status until done (honouring 429 + Retry-After) and
download the GeoJSON. Every result is checked against the engine run
in-process on the same raster (same buildings, same total area). A fixed
number of requests and an overall deadline: it always stops by itself.

Reports jobs/min, p50/p95/max latency of the status endpoint while inference
runs (all status calls of the clients, those answered "running", a separate
probe process, and the server's own handling time from its request log), the
server's peak memory (VmHWM), 429 answers, and whether every job was right
(each building's area as stored, against the engine in-process); the last
line is JSON. Exit status 0 only when every job was right.

    python scripts/load_test.py                 # 50 clients x 2 jobs, the one-layer test model
    python scripts/load_test.py --model PATH    # another model (e.g. the bundled one)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(path: Path):
    boundary = uuid.uuid4().hex
    body = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="raster"; filename="{path.name}"\r\n\r\n').encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _call(url, method="GET", body=None, ctype=None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _probe(base: str, ids, out, stop) -> None:
    """A separate process polling one running job's status every 100 ms: the latency a lone client sees
    while the 50 others load the server (free of the load generator's own thread contention)."""
    job_id = ids.get()
    samples = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            _call(f"{base}/v1/detections/{job_id}", timeout=30)
            samples.append((time.perf_counter() - t0) * 1000)
        except OSError:
            pass
        time.sleep(0.1)
    out.put(samples)


def _server_status_ms(log_path: Path):
    """Server-side handling time of the status calls, from the request log lines."""
    import re

    pat = re.compile(r"GET /v1/detections/[0-9a-f]{32} 200 (\d+) ms")
    return [float(m.group(1)) for m in pat.finditer(log_path.read_text())]


def _pct(values, q):
    if len(values) < 2:
        return float("nan")
    return round(statistics.quantiles(values, n=100)[q - 1], 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--jobs-per-client", type=int, default=2)
    p.add_argument("--rasters", type=int, default=10, help="distinct generated rasters (reused round-robin)")
    p.add_argument("--size", type=int, default=256, help="raster side in pixels (0.5 m pixels)")
    p.add_argument("--model", help="model file (default: the one-layer test model, generated)")
    p.add_argument("--device", default="cpu", help="server --device, and the reference runs' (default cpu)")
    p.add_argument("--queue", type=int, default=16, help="server --workers-queue")
    p.add_argument("--poll-s", type=float, default=0.25, help="pause between a client's status calls")
    p.add_argument("--deadline-s", type=float, default=900, help="stop everything after this long")
    args = p.parse_args(argv)

    from roof_detector.core.pipeline import DetectOptions, detect_buildings
    from roof_detector.core.precision import rounded
    from devtools.synthetic import write_orthophoto
    from devtools.test_model import make_test_model

    work = Path(tempfile.mkdtemp(prefix="roof_detector_load_"))
    model = args.model or make_test_model(str(work / "test_model.pt"))
    rasters, expected = [], []
    for i in range(args.rasters):
        path = work / f"r{i}.tif"
        write_orthophoto(str(path), args.size, gsd_m=0.5, seed=i)
        ref = detect_buildings(str(path), DetectOptions(model_path=model, device=args.device))
        rasters.append(path)
        # each building's area as every output stores it (rounded once, by core.precision)
        expected.append(sorted(float(rounded("area_m2", b.area_m2)) for b in ref.buildings))

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roof_detector",
            "serve",
            "--port",
            str(port),
            "--model",
            model,
            "--device",
            args.device,
            "--data-dir",
            str(work / "data"),
            "--workers-queue",
            str(args.queue),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _call(base + "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not start; see", work / "server.log", file=sys.stderr)
                return 1
            time.sleep(0.2)

        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        probe_ids, probe_out, probe_stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        probe = ctx.Process(target=_probe, args=(base, probe_ids, probe_out, probe_stop), daemon=True)
        probe.start()
        stop_at = time.monotonic() + args.deadline_s
        lock = threading.Lock()
        status_ms, running_ms, busy_answers, results, errors = [], [], [0], [], []

        def client(k: int) -> None:
            for j in range(args.jobs_per_client):
                idx = (k * args.jobs_per_client + j) % len(rasters)
                body, ctype = _multipart(rasters[idx])
                while time.monotonic() < stop_at:
                    status, headers, data = _call(base + "/v1/detections", "POST", body, ctype)
                    if status != 429:
                        break
                    with lock:
                        busy_answers[0] += 1
                    time.sleep(float(headers.get("retry-after") or headers.get("Retry-After") or 1))
                if status != 202:
                    errors.append(f"submit {status}: {data[:200]!r}")
                    return
                job_id = json.loads(data)["id"]
                if k == 0 and j == 0:
                    probe_ids.put(job_id)
                while time.monotonic() < stop_at:
                    t0 = time.perf_counter()
                    status, _, data = _call(f"{base}/v1/detections/{job_id}")
                    ms = (time.perf_counter() - t0) * 1000
                    job = json.loads(data)
                    with lock:
                        status_ms.append(ms)
                        if job["state"] == "running":  # answered while this very job was being inferred
                            running_ms.append(ms)
                    if job["state"] in ("done", "failed", "cancelled"):
                        break
                    time.sleep(args.poll_s)
                if job["state"] != "done":
                    errors.append(f"job {job_id}: {job['state']} {job.get('error')}")
                    continue
                status, _, data = _call(f"{base}/v1/detections/{job_id}/buildings?format=geojson")
                fc = json.loads(data)
                areas = sorted(f["properties"]["area_m2"] for f in fc["features"])
                want = expected[idx]
                ok = len(areas) == len(want) and all(abs(a - b) <= 1e-9 for a, b in zip(areas, want))
                with lock:
                    results.append(ok)
                    if not ok:
                        errors.append(
                            f"job {job_id} on {rasters[idx].name}: {len(areas)} buildings, {sum(areas):.2f} m2; "
                            f"the engine in-process: {len(want)}, {sum(want):.2f} m2"
                        )

        t_start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, stop_at - time.monotonic()) + 5)
        wall_s = time.perf_counter() - t_start
        probe_stop.set()
        probe_ms = probe_out.get(timeout=60)
        probe.join(10)
        peak_mb = _peak_rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    total = args.clients * args.jobs_per_client
    server_ms = _server_status_ms(work / "server.log")
    figures = {
        "clients": args.clients,
        "jobs": total,
        "jobs_done_right": sum(results),
        "jobs_wrong": len(results) - sum(results),
        "errors": len(errors),
        "wall_s": round(wall_s, 1),
        "jobs_per_min": round(len(results) / wall_s * 60, 1),
        "status_calls": len(status_ms),
        "status_p50_ms": _pct(status_ms, 50),
        "status_p95_ms": _pct(status_ms, 95),
        "status_max_ms": round(max(status_ms), 1) if status_ms else None,
        "status_running_calls": len(running_ms),
        "status_running_p50_ms": _pct(running_ms, 50),
        "status_running_p95_ms": _pct(running_ms, 95),
        "probe_calls": len(probe_ms),
        "probe_p50_ms": _pct(probe_ms, 50),
        "probe_p95_ms": _pct(probe_ms, 95),
        "server_side_p50_ms": _pct(server_ms, 50),
        "server_side_p95_ms": _pct(server_ms, 95),
        "answers_429": busy_answers[0],
        "server_peak_rss_mb": round(peak_mb, 1),
        "raster_px": args.size,
        "model": os.path.basename(model),
        "device": args.device,
    }
    print(
        f"{figures['jobs_done_right']}/{total} jobs right ({figures['jobs_wrong']} wrong, {len(errors)} errors) "
        f"from {args.clients} clients in {wall_s:.1f} s: {figures['jobs_per_min']} jobs/min"
    )
    print(
        f"status endpoint as the {args.clients} clients saw it: p50 {figures['status_p50_ms']} ms, "
        f"p95 {figures['status_p95_ms']} ms, max {figures['status_max_ms']} ms over {len(status_ms)} calls; "
        f"{busy_answers[0]} answers 429"
    )
    print(
        f"  answers saying 'running' (inference of that job under way): p50 {figures['status_running_p50_ms']} ms, "
        f"p95 {figures['status_running_p95_ms']} ms over {len(running_ms)} calls"
    )
    print(
        f"  a lone probe process: p50 {figures['probe_p50_ms']} ms, p95 {figures['probe_p95_ms']} ms "
        f"({len(probe_ms)} calls); server-side handling: p50 {figures['server_side_p50_ms']} ms, "
        f"p95 {figures['server_side_p95_ms']} ms"
    )
    print(f"server peak memory (VmHWM): {peak_mb:.0f} MB")
    for e in errors[:5]:
        print("error:", e)
    print(json.dumps(figures))
    return 0 if figures["jobs_done_right"] == total else 1


if __name__ == "__main__":
    sys.exit(main())
