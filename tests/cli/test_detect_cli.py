"""``python -m roof_detector detect`` through a real subprocess: exit codes, summary line, one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import ogr

from roof_detector import cli
from devtools.test_model import make_test_model
from tests.core.synthetic_rasters import UTM_ORIGIN, rect_scene, write_raster

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^(\d+) buildings, total area ([\d.]+) m2, [\d.]+ s -> (.+) \(layer (\w+)\)$")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_test_model(str(tmp_path_factory.mktemp("model") / "bright.pt"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # two buildings: 20 x 30 m and 10 x 10 m
    return rect_scene(tmp_path_factory.mktemp("scene") / "scene.tif", [(20, 20, 60, 80), (120, 200, 140, 220)])


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "roof_detector", "detect", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.slow
def test_detect_writes_gpkg_and_prints_summary(tmp_path, scene, model_path):
    out = tmp_path / "out.gpkg"
    proc = _run(scene, "-o", out, "--model", model_path, "--device", "cpu", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    m = SUMMARY.match(lines[0])
    assert m, lines[0]
    assert int(m.group(1)) == 2 and m.group(3) == str(out) and m.group(4) == "buildings"
    assert float(m.group(2)) == pytest.approx(700 / 0.9996**2, abs=0.2)
    assert "%" in proc.stderr  # the progress bar
    ds = ogr.Open(str(out))
    lyr = ds.GetLayerByName("buildings")
    assert lyr.GetFeatureCount() == 2
    assert lyr.GetMetadataItem("source_raster") == str(scene)

    # same layer again: refused before any work, file untouched; --layer or --overwrite work
    before = out.read_bytes()
    proc = _run(scene, "-o", out, "--model", model_path)
    assert proc.returncode == 2
    assert "--overwrite" in _error_line(proc)
    assert out.read_bytes() == before
    assert _run(scene, "-o", out, "--model", model_path, "--layer", "second", "--min-area", "150").returncode == 0
    assert _run(scene, "-o", out, "--model", model_path, "--overwrite", "--threshold", "0.9").returncode == 0
    ds = ogr.Open(str(out))
    assert {ds.GetLayer(i).GetName(): ds.GetLayer(i).GetFeatureCount() for i in range(ds.GetLayerCount())} == {
        "buildings": 2,
        "second": 1,
    }


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(tmp_path, scene, model_path):
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    no_crs = write_raster(
        tmp_path / "nocrs.tif",
        np.zeros((3, 8, 8), np.uint8),
        None,
        __import__("affine").Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1]),
    )
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    cases = [
        ((tmp_path / "missing.tif", "-o", tmp_path / "a.gpkg", "--model", model_path), "Raster file not found"),
        ((text, "-o", tmp_path / "b.gpkg", "--model", model_path), "not a raster GDAL can read"),
        ((no_crs, "-o", tmp_path / "c.gpkg", "--model", model_path), "no coordinate reference system"),
        ((scene, "-o", tmp_path / "d.gpkg", "--model", corrupt), "not a TorchScript model"),
        ((scene, "-o", tmp_path / "nowhere" / "e.gpkg", "--model", model_path), "does not exist"),
    ]
    for args, message in cases:
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in _error_line(proc)
        assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "nocrs.tif", "notes.tif"]


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--threshold", "1.5", "Threshold must be from 0.01 to 0.99, got 1.5"),
        ("--min-area", "nan", "Minimum building area must be a finite number"),
        ("--tolerance", "nan", "Regularisation tolerance must be a finite number"),
        ("--tolerance", "inf", "Regularisation tolerance must be a finite number"),
        ("--panel-area", "1e-300", "Panel area must be from 0.1 to 10 m²"),
        ("--panel-wp", "1e308", "Panel power must be from 10 to 2000 Wp"),
        ("--batch-size", "2.5", "Batch size must be a whole number"),
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path, scene, flag, value, words):
    """Refused by argparse from the one declaration in core.params: before any work, nothing written."""
    proc = _run(scene, "-o", tmp_path / "x.gpkg", flag, value)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "x.gpkg").exists()


def test_ctrl_c_during_detection_leaves_nothing(tmp_path, scene, model_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) half-way through the tiles: exit 130, no output, no temp files."""
    import contextlib
    import tempfile

    from roof_detector.cli import detect as detect_cli

    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))

    @contextlib.contextmanager
    def interrupting_bar():
        def progress(fraction, message):
            if "tile" in message and fraction > 0.3:
                raise KeyboardInterrupt

        yield progress

    monkeypatch.setattr(detect_cli, "progress_bar", interrupting_bar)
    out = tmp_path / "out.gpkg"
    code = cli.main(["detect", str(scene), "-o", str(out), "--model", model_path, "--batch-size", "2"])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    assert os.listdir(work) == []
    assert sorted(os.listdir(tmp_path)) == ["tmp"]


@pytest.mark.slow
def test_touching_roofs_are_separated_unless_asked_not_to(tmp_path, model_path):
    from tests.core.synthetic_rasters import touching_pair_scene

    pair, _ = touching_pair_scene(tmp_path / "pair.tif")
    counts = []
    for flag in ("--separate-touching", "--no-separate-touching"):
        proc = _run(pair, "-o", tmp_path / f"{flag}.gpkg", "--model", model_path, flag)
        assert proc.returncode == 0, proc.stderr
        counts.append(int(SUMMARY.match(proc.stdout.strip()).group(1)))
    assert counts == [2, 1]
