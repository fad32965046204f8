"""Fixtures shared by the engine tests: the brightness test model (see synthetic_rasters for the scenes)."""

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
