"""ONNX Runtime backend: exported from the model file, agreeing with TorchScript, cached."""

import pytest
import torch

from roof_detector.core.errors import ModelError
from roof_detector.core.model_io import load_model
from devtools.test_model import make_test_model

pytest.importorskip("onnxruntime")


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


def _load_and_warnings(path):
    from roof_detector.core.model_io import load_warnings

    m = load_model(path, "cpu")
    return m, load_warnings(m)


def test_a_cache_on_a_full_disk_costs_an_export_per_load_not_onnx_runtime(unet_model, full_disk, monkeypatch):
    """QA, session 16: a cache that could not be written fell back to TorchScript (1.6x slower) on
    every run, and said nothing."""
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(full_disk / "cache"))
    m, said = _load_and_warnings(unet_model)
    assert m.extra["backend"] == "onnxruntime" and m.extra["onnx_path"] is None
    assert "No space left" in m.extra["onnx_cache_problem"]
    assert len(said) == 1 and "cannot be cached" in said[0] and "ROOF_DETECTOR_CACHE" in said[0]
    assert not list(full_disk.rglob("*.onnx")) and not list(full_disk.rglob("*.tmp*"))  # nothing half-written


def test_a_read_only_cache_with_a_corrupt_entry_still_runs_onnx_runtime(unet_model, read_only_fs, monkeypatch):
    ro, make_writable = read_only_fs
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(ro / "cache"))
    with make_writable():
        entry = load_model(unet_model, "cpu").extra["onnx_path"]
        with open(entry, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\xff" * 4000)
    m, said = _load_and_warnings(unet_model)  # the entry cannot be rebuilt, nor removed
    assert m.extra["backend"] == "onnxruntime" and "Read-only file system" in m.extra["onnx_cache_problem"]
    assert "cannot be cached" in said[0]
    with make_writable():  # once the cache can be written, the entry is rebuilt and nothing is said
        m, said = _load_and_warnings(unet_model)
    assert m.extra["onnx_path"] == entry and not said


def test_no_folder_to_export_into_falls_back_to_torchscript_and_says_so(unet_model, read_only_fs, monkeypatch):
    import tempfile

    ro, _ = read_only_fs
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(ro / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(ro))
    m, said = _load_and_warnings(unet_model)
    assert m.extra["backend"] == "torch" and "Read-only file system" in m.extra["onnx_fallback_reason"]
    assert len(said) == 1 and "runs with TorchScript" in said[0] and "ROOF_DETECTOR_CACHE" in said[0]


def test_detection_tells_its_user_the_cache_cannot_be_written(unet_model, full_disk, monkeypatch, tmp_path):
    from roof_detector.core.pipeline import DetectOptions, detect_buildings
    from devtools.synthetic import write_orthophoto

    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(full_disk / "cache"))
    raster = str(tmp_path / "scene.tif")
    write_orthophoto(raster, 128, gsd_m=0.3)
    res = detect_buildings(raster, DetectOptions(model_path=unet_model, solar=None))
    assert res.stats["backend"] == "onnxruntime"
    assert [w for w in res.warnings if "The model's ONNX graph cannot be cached" in w]
