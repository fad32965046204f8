"""ONNX Runtime backend: exported from the model file, agreeing with TorchScript, cached."""

import pytest
import torch

from roof_detector.core.errors import ModelError
from roof_detector.core.model_io import load_model
from devtools.test_model import make_test_model
from roof_detector.core.training.export import export_model
from roof_detector.core.training.trainer import TrainConfig
from roof_detector.core.unet import build_model

pytest.importorskip("onnxruntime")


@pytest.fixture()
def unet_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(architecture="efflite0_unet", tile_px=64, overlap_px=8)
    torch.manual_seed(0)
    return export_model(build_model("efflite0_unet"), cfg, str(tmp_path / "m.pt"), 0.5, {"name": "t"})


@pytest.mark.slow
def test_auto_backend_on_cpu_is_onnxruntime_and_agrees_with_torchscript(unet_model, tmp_path):
    ort = load_model(unet_model, "cpu")
    ts = load_model(unet_model, "cpu", backend="torch")
    assert ort.extra["backend"] == "onnxruntime" and ts.extra["backend"] == "torch"
    x = torch.rand(3, 3, 96, 160)  # another batch size and a non-square tile: dynamic axes
    with torch.inference_mode():
        a, b = ort.module(x), ts.module(x)
    assert a.shape == b.shape == (3, 1, 96, 160)
    assert float((a - b).abs().max()) <= 1e-3
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    load_model(unet_model, "cpu")  # second load uses the cache: still one file
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


def test_models_without_onnx_export_stay_on_torchscript(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    path = make_test_model(str(tmp_path / "b.pt"))
    m = load_model(path, "cpu")
    assert m.extra["backend"] == "torch" and "brightness_test" in m.extra["onnx_fallback_reason"]
    with pytest.raises(ModelError, match="cannot run with ONNX Runtime"):
        load_model(path, "cpu", backend="onnxruntime")


def test_unknown_backend_is_refused(unet_model):
    with pytest.raises(ModelError, match="Unknown backend"):
        load_model(unet_model, "cpu", backend="tensorrt")


def test_a_corrupt_cache_entry_is_rebuilt_not_fallen_back_from(unet_model, tmp_path):
    """Issue 21: 0.2.0 fell back to TorchScript (2.3x slower) on every run after the cache was damaged."""
    first = load_model(unet_model, "cpu")
    onnx_path = first.extra["onnx_path"]
    with open(onnx_path, "r+b") as fh:  # damage the cached file in place
        fh.seek(100)
        fh.write(b"\xff" * 4000)
    again = load_model(unet_model, "cpu")
    assert again.extra["backend"] == "onnxruntime" and "onnx_fallback_reason" not in again.extra
    assert load_model(unet_model, "cpu").extra["backend"] == "onnxruntime"
