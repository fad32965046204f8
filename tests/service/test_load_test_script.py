"""`make loadtest`'s script runs standalone and reports the issue's figures (a short run: 3 clients)."""

import json
import os
import subprocess
import sys

import pytest

from .server_helpers import REPO


@pytest.mark.slow
def test_load_test_script_runs_and_checks_every_job(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/load_test.py",
            "--clients",
            "3",
            "--jobs-per-client",
            "1",
            "--rasters",
            "2",
            "--size",
            "128",
            "--deadline-s",
            "240",
        ],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["jobs"] == figures["jobs_done_right"] == 3 and figures["errors"] == 0
    assert figures["jobs_per_min"] > 0 and figures["server_peak_rss_mb"] > 50
    assert figures["status_calls"] >= 3 and figures["status_p95_ms"] >= figures["status_p50_ms"] > 0
    assert "jobs/min" in proc.stdout and "p95" in proc.stdout and "peak memory" in proc.stdout
