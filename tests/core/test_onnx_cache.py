"""A checked fp32 cache entry runs without torch; anything changed since is checked again (onnx_cache)."""

import json

import numpy as np
import pytest
import torch

from roof_detector.core import onnx_cache, onnx_twin
from roof_detector.core.model_io import load_model
from tests.core.test_onnx_twin import run_without_torch

pytest.importorskip("onnxruntime")


def _record(model_path):
    return onnx_cache.entry_path(model_path).with_name(onnx_cache.entry_path(model_path).name + ".verified.json")


def test_a_checked_entry_runs_without_torch_and_computes_the_same(unet_model, tmp_path):
    first = load_model(unet_model, "cpu")
    assert first.extra["backend"] == "onnxruntime" and _record(unet_model).exists()
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", first.module(x))
    proc = run_without_torch(
        f"""
        import numpy as np
        from roof_detector.core.model_io import load_model
        m = load_model({unet_model!r}, "cpu")
        y = m.module(np.load("x.npy"))
        print("RESULT", m.extra["backend"], m.extra["onnx_precision"], bool(np.array_equal(y, np.load("y.npy"))))
        """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT onnxruntime fp32 True" in proc.stdout


def test_without_a_record_torch_is_still_needed(unet_model, tmp_path):
    load_model(unet_model, "cpu")
    _record(unet_model).unlink()
    proc = run_without_torch(
        f"from roof_detector.core.model_io import load_model\nload_model({unet_model!r}, 'cpu')", str(tmp_path)
    )
    assert proc.returncode != 0 and "PyTorch is not installed" in proc.stderr


@pytest.mark.parametrize("change", ["entry bytes", "runtime version", "record garbage"])
def test_an_entry_changed_since_its_check_is_checked_again(unet_model, change):
    load_model(unet_model, "cpu")
    entry, record = onnx_cache.entry_path(unet_model), _record(unet_model)
    assert onnx_cache.verified_entry(unet_model) == str(entry)
    if change == "entry bytes":
        with open(entry, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\xff" * 4000)
    elif change == "runtime version":
        record.write_text(json.dumps(dict(json.loads(record.read_text()), onnxruntime="0.0.1")))
    else:
        record.write_text("[1, 2")
    assert onnx_cache.verified_entry(unet_model) is None
    again = load_model(unet_model, "cpu")  # the full check, which rebuilds a damaged entry
    assert again.extra["backend"] == "onnxruntime" and onnx_cache.verified_entry(unet_model) == str(entry)


def test_the_cpu_is_known_without_torch_only_where_no_gpu_could_be_used(monkeypatch):
    from roof_detector.core import devices

    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr(devices, "cuda_driver_present", lambda: False)
    assert devices.cpu_without_torch("cpu") and devices.cpu_without_torch("auto") and devices.cpu_without_torch(None)
    assert not devices.cpu_without_torch("cuda") and not devices.cpu_without_torch("mps")
    monkeypatch.setattr(devices, "cuda_driver_present", lambda: True)
    assert devices.cpu_without_torch("cpu") and not devices.cpu_without_torch("auto")


def test_a_model_torch_runs_on_a_cpu_known_without_torch_gets_a_torch_device(tmp_path, monkeypatch):
    """The loader starts from a torch-free CPU; where TorchScript runs the model after all, the
    module is moved to a real torch.device."""
    from devtools.test_model import make_test_model

    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    m = load_model(make_test_model(str(tmp_path / "b.pt")), "cpu")  # no ONNX export for this architecture
    assert m.extra["backend"] == "torch" and isinstance(m.device, torch.device) and m.device.type == "cpu"


def test_a_new_entry_removes_those_unused_for_a_month_and_keeps_the_rest(unet_model, tmp_path):
    import os
    import time

    folder = tmp_path / "cache" / "onnx"
    folder.mkdir(parents=True)
    month_ago = time.time() - 31 * 86400
    for name, when in (("old", month_ago), ("recent", time.time() - 86400)):
        (folder / f"{name}.onnx").write_bytes(b"x")
        (folder / f"{name}.onnx.verified.json").write_text("{}")
        os.utime(folder / f"{name}.onnx", (when, when))
    load_model(unet_model, "cpu")  # makes this model's entry
    names = sorted(p.name for p in folder.iterdir())
    entry = onnx_cache.entry_path(unet_model).name
    assert names == sorted([entry, entry + ".verified.json", "recent.onnx", "recent.onnx.verified.json"])


def test_a_load_marks_its_entry_used(unet_model):
    import os

    load_model(unet_model, "cpu")
    entry = onnx_cache.entry_path(unet_model)
    os.utime(entry, (0, 0))
    assert load_model(unet_model, "cpu").extra["onnx_path"] == str(entry)  # the checked entry, without torch
    assert entry.stat().st_mtime > 1e9


def test_a_read_only_cache_that_cannot_take_the_record_says_so(unet_model, read_only_fs, monkeypatch):
    """QA, session 16: such a cache checked its entry with torch on every load (3.4 s, not 0.9 s), silently."""
    from roof_detector.core.model_io import load_warnings

    ro, make_writable = read_only_fs
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(ro / "cache"))
    with make_writable():
        entry = load_model(unet_model, "cpu").extra["onnx_path"]
        _record(unet_model).unlink()
    m = load_model(unet_model, "cpu")
    assert m.extra["onnx_path"] == entry and "Read-only file system" in m.extra["onnx_cache_problem"]
    assert "cannot be cached" in load_warnings(m)[0]


def test_a_check_is_recorded_only_for_the_bytes_it_loaded(unet_model):
    """QA, session 16: two workers exporting at once; one recorded the hash of the other's file."""
    load_model(unet_model, "cpu")
    entry, record = onnx_cache.entry_path(unet_model), _record(unet_model)
    record.unlink()
    assert onnx_cache.record_verified(entry, "0" * 64) == "" and not record.exists()  # replaced since: nothing
    assert onnx_cache.record_verified(entry, onnx_twin.file_sha256(entry)) == "" and record.exists()
