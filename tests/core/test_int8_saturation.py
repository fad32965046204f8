"""int8 twins only where ONNX Runtime's int8 arithmetic is exact (onnx_twin.int8_saturation).

On x86-64 CPUs without VNNI, ONNX Runtime adds each pair of uint8 x int8 products into 16 bits,
which saturates; an int8 twin checked on a VNNI CPU computes something else there. The probe is
checked here against ONNX Runtime's real arithmetic on whatever CPU runs the tests, and the
model loader's two answers to it are checked on every CPU.
"""

import base64

import numpy as np
import pytest

from devtools.onnx_twin import make_twin
from devtools.test_model import make_test_model
from roof_detector.core import onnx_twin
from roof_detector.core.model_io import load_model
from tests.core.test_onnx_twin import run_without_torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _matmul_integer(rows, weights: np.ndarray) -> bytes:
    """A uint8 (rows x k) x int8 ``weights`` (k x n) MatMulInteger, as the probe is made (rows None: any)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, n])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    model.producer_name = "roof_detector"
    return model.SerializeToString()


def test_the_probe_is_the_product_its_comment_names():
    made = _matmul_integer(1, np.full((8, 8), 127, np.int8))
    assert base64.b64decode(onnx_twin._PROBE_ONNX) == made
    assert onnx_twin._PROBE_EXACT == 8 * 255 * 127


def test_the_probe_tells_whether_onnx_runtime_multiplies_a_real_sized_product_exactly():
    """A conv-sized random product (as the twin's 1x1 convs multiply: 576 inputs, 96 outputs, many
    rows), with activations and weights at the top of their ranges, against numpy's exact answer."""
    rng = np.random.default_rng(0)
    weights = rng.integers(96, 128, size=(576, 96)).astype(np.int8)
    a = rng.integers(192, 256, size=(256, 576)).astype(np.uint8)
    sess = ort.InferenceSession(_matmul_integer(None, weights), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"a": a})[0]
    exact = a.astype(np.int64) @ weights.astype(np.int64)
    assert (onnx_twin.int8_saturation() == "") == bool(np.array_equal(got, exact))


@pytest.fixture(scope="module")
def model_with_int8_twin(tmp_path_factory):
    path = make_test_model(str(tmp_path_factory.mktemp("int8") / "bright.pt"))
    rng = np.random.default_rng(1)
    calibration = [rng.random((4, 3, 64, 64), dtype=np.float32) for _ in range(2)]
    make_twin(path, precision="int8", calibration=calibration, min_mask_agreement=0.0)
    return path


@pytest.mark.parametrize("saturates", [False, True])
def test_the_int8_twin_is_used_only_where_its_arithmetic_is_exact(
    model_with_int8_twin, monkeypatch, tmp_path, saturates
):
    # Both of the loader's answers on every CPU: the probe's own answer is tested above.
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    why = "ONNX Runtime's int8 arithmetic saturates on this CPU (test)" if saturates else ""
    monkeypatch.setitem(onnx_twin._SATURATION, "why", why)
    m = load_model(model_with_int8_twin, "cpu")
    if saturates:
        # torch is here: the model file runs in fp32, saying why (this test model has no ONNX
        # export, so TorchScript; the bundled model is exported to an fp32 ONNX file instead)
        assert m.extra["backend"] == "torch" and m.extra["onnx_twin_unused"] == why
    else:
        assert m.extra["backend"] == "onnxruntime"
        assert m.extra["onnx_precision"] == "int8" and m.extra["onnx_path"].endswith("bright.onnx")
        assert "int8_saturation" not in m.extra


def test_without_torch_a_saturating_cpu_runs_the_int8_twin_and_says_so(model_with_int8_twin, tmp_path):
    from tests.core.synthetic_rasters import NORTH_UP, write_raster

    img = np.full((3, 200, 200), 30, np.uint8)
    img[:, 40:80, 50:110] = 220
    raster = write_raster(str(tmp_path / "scene.tif"), img, "EPSG:32631", NORTH_UP)
    proc = run_without_torch(
        f"""
        from roof_detector.core import onnx_twin
        from roof_detector.core.pipeline import DetectOptions, detect_buildings
        onnx_twin._SATURATION["why"] = "ONNX Runtime's int8 arithmetic saturates on this CPU (test)"
        res = detect_buildings({raster!r}, DetectOptions(model_path={model_with_int8_twin!r}, min_area_m2=1.0))
        print("RESULT", len(res.buildings), res.stats["backend"])
        print("WARN", res.warnings)
    """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT 1 onnxruntime" in proc.stdout
    assert "Fewer buildings may be found: this CPU has no VNNI instructions, and ONNX Runtime computes" in proc.stdout
    assert (
        "Install PyTorch to run the model in fp32 (QGIS: Plugins > Roof Detector > Check dependencies…" in proc.stdout
    )


def test_the_bundled_model_runs_its_int8_twin_exactly_where_the_probe_allows(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    m = load_model(None, "cpu")
    assert m.extra["backend"] == "onnxruntime"
    if onnx_twin.int8_saturation():
        assert m.extra["onnx_precision"] == "fp32" and "saturates" in m.extra["onnx_twin_unused"]
    else:
        assert m.extra["onnx_precision"] == "int8" and m.extra["onnx_path"].endswith("roof_unet.onnx")
