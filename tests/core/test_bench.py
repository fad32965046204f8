"""The benchmark's figures are produced and consistent (tiny sizes; no timing asserted)."""

import json
import subprocess
import sys

import pytest

from devtools import bench
from devtools.synthetic import building_rectangles, write_orthophoto
from devtools.test_model import make_test_model


def test_synthetic_orthophoto_draws_its_buildings(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    path = str(tmp_path / "o.tif")
    n = write_orthophoto(path, 700, 0.3)
    assert n == len(building_rectangles(700)) > 20
    with rasterio.open(path) as ds:
        img = ds.read(1)
    r, c, h, w = building_rectangles(700)[3]
    assert (img[r : r + h, c : c + w] == 215).all()
    assert img.mean() < 120


def test_cpu_peak_is_positive():
    peak = bench.cpu_peak_gflops()
    assert peak["flop_per_cycle"] in (16, 32, 64) and peak["peak_gflops"] >= 0


def test_matmul_rate_is_measured():
    # 128^2 matmul: tiny, but a real timing; a broken formula gives 0 or inf.
    rate = bench.matmul_gflops(n=128, repeats=3)
    assert 0 < rate < 1e5


@pytest.mark.slow
def test_bench_command_prints_the_figures(tmp_path, repo_root):
    # The stated work per tile only feeds the GFLOP/s arithmetic; large enough that the rounded figures
    # stay above 0 on a loaded machine (0.001 gave 0.0 GFLOP/s at < 50 tiles/s).
    arch = {"name": "brightness_test", "params": {"gain": 40.0}, "gflop_per_tile": 2.0}
    model = make_test_model(
        str(tmp_path / "m.pt"), gsd_m=0.5, tile_size_px=64, overlap_px=8, extra_metadata={"architecture": arch}
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools",
            "bench",
            "--model",
            model,
            "--device",
            "cpu",
            "--size",
            "256",
            "--repeats",
            "1",
            "--no-finetune",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=str(repo_root),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "model_tiles_per_s",
        "torchscript_tiles_per_s",
        "pipeline_tiles_per_s",
        "km2_per_min",
        "pipeline_over_model",
        "peak_rss_mb",
    ):
        assert fig[key] > 0, key
    run = fig["pipeline"]["256"]
    # 256 px at the model GSD with 64 px tiles overlapping by 8: 5 x 5 tiles; every drawn building found.
    assert run["tiles"] == 25 and run["buildings_found"] == run["buildings_drawn"]
    # rel for the tiles/s rounded to 0.01, abs for the ratio rounded to 0.001
    assert run["pipeline_over_model_upfront"] == pytest.approx(
        run["pipeline_tiles_per_s"] / fig["model_tiles_per_s"], rel=0.01, abs=6e-4
    )
    # the reported ratio: the median of each run against the network timed just before it
    assert len(run["pipeline_over_model_paired"]) == 1 == len(run["model_tiles_per_s_paired"])
    assert fig["pipeline_over_model"] == run["pipeline_over_model"] == run["pipeline_over_model_paired"][0]
    assert run["pipeline_over_model"] == pytest.approx(
        run["pipeline_tiles_per_s"] / run["model_tiles_per_s_paired"][0], rel=0.01, abs=6e-4
    )
    # against the network alone over the same tiles (one total), and the run without regularisation;
    # tolerances from the rounding: sustained and plain seconds to 0.001, pipeline_s to 0.01
    sustained, plain, pipe = run["network_sustained_s"][0], run["pipeline_unregularised_s"][0], run["pipeline_s"]
    assert len(run["network_sustained_s"]) == 1 == len(run["pipeline_unregularised_s"])
    ratio = sustained / pipe
    assert run["pipeline_over_network_sustained"] == pytest.approx(
        ratio, abs=ratio * (0.0005 / sustained + 0.005 / pipe) + 6e-4
    )
    assert run["pipeline_unregularised_over_network_sustained"] == pytest.approx(
        sustained / plain, abs=sustained / plain * (0.0005 / sustained + 0.0005 / plain) + 6e-4
    )
    assert run["regularise_cost_s"] == pytest.approx(pipe - plain, abs=0.0061)
    assert run["regularise_cost_ms_per_building"] == pytest.approx(
        1000 * run["regularise_cost_s"] / run["buildings_found"], abs=0.5 / run["buildings_found"] + 0.0006
    )
    assert run["buildings_found_unregularised"] == run["buildings_found"]
    assert fig["gflops_per_s"] > 0 and fig["share_of_peak"] > 0 and fig["matmul_gflops_per_s"] > 0
    assert "onnxruntime_error" in fig  # the brightness test model has no ONNX export: said, not hidden


def test_each_repeat_pairs_a_usual_and_a_plain_run_in_turn(tmp_path, monkeypatch):
    """Two repeats: the usual run first, then the plain run first; the sustained network between them."""
    pytest.importorskip("rasterio")
    model = make_test_model(str(tmp_path / "m.pt"), gsd_m=0.5, tile_size_px=64, overlap_px=8)
    calls = []
    real_detect, real_sustained = bench._detect_and_write, bench._sustained_seconds

    def detect(*args, regularize=True, **kwargs):
        calls.append("usual" if regularize else "plain")
        return real_detect(*args, regularize=regularize, **kwargs)

    def sustained(*args):
        calls.append("network")
        return real_sustained(*args)

    monkeypatch.setattr(bench, "_detect_and_write", detect)
    monkeypatch.setattr(bench, "_sustained_seconds", sustained)
    run = bench.pipeline_run(256, model, "cpu", None, 2)
    assert calls == ["usual", "network", "plain", "plain", "network", "usual"]
    assert len(run["network_sustained_s"]) == len(run["pipeline_unregularised_s"]) == 2
    assert len(run["pipeline_over_model_paired"]) == 2
    assert run["buildings_found_unregularised"] == run["buildings_found"] > 0


def test_the_held_out_check_is_printed_as_of_the_day_the_twin_was_made(repo_root):
    """Session 13: bench printed the twin's recorded held-out deltas as if current; with today's
    outline code the same gate gives other figures. The lines now say when they were recorded."""
    import torch

    from devtools.bench_cli import _say_model
    from devtools.onnx_twin_cli import _code_version

    made = _code_version()
    assert made[:4].isdigit() and "commit " in made  # this checkout is a git repository
    case = {
        "fp32_pixel_iou": 0.58,
        "int8_pixel_iou": 0.59,
        "delta_pixel_iou": 0.01,
        "fp32_object_f1": 0.4,
        "int8_object_f1": 0.38,
        "delta_object_f1": -0.02,
    }
    figures = {
        "backend": "onnxruntime",
        "model_tiles_per_s": 1.0,
        "onnx_twin": "m.onnx",
        "onnx_twin_precision": "int8",
        "onnx_twin_mb": 4.0,
        "int8_tiles_per_s": 2.0,
        "int8_heldout": {
            "recorded": made,
            "oam_area4_z19": case,
            "tuning_pooled": {"fp32": [607, 680, 432, 0.6713], "int8": [598, 680, 433, 0.6776]},
        },
    }
    lines = []
    _say_model(figures, torch.device("cpu"), lambda *a: lines.append(" ".join(map(str, a))))
    text = "\n".join(lines)
    assert f"held-out check recorded when the twin was made ({made}):" in text
    assert "held-out oam_area4_z19: pixel IoU fp32 0.58 int8 0.59" in text and "held-out recorded" not in text
    assert "tuning scenes, objects pooled (predicted / reference / matched / F1): fp32 607/680/432/0.6713" in text


def test_bench_says_when_the_twin_it_times_is_not_what_detection_runs():
    """On a CPU whose int8 arithmetic saturates the twin is timed but detection runs fp32."""
    import torch

    import numpy as np

    from devtools.bench import twin_figures
    from devtools.bench_cli import _say_model
    from roof_detector.core.onnx_twin import int8_saturation

    x = np.zeros((1, 3, 64, 64), np.float32)
    figures = {"backend": "onnxruntime", "model_tiles_per_s": 1.0}
    figures.update(twin_figures(None, lambda m: lambda: m.run_numpy(x), 1, 1))  # the bundled twin
    assert figures["onnx_twin_precision"] == "int8"
    assert figures.get("int8_saturation", "") == int8_saturation()
    lines = []
    _say_model(figures, torch.device("cpu"), lambda *a: lines.append(" ".join(map(str, a))))
    said = "not used for detection here" in "\n".join(lines)
    assert said == bool(int8_saturation())
