"""ONNX Runtime running out of CPU memory halves the batch (issue 21), under a real memory cap.

0.2.0 did not recognise ONNX Runtime's ``Fail: ... Failed to allocate memory``
(not a RuntimeError) as out of memory, so the run failed instead of retrying.
The cap is an address-space limit (what ``prlimit --as`` sets) taken in a
child process, 0.15 GB above what the loaded model already uses.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from roof_detector.core.model_io import BUNDLED_MODEL_PATH

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import resource, numpy as np
from roof_detector.core.model_io import load_model, BUNDLED_MODEL_PATH
from roof_detector.core.inference import BatchPredictor
model = load_model(str(BUNDLED_MODEL_PATH), "cpu", backend="onnxruntime")
predictor = BatchPredictor(model)
predictor(np.zeros((1, 3, 256, 256), np.float32))
batch = np.random.default_rng(0).random((32, 3, 256, 256), dtype=np.float32)
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + 150_000_000,) * 2)
out = predictor(batch)
print("shape", out.shape, "limit", predictor.batch_limit)
print(predictor.notes()[0])
"""


def test_onnxruntime_cpu_out_of_memory_halves_the_batch():
    pytest.importorskip("onnxruntime")
    if not BUNDLED_MODEL_PATH.is_file():
        pytest.skip("the bundled model is absent")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "shape (32, 256, 256)" in proc.stdout
    limit = int(proc.stdout.split("limit ")[1].split()[0])
    assert 1 <= limit < 32
    assert "The CPU ran out of memory with 32 tiles per batch" in proc.stdout


@pytest.mark.parametrize("headroom_mb", [140, 135, 130, 125, 120, 115])
def test_tighter_memory_caps_end_in_a_smaller_batch_or_one_clear_error(headroom_mb):
    """Session 16: under caps a little tighter than the test above, 0.2.x ended four of these six
    runs with a traceback: numpy's MemoryError joining the halves of the batch (a second copy of
    it), or "can't start new thread" (each model call's thread maps its stack first: such a call now
    runs on the caller's thread). A fresh clone's suite met the second at the cap above too."""
    pytest.importorskip("onnxruntime")
    if not BUNDLED_MODEL_PATH.is_file():
        pytest.skip("the bundled model is absent")
    child = CHILD.replace("vm + 150_000_000", f"vm + {headroom_mb}_000_000").replace(
        "out = predictor(batch)",
        "from roof_detector.core.errors import ModelError\ntry:\n    out = predictor(batch)\n"
        "except ModelError as exc:\n    print('MODELERROR', exc)\n    raise SystemExit(0)",
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (
        "The CPU ran out of memory with 32 tiles per batch" in proc.stdout
        or "MODELERROR Out of memory on the CPU even with one tile per batch" in proc.stdout
    ), proc.stdout
