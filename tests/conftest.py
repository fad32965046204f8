"""Shared test set-up.

Layout: tests/core (pure engine, no QGIS import), tests/cli (the command line
run in-process), tests/qgis (plugin code against a headless QGIS from
pytest-qgis). Tests that need the real data in ../shared/data use the
``shared_data`` fixture, which skips when it is absent.
"""

import os
from pathlib import Path

import pytest

try:
    from hypothesis import HealthCheck, settings

    # Small and deterministic by default: the suite runs on 2 busy CPU cores.
    settings.register_profile("default", max_examples=40, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=500, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # pragma: no cover - hypothesis is in requirements.txt
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; the test is skipped without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
