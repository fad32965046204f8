"""``python -m roof_detector detect-many`` as a real subprocess: summary, progress, crash and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.test_model import make_test_model
from tests.cli.terminal import default_sigint
from tests.core.many_fixtures import cut, read_layer, scene

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^(\d+) buildings in (\d+) (?:tiles|blocks|blocks of \d+x\d+ tiles) \(([\d.]+) km², (\d+) already done\), total area ([\d.]+) m2, "
    r"[\d.]+ s -> (.+) \(layer (\w+)\)$"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("many")
    model = make_test_model(str(base / "bright.pt"))
    whole = scene(str(base / "whole.tif"))
    cut(whole, str(base / "tiles"), parts=4)
    return base, model


def _cmd(*args):
    return [sys.executable, "-m", "roof_detector", "detect-many", *map(str, args)]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO))


def _start_one_worker(base, out, model):
    """The CLI on the tiles with one local worker on the CPU, its output pipes open."""
    return subprocess.Popen(
        _cmd(base / "tiles", "-o", out, "--model", model, "--device", "cpu", "--workers", "1"),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )


@pytest.mark.slow
def test_cli_runs_and_resumes_after_a_crash(tmp_path, setup):
    base, model = setup
    ref = tmp_path / "ref.gpkg"
    # One job per tile (not blocks): the crash comes after 3 of 16 jobs.
    args = ["--model", model, "--device", "cpu", "--workers", "1", "--group-tiles", "1"]
    proc = subprocess.run(
        _cmd(base / "tiles", "-o", ref, *args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    m = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert m and m.group(2) == "16" and m.group(4) == "0", proc.stdout
    assert "Dask dashboard: http://" in proc.stderr and "16/16" in proc.stderr and "buildings]" in proc.stderr
    assert not (tmp_path / "ref.gpkg.parts").exists()  # the work folder goes once merged
    reference = read_layer(str(ref))
    assert int(m.group(1)) == len(reference) > 40

    # A real crash: SIGKILL the client once some tiles are in the manifest, then the same command again.
    out = tmp_path / "out.gpkg"
    manifest = Path(f"{out}.parts") / "manifest.jsonl"
    child = subprocess.Popen(
        _cmd(base / "tiles", "-o", out, *args),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 1 + 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)  # the client and its local workers, as a crash or `kill -9` would
    child.wait(timeout=30)
    assert not out.exists()
    finished = len(manifest.read_text().splitlines()) - 1
    assert 3 <= finished < 16

    proc = subprocess.run(
        _cmd(base / "tiles", "-o", out, *args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    m = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert m and int(m.group(4)) >= finished, proc.stdout
    assert "already done (manifest): skipped" in proc.stderr
    got = read_layer(str(out))
    assert [(g.wkb, a) for g, a in got] == [(g.wkb, a) for g, a in reference]  # the same result


@pytest.mark.slow
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, setup):
    base, model = setup
    proc = subprocess.run(
        _cmd(tmp_path / "none_*.tif", "-o", tmp_path / "o.gpkg", "--model", model),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "matches no file" in lines[0] and "Traceback" not in proc.stderr
    listing = tmp_path / "list.txt"
    listing.write_text(json.dumps("not a path") + "\n")
    proc = subprocess.run(
        _cmd(listing, "-o", tmp_path / "o.gpkg", "--model", model),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: Input not found" in proc.stderr


def test_a_work_folder_on_a_read_only_disk_is_refused_in_one_line(tmp_path, setup):
    """Issue 21 sweep rerun: an OSError traceback from creating the manifest (a real read-only tmpfs)."""
    base, model = setup
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        proc = subprocess.run(
            _cmd(base / "tiles", "-o", tmp_path / "o.gpkg", "--model", model, "--work-dir", disk / "work"),
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert f"error: Cannot use the work folder {disk / 'work'} (Read-only file system)" in proc.stderr


@pytest.mark.slow
def test_sigterm_is_reported_as_sigterm(tmp_path, setup):
    """Issue 21 sweep rerun: SIGTERM said "interrupted" and exited 130 (and a worker's heartbeat
    sometimes logged a CommClosedError traceback while the cluster stopped)."""
    base, model = setup
    out = tmp_path / "out.gpkg"
    proc = _start_one_worker(base, out, model)
    t0 = time.monotonic()
    while not Path(f"{out}.parts").exists() and time.monotonic() - t0 < 240 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode(errors="replace")
    assert proc.returncode == 143, err[-1500:]
    assert "error: terminated (SIGTERM);" in err and "Traceback" not in err and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, status, words", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")]
)
def test_a_signal_stops_a_single_workers_job_in_progress_at_once(tmp_path, setup, sig, status, words):
    """One local worker runs its jobs on threads of the CLI's own process: Dask cannot stop a running
    task and closing the cluster waits for it, so the client stops its jobs itself. A model that never
    returns makes a job that would otherwise never end."""
    import psutil

    from devtools.hostile_models import make_endless_torchscript

    base, _ = setup
    model = make_endless_torchscript(str(tmp_path / "endless.pt"))
    out = tmp_path / "out.gpkg"
    proc = _start_one_worker(base, out, model)
    try:
        os.set_blocking(proc.stderr.fileno(), False)
        err, t0 = b"", time.monotonic()
        while b"0/" not in err and proc.poll() is None and time.monotonic() - t0 < 240:
            err += proc.stderr.read() or b""
            time.sleep(0.05)
        assert b"0/" in err, err.decode(errors="replace")[-1500:]  # the bar: jobs submitted
        # The endless model spins in this very process (no worker process): wait for 2 CPU s of it.
        me = psutil.Process(proc.pid)
        assert [c for c in me.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())] == []
        busy = sum(me.cpu_times()[:2])
        while sum(me.cpu_times()[:2]) - busy < 2.0 and time.monotonic() - t0 < 240:
            time.sleep(0.1)
        proc.send_signal(sig)
        t_sig = time.monotonic()
        os.set_blocking(proc.stderr.fileno(), True)
        err += proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode(errors="replace")
    assert proc.returncode == status, text[-1500:]
    assert time.monotonic() - t_sig < 10, f"{time.monotonic() - t_sig:.1f} s to stop"
    assert f"error: {words}; {out} was not written" in text and "Traceback" not in text, text[-1500:]
    assert not out.exists() and Path(f"{out}.parts", "manifest.jsonl").exists()


def test_one_raster_in_blocks_is_summed_up_as_blocks(tmp_path, setup):
    """``--block-px`` splits one raster: the summary says blocks, not tiles (QA, session 9)."""
    base, model = setup
    out = tmp_path / "blocks.gpkg"
    proc = subprocess.run(
        _cmd(base / "whole.tif", "-o", out, "--model", model, "--device", "cpu", "--block-px", 256, "--workers", 1),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    summary = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert summary and " in 4 blocks (" in proc.stdout  # 480 px in blocks of 256
