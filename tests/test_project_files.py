"""The files that make this repository a QGIS plugin and a reproducible project."""

import configparser
import os
import re
import struct

from tests.conftest import REPO_ROOT

REQUIRED_METADATA = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
    "tracker",
    "homepage",
    "icon",
    "tags",
    "experimental",
    "changelog",
)


def test_metadata_is_valid_for_the_plugin_repository():
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "metadata.txt", encoding="utf-8")
    general = cfg["general"]
    for key in REQUIRED_METADATA:
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["name"] == "Roof Detector"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", general["qgisMinimumVersion"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", general["version"])
    for key in ("repository", "tracker", "homepage"):
        assert general[key].startswith("https://")
    icon = REPO_ROOT / general["icon"]
    with open(icon, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (64, 64)


def test_package_version_matches_metadata():
    import roof_detector

    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "metadata.txt", encoding="utf-8")
    assert cfg["general"]["version"] == roof_detector.__version__


def test_requirements_pin_a_cpu_torch_and_numpy_1():
    text = (REPO_ROOT / "requirements.txt").read_text()
    pins = dict(line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#"))
    assert pins["torch"].endswith("+cpu")
    assert pins["numpy"].startswith("1.")
    assert int(pins["affine"].split(".")[0]) < 3


def test_ci_script_is_executable():
    path = REPO_ROOT / ".ci" / "run"
    assert os.access(path, os.X_OK)
    assert "set -euo pipefail" in path.read_text()
