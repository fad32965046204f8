"""``python -m roof_detector demo``: the embedded OAM crop (default) and the SpaceNet sample, scores and files."""

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from osgeo import ogr

from roof_detector import cli
from roof_detector.cli import demo
from devtools.test_model import make_test_model

REPO = Path(__file__).resolve().parents[2]


def _wheel():
    found = sorted(glob.glob(str(demo.CACHE_DIR / demo.WHEEL_GLOB)))
    if not found:
        pytest.skip(f"solaris wheel absent from {demo.CACHE_DIR} (make demo downloads it)")
    return found[-1]


def _demo(*args: str) -> subprocess.CompletedProcess:
    """``python -m roof_detector demo ARGS --device cpu`` in a fresh process; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "roof_detector", "demo", *args, "--device", "cpu"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_demo_runs_on_the_sample(tmp_path):
    _wheel()
    model = make_test_model(str(tmp_path / "bright.pt"))
    out = tmp_path / "demo"
    proc = _demo("--sample", "atlanta", "--out", str(out), "--model", model)
    m = re.search(
        r"^(\d+) buildings, total area ([\d.]+) m2, pixel IoU ([\d.]+), pixel accuracy ([\d.]+) "
        r"\(vs (\d+) labelled buildings, (\d+) on the image\)",
        proc.stdout,
        re.M,
    )
    assert m, proc.stdout
    n, iou, acc, labels = int(m.group(1)), float(m.group(3)), float(m.group(4)), int(m.group(5))
    assert labels > 20 and int(m.group(6)) == labels  # the sample's labels were read and reprojected; all on it
    assert 0.0 <= iou <= 1.0 and 0.0 < acc <= 1.0
    assert "CC BY-SA 4.0" in proc.stdout  # attribution of the data
    assert (out / "overlay.png").stat().st_size > 10_000
    ds = ogr.Open(str(out / "buildings.gpkg"))
    assert ds.GetLayerByName("buildings").GetFeatureCount() == n


def test_scores_are_computed_on_the_image_grid(tmp_path):
    """The label polygons scored against themselves give IoU 1; against nothing, IoU 0."""
    _wheel()
    image, labels = demo.extract_sample()
    from roof_detector.core.building import Building
    from roof_detector.core.vector_io import read_polygons

    import rasterio

    with rasterio.open(image) as ds:
        assert (ds.count, ds.dtypes[0], ds.res) == (1, "uint16", (0.5, 0.5))
        crs = ds.crs.to_wkt()
    truth = [Building(g, 0, 0, 1) for g in read_polygons(labels, target_crs_wkt=crs).geometries]
    assert demo.pixel_scores(image, labels, truth)["iou"] == pytest.approx(1.0)
    assert demo.pixel_scores(image, labels, [])["iou"] == 0.0


def test_missing_bundled_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("roof_detector.core.model_io.BUNDLED_MODEL_PATH", tmp_path / "roof_unet.pt")
    assert cli.main(["demo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The bundled model") and "missing" in err and "--model" in err
    assert not (tmp_path / "out").exists()


def test_missing_wheel_is_a_clear_error(tmp_path, capsys):
    model = make_test_model(str(tmp_path / "bright.pt"))
    assert (
        cli.main(
            [
                "demo",
                "--sample",
                "atlanta",
                "--model",
                model,
                "--wheel",
                str(tmp_path / "nope.whl"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "solaris wheel not found" in capsys.readouterr().err


def test_embedded_crop_is_small_real_rgb_and_credited():
    import rasterio

    image, labels = demo.embedded_sample()
    assert os.path.getsize(image) <= 1_000_000
    with rasterio.open(image) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8" and ds.compression.name.lower() == "jpeg"
        assert ds.crs.to_epsg() == 3857 and abs(ds.res[0] - 0.0746) < 1e-3
        assert (ds.dataset_mask() > 0).all()
    readme = (REPO / "demo" / "README.md").read_text()
    for credit in ("OpenAerialMap contributors", "CC BY 4.0", "OpenStreetMap contributors", "ODbL"):
        assert credit in readme and credit in (REPO / "README.md").read_text()


def test_demo_runs_on_the_embedded_crop_without_download(tmp_path):
    """The default demo needs no wheel: it runs, scores objects and sizes solar on the embedded crop."""
    model = make_test_model(str(tmp_path / "bright.pt"), gsd_m=0.3)
    out = tmp_path / "demo"
    proc = _demo("--out", str(out), "--model", model)
    m = re.search(
        r"^(\d+) buildings, .* pixel IoU ([\d.]+), .*\(vs (\d+) labelled buildings, (\d+) on the image\)",
        proc.stdout,
        re.M,
    )
    assert m, proc.stdout
    # the recall is over the labels whose centre is on the crop (the OSM extract reaches past it)
    assert int(m.group(3)) == 85 and int(m.group(4)) == 71
    assert re.search(
        r"^objects \(IoU >= 0.5\): \d+ matched, precision [\d.]+, recall [\d.]+, F1 [\d.]+$", proc.stdout, re.M
    ), proc.stdout
    assert re.search(r"^solar: \d+ panels, [\d.]+ kWp, [\d,]+ kWh/yr", proc.stdout, re.M), proc.stdout
    assert "OpenAerialMap contributors, CC BY 4.0" in proc.stdout and "OpenStreetMap contributors, ODbL" in proc.stdout
    assert (out / "overlay.png").is_file()
    ds = ogr.Open(str(out / "buildings.gpkg"))
    assert ds.GetLayerByName("buildings").GetFeatureCount() == int(m.group(1))


def test_embedded_labels_scored_against_themselves_give_iou_one():
    from roof_detector.core.building import Building
    from roof_detector.core.vector_io import read_polygons

    import rasterio

    image, labels = demo.embedded_sample()
    with rasterio.open(image) as ds:
        crs = ds.crs.to_wkt()
    truth = [Building(g, 0, 0, 1) for g in read_polygons(labels, target_crs_wkt=crs).geometries]
    scores = demo.pixel_scores(image, labels, truth)
    assert scores["iou"] == pytest.approx(1.0) and scores["object_f1"] == pytest.approx(1.0)
