"""``serve`` refuses, in one line and before touching anything, a data dir another server holds and a
port it cannot have: a second server on the same data dir used to fail the first one's queued jobs and
delete its uploads in progress before it even tried the port."""

import os
import subprocess
import sys

from .server_helpers import REPO, Server, free_port


def _serve(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "roof_detector", "serve", "--device", "cpu", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_server_on_the_same_data_dir_or_port_is_refused_and_touches_nothing(tmp_path, model_path):
    data = tmp_path / "data"
    first = Server(data, model_path)
    try:
        # an upload in progress and a job waiting, as the first server sees them
        part = data / "uploads" / "in-flight.part"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(b"half an upload")
        before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and p.name != ".server.lock"}

        same_dir = _serve("--port", str(free_port()), "--model", model_path, "--data-dir", str(data))
        assert same_dir.returncode == 2, same_dir.stderr
        lines = same_dir.stderr.strip().splitlines()
        assert lines[-1] == (
            f"error: The data dir {data} is in use by another server (pid {first.proc.pid}); stop it, or "
            "give this one its own --data-dir"
        )
        assert not any("listening" in line or "read back" in line for line in lines), same_dir.stderr

        other = tmp_path / "other"
        same_port = _serve("--port", str(first.port), "--model", model_path, "--data-dir", str(other))
        assert same_port.returncode == 2, same_port.stderr
        assert (
            same_port.stderr.strip()
            .splitlines()[-1]
            .startswith(f"error: Cannot listen on 127.0.0.1:{first.port}: Address already in use")
        )
        assert "listening" not in same_port.stderr  # no false "listening on" line before the failure

        after = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and p.name != ".server.lock"}
        assert after == before  # nothing failed, nothing deleted
        assert first.json("GET", "/health")[0] == 200
    finally:
        first.stop()
    # the lock goes with the process: the next server on the data dir starts
    again = Server(data, model_path)
    assert again.json("GET", "/health")[0] == 200
    again.stop()


def test_a_port_out_of_range_is_one_usage_line(tmp_path):
    proc = _serve("--port", "99999", "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("argument --port: a TCP port is from 0 to 65535, got 99999")
    assert not (tmp_path / "d").exists()
