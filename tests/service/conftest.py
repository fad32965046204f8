"""Fixtures of the REST service tests: the test models and generated rasters (module-scoped)."""

import pytest

from devtools.test_model import make_test_model
from tests.core.synthetic_rasters import rect_scene

from .server_helpers import make_slow_model

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return make_test_model(str(tmp_path_factory.mktemp("model") / "bright.pt"))


@pytest.fixture(scope="session")
def slow_model_path(tmp_path_factory):
    return make_slow_model(str(tmp_path_factory.mktemp("model") / "slow.pt"))


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    # two buildings: 20 x 30 m and 10 x 10 m (as the CLI tests)
    return rect_scene(tmp_path_factory.mktemp("scene") / "scene.tif", [(20, 20, 60, 80), (120, 200, 140, 220)])


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    return rect_scene(tmp_path_factory.mktemp("scene") / "small.tif", [(10, 10, 40, 40)], shape=(64, 64))


@pytest.fixture(scope="session")
def big_scene(tmp_path_factory):
    # ~100 tiles: with the slow model a job runs for many seconds (for cancel / kill mid-job)
    return rect_scene(tmp_path_factory.mktemp("scene") / "big.tif", [(20, 20, 60, 80)], shape=(600, 600))
