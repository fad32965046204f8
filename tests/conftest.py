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
    settings.register_profile(
        "default", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )
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


def _mounted_tmpfs(mount_point: Path, size: str) -> Path:
    """A fresh tmpfs of ``size`` mounted at ``mount_point`` (the test is skipped without root)."""
    import subprocess

    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)]
    if os.geteuid() != 0 or subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    return mount_point


@pytest.fixture
def full_disk(tmp_path):
    """A real, almost full file system: a 2 MB tmpfs filled but for 4 KB (needs root; skipped otherwise).

    Faults are tested for real: torch's writer, GDAL and SQLite behave differently on a
    real ENOSPC than on a monkeypatched one.
    """
    import subprocess

    mount_point = _mounted_tmpfs(tmp_path / "small_disk", "2m")
    try:
        filler = mount_point / ".filler"
        with open(filler, "wb", buffering=0) as fh:
            try:
                while fh.write(b"\0" * 65536):
                    pass
            except OSError:  # ENOSPC: full
                pass
        os.truncate(filler, max(0, filler.stat().st_size - 4096))
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def read_only_fs(tmp_path):
    """A real read-only file system: a small tmpfs remounted ``ro`` (EROFS, even for root).

    Yields ``(mount_point, make_writable)``: call ``make_writable()`` as a context manager to put
    files there first (needs root; skipped otherwise).
    """
    import contextlib
    import subprocess

    mount_point = _mounted_tmpfs(tmp_path / "read_only", "32m")

    def mount(options: str) -> int:
        cmd = ["mount", "-o", f"remount,{options}", str(mount_point)]
        return subprocess.run(cmd, capture_output=True).returncode

    @contextlib.contextmanager
    def make_writable():
        assert mount("rw") == 0
        try:
            yield mount_point
        finally:
            assert mount("ro") == 0

    try:
        assert mount("ro") == 0
        yield mount_point, make_writable
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
