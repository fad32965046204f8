"""``python -m devtools bench-many`` runs its three variants and reports consistent figures (tiny size; no timing asserted)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_many_runs_every_variant_on_the_same_work(tmp_path, repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "devtools", "bench-many", "--tile-px", "256", "--repeats", "1"]
        + ["--out", str(tmp_path / "b"), "--json"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = fig["runs"]
    assert set(runs) == {"cli", "w1t2", "w2t1"}
    # 16 tiles of 256 px = a 1024 px mosaic: 5 x 5 model tiles in one run; auto blocks of 2 x 2 tiles
    assert fig["plan"]["model_tiles_cli"] == 25 and fig["plan"]["group_tiles"] == 2
    # the jobs' windows grown to whole tiles of the mosaic's tiling (their own tiling: 4 x 9 and 16 x 4)
    assert fig["plan"]["model_tiles"] == 49 and fig["plan"]["model_tiles_k1"] == 144
    counts = {v: int(r["summary"].split()[0]) for v, r in runs.items()}
    assert len(set(counts.values())) == 1 and counts["cli"] > 50  # the same buildings by every path
    for v in ("w1t2", "w2t1"):
        assert runs[v]["worker_peak_mb"] > 100 and runs[v]["median_cpu_s"] > 0
        # the medians shown are rounded to 10 ms; the overhead is of the medians before that
        ratio = runs[v]["overhead_wall"] + 1
        rounding = 0.005 * ratio * (1 / runs[v]["median_wall_s"] + 1 / runs["cli"]["median_wall_s"])
        assert ratio == pytest.approx(runs[v]["median_wall_s"] / runs["cli"]["median_wall_s"], abs=rounding + 1e-4)
        # one repeat: the run over the detect run of its round is the same ratio
        assert runs[v]["overhead_wall_paired"] == [pytest.approx(runs[v]["overhead_wall"], abs=2e-4)]
        assert runs[v]["overhead_wall_paired_median"] == runs[v]["overhead_wall_paired"][0]
    # the single local worker runs in the client's process (its memory is the client's), two are processes
    assert runs["w1t2"]["worker_in_client"] and not runs["w2t1"]["worker_in_client"]
    assert runs["w1t2"]["worker_peak_mb"] == runs["w1t2"]["client_peak_mb"]
    region = fig["region"]
    assert region["jobs"] == 625 and region["model_tiles"] > region["model_tiles_one_run"] > 2.2e6
    assert region["core_hours"] > 0 and region["wall_h"]["10"] == pytest.approx(region["core_hours"] / 20, rel=0.02)
