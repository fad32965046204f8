"""Fixtures shared by the engine tests: the brightness test model (see synthetic_rasters for the scenes), and a
small U-Net model file without a twin, whose CPU runs go through the ONNX cache (ROOF_DETECTOR_CACHE: the test's own)."""

import pytest

from roof_detector.core.model_io import load_model
from devtools.test_model import make_test_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_test_model(
        str(tmp_path_factory.mktemp("model") / "bright.pt"), gsd_m=0.5, tile_size_px=64, overlap_px=8
    )


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path, "cpu")


@pytest.fixture()
def unet_model(tmp_path, monkeypatch):
    """An efflite0 U-Net model file (64 px tiles) without a twin, and a cache of this test's own."""
    import torch

    from roof_detector.core.training.export import export_model
    from roof_detector.core.training.trainer import TrainConfig
    from roof_detector.core.unet import build_model

    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(architecture="efflite0_unet", tile_px=64, overlap_px=8)
    torch.manual_seed(0)
    return export_model(build_model("efflite0_unet"), cfg, str(tmp_path / "m.pt"), 0.5, {"name": "t"})
