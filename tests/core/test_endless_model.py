"""A model file whose forward pass never returns: a cancel still ends the run (issue 21).

The QGIS task and Processing cancel through ``is_cancelled``; the engine polls it
while a model call runs (core/interruptible.py). An ONNX Runtime run is stopped;
a TorchScript loop cannot be, and keeps its thread until the process ends, so that
case runs in a child process.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from roof_detector.core.errors import Cancelled
from tests.core.synthetic_rasters import UTM, UTM_ORIGIN, write_raster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def raster(tmp_path):
    data = np.full((3, 200, 200), 30, np.uint8)
    data[:, 50:100, 50:100] = 220
    return write_raster(tmp_path / "r.tif", data, UTM, Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1]))


def _cancel_after(seconds):
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 > seconds


def test_cancelling_an_onnx_model_that_never_returns_stops_it(tmp_path, raster):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from devtools.hostile_models import make_endless_onnx
    from roof_detector.core.interruptible import stuck_calls
    from roof_detector.core.pipeline import DetectOptions, detect_buildings

    model = make_endless_onnx(str(tmp_path / "endless.onnx"))
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        detect_buildings(raster, DetectOptions(model_path=model, device="cpu"), is_cancelled=_cancel_after(2.0))
    assert time.monotonic() - t0 < 30
    assert stuck_calls(grace_s=5.0) == 0  # ONNX Runtime's run was told to stop, and did


CHILD = """
import sys, time
from roof_detector.core.errors import Cancelled
from roof_detector.core.interruptible import stuck_calls
from roof_detector.core.pipeline import DetectOptions, detect_buildings
started = []  # when the tiles start: the model runs (for ever) from then on

def progress(fraction, message):
    if "tiles to process" in message and not started:
        started.append(time.monotonic())

try:
    detect_buildings(sys.argv[1], DetectOptions(model_path=sys.argv[2], device="cpu"), progress=progress,
                     is_cancelled=lambda: bool(started) and time.monotonic() - started[0] > 2.0)
except Cancelled:
    print(f"cancelled after {time.monotonic() - started[0]:.1f} s; stuck {stuck_calls(0.5)}", flush=True)
import os
os._exit(0)
"""


def test_cancelling_a_torchscript_model_that_never_returns_ends_the_run(tmp_path, raster):
    from devtools.hostile_models import make_endless_torchscript

    model = make_endless_torchscript(str(tmp_path / "endless.pt"))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(raster), model], cwd=str(REPO), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    # The run ends at the cancel; the TorchScript call itself cannot be stopped and is left running.
    seconds = float(proc.stdout.split("cancelled after ")[1].split(" s")[0])
    assert seconds < 6 and "stuck 1" in proc.stdout, proc.stdout
