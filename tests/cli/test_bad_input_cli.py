"""``python -m roof_detector detect/finetune`` on bad input and faults, run in-process (fast).

Each case checks the exit status, the one-line message, and that nothing was
left behind: no output file, nothing in the temporary folder. The subprocess
tests in test_detect_cli.py cover missing/unreadable/no-CRS rasters, a
garbage model file, a missing output folder, an existing layer and Ctrl-C
while detecting; they are not repeated here.
"""

import json
import os
import re

import numpy as np
import pytest
import torch
from affine import Affine
from osgeo import ogr

from roof_detector import cli
from tests.core.geom_helpers import area_perimeter_m
from devtools.test_model import BrightnessNet, make_test_model
from tests.core.synthetic_rasters import (
    BRIGHT,
    DARK,
    LONLAT,
    NORTH_UP,
    PX_AREA,
    UTM,
    UTM_ORIGIN,
    rect_scene,
    scene_in_crs,
    write_raster,
)
from tests.core.test_faults import FlakyGpuNet, _utm_box_at_60n

SUMMARY = re.compile(r"^(\d+) buildings, total area ([\d.]+) m2, [\d.]+ s -> (.+) \(layer (\w+)\)$")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_test_model(str(tmp_path_factory.mktemp("model") / "bright.pt"))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Inputs in tmp_path/in, outputs to tmp_path/out, the engine's temporary files in tmp_path/tmp."""
    import tempfile

    for name in ("in", "out", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


@pytest.fixture
def scene(env):
    return rect_scene(env / "in" / "scene.tif", [(20, 20, 60, 80), (120, 200, 140, 220)])


def detect(capsys, *args):
    """Run ``detect``; return (exit status, stdout lines, stderr lines starting 'error:'/'warning:')."""
    code = cli.main(["detect", *map(str, args)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    out = captured.out.strip().splitlines()
    err = [ln for ln in captured.err.splitlines() if ln.startswith(("error:", "warning:"))]
    return code, out, err


def assert_nothing_left(env, outputs=()):
    assert sorted(os.listdir(env / "out")) == sorted(outputs)
    assert os.listdir(env / "tmp") == []


# --------------------------------------------------------------------------- rasters refused


@pytest.mark.parametrize(
    "case, message",
    [
        ("rotated", "has a rotated or sheared geotransform; the detector needs a north-up raster. Warp it first"),
        ("south_up", "is not north-up"),
        ("two_bands", "has 2 bands (none flagged alpha); the detector needs 1 (grey), 2 (grey + alpha), 3 (RGB)"),
        ("five_bands", "has 5 bands"),
    ],
)
def test_unusable_rasters_exit_2_with_what_to_do(env, capsys, model_path, case, message):
    img = np.zeros((3, 8, 8), np.uint8)
    path = env / "in" / f"{case}.tif"
    transform = {
        "rotated": Affine(0.5, 0.1, UTM_ORIGIN[0], 0.1, -0.5, UTM_ORIGIN[1]),
        "south_up": Affine(0.5, 0, UTM_ORIGIN[0], 0, 0.5, UTM_ORIGIN[1]),
    }.get(case, NORTH_UP)
    bands = {"two_bands": 2, "five_bands": 5}.get(case, 3)
    write_raster(path, np.zeros((bands,) + img.shape[1:], np.uint8), UTM, transform)
    code, out, err = detect(capsys, path, "-o", env / "out" / "b.gpkg", "--model", model_path)
    assert code == 2 and out == [] and len(err) == 1
    assert message in err[0] and str(path) in err[0]
    assert_nothing_left(env)


# --------------------------------------------------------------------------- rasters that work


def _summary(out):
    assert len(out) == 1, out
    m = SUMMARY.match(out[0])
    assert m, out
    return int(m.group(1)), float(m.group(2))


def _features(path, layer="buildings"):
    ds = ogr.Open(str(path))
    n = ds.GetLayerByName(layer).GetFeatureCount()
    ds = None
    return n


@pytest.mark.parametrize("case", ["uint16_pan", "float32", "int16", "tiny"])
def test_odd_but_supported_rasters(env, capsys, model_path, case):
    rects = [(20, 20, 60, 80), (120, 200, 140, 220)]
    kwargs = {
        "uint16_pan": dict(bands=1, dtype="uint16", value=3000, ground=400),  # 1-band panchromatic
        "float32": dict(dtype="float32", value=0.61, ground=0.07),
        "int16": dict(dtype="int16", value=1500, ground=-300),
        "tiny": dict(shape=(30, 40)),
    }[case]
    if case == "tiny":
        rects = [(5, 5, 25, 35)]  # 15 x 20 m raster, under one 64 px tile
    path = rect_scene(env / "in" / f"{case}.tif", rects, **kwargs)
    out_path = env / "out" / "b.gpkg"
    code, out, err = detect(capsys, path, "-o", out_path, "--model", model_path)
    assert code == 0 and err == []
    count, area = _summary(out)
    expected = sum((r1 - r0) * (c1 - c0) for r0, c0, r1, c1 in rects) * PX_AREA
    assert count == len(rects) and area == pytest.approx(expected, abs=0.2)
    assert _features(out_path) == count
    assert_nothing_left(env, ["b.gpkg"])


def test_entirely_nodata_raster_warns_and_writes_an_empty_layer(env, capsys, model_path):
    path = write_raster(env / "in" / "nodata.tif", np.zeros((3, 50, 50), np.uint8), UTM, NORTH_UP, nodata=0)
    code, out, err = detect(capsys, path, "-o", env / "out" / "b.gpkg", "--model", model_path)
    assert code == 0 and _summary(out)[0] == 0
    assert len(err) == 1 and err[0].startswith("warning: The raster holds no valid pixels (all nodata / masked)")
    assert _features(env / "out" / "b.gpkg") == 0
    assert_nothing_left(env, ["b.gpkg"])


def test_ten_metre_pixels_warn_and_still_measure_on_the_ground(env, capsys, model_path):
    data = np.full((3, 16, 16), DARK, np.uint8)
    data[:, 5:10, 5:10] = BRIGHT  # 50 x 50 m
    path = write_raster(env / "in" / "coarse.tif", data, UTM, Affine(10, 0, UTM_ORIGIN[0], 0, -10, UTM_ORIGIN[1]))
    code, out, err = detect(capsys, path, "-o", env / "out" / "b.gpkg", "--model", model_path)
    assert code == 0
    assert len(err) == 1 and "pixels measure 10.00 m on the ground" in err[0] and "will be missed" in err[0]
    count, area = _summary(out)
    assert count == 1 and area == pytest.approx(2500 / 0.9996**2, rel=0.05)


def test_degrees_at_60_north_give_ground_areas(env, capsys, model_path):
    building = _utm_box_at_60n()
    path, _ = scene_in_crs(env / "in" / "north.tif", LONLAT, building)
    code, out, err = detect(capsys, path, "-o", env / "out" / "b.gpkg", "--model", model_path)
    assert code == 0 and err == []
    count, area = _summary(out)
    assert count == 1 and area == pytest.approx(area_perimeter_m(building, UTM)[0], rel=0.01)


# --------------------------------------------------------------------------- model files


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "is not a TorchScript model (not a valid archive; the file may be truncated"),
        ("checkpoint", "is not a TorchScript model: a zip archive without Roof Detector metadata"),
        ("no_metadata", "is a TorchScript file without Roof Detector metadata"),
        ("nir", "metadata asks for bands ['red', 'green', 'blue', 'nir']; this version supports only"),
        # issue 21 sweep rerun: an .onnx model ONNX Runtime cannot parse gave an InvalidProtobuf traceback
        ("onnx_random", "is not an ONNX model ONNX Runtime can load ("),
        ("onnx_truncated", "is not an ONNX model ONNX Runtime can load ("),
        ("onnx_no_metadata", "is an ONNX file without Roof Detector metadata"),
    ],
)
def test_unusable_model_files(env, capsys, scene, model_path, kind, message):
    bad = env / "in" / (f"{kind}.onnx" if kind.startswith("onnx") else f"{kind}.pt")
    if kind.startswith("onnx"):
        pytest.importorskip("onnxruntime")
        onnx = pytest.importorskip("onnx")
        from devtools.hostile_models import make_endless_onnx

        good = make_endless_onnx(str(env / "in" / "good.onnx"))
        if kind == "onnx_random":
            bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
        elif kind == "onnx_truncated":
            data = open(good, "rb").read()
            bad.write_bytes(data[: len(data) // 2])
        else:
            model = onnx.load(good)
            del model.metadata_props[:]
            onnx.save(model, str(bad))
    elif kind == "truncated":
        data = open(model_path, "rb").read()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "checkpoint":
        torch.save(BrightnessNet().state_dict(), str(bad))
    elif kind == "no_metadata":
        torch.jit.save(torch.jit.script(BrightnessNet()), str(bad))
    else:
        from roof_detector.core.model_io import read_metadata

        meta = dict(read_metadata(model_path), bands=["red", "green", "blue", "nir"])
        torch.jit.save(torch.jit.script(BrightnessNet()), str(bad), _extra_files={"metadata.json": json.dumps(meta)})
    code, out, err = detect(capsys, scene, "-o", env / "out" / "b.gpkg", "--model", bad)
    assert code == 2 and out == [] and len(err) == 1 and message in err[0] and str(bad) in err[0]
    assert_nothing_left(env)


# --------------------------------------------------------------------------- outputs


def test_output_under_a_file_read_only_or_locked(env, capsys, scene, model_path, monkeypatch):
    import sqlite3

    from roof_detector.core import gpkg_writer

    blocker = env / "out" / "notes"
    blocker.write_text("x")
    code, _, err = detect(capsys, scene, "-o", blocker / "b.gpkg", "--model", model_path)
    assert code == 2 and "notes is a file, not a folder" in err[0]

    existing = env / "out" / "b.gpkg"
    assert detect(capsys, scene, "-o", existing, "--model", model_path)[0] == 0
    before = existing.read_bytes()
    con = sqlite3.connect(str(existing), isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # another program is writing to it
    try:
        code, _, err = detect(capsys, scene, "-o", existing, "--layer", "second", "--model", model_path)
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert code == 2 and "is locked by another program" in err[0]

    monkeypatch.setattr(gpkg_writer.os, "access", lambda p, mode: mode != os.W_OK)  # root ignores chmod
    code, _, err = detect(capsys, scene, "-o", existing, "--layer", "second", "--model", model_path)
    assert code == 2 and "b.gpkg is read-only" in err[0]
    code, _, err = detect(capsys, scene, "-o", env / "out" / "new.gpkg", "--model", model_path)
    assert code == 2 and "permission denied" in err[0]
    assert existing.read_bytes() == before
    assert_nothing_left(env, ["b.gpkg", "notes"])


@pytest.mark.parametrize(
    "fault, code, message",
    [
        (RuntimeError("sqlite3_step() failed: database or disk is full"), 2, "error: The disk is full"),
        (KeyboardInterrupt(), 130, "error: interrupted; nothing was written"),
    ],
)
def test_fault_while_writing_leaves_no_file(env, capsys, scene, model_path, monkeypatch, fault, code, message):
    real = ogr.Layer.CreateFeature
    written = []

    def create_feature(self, feature):
        if written:
            raise fault
        written.append(1)
        return real(self, feature)

    monkeypatch.setattr(ogr.Layer, "CreateFeature", create_feature)
    status, out, err = detect(capsys, scene, "-o", env / "out" / "b.gpkg", "--model", model_path)
    assert written and status == code and out == [] and err[-1].startswith(message)
    assert_nothing_left(env)


# --------------------------------------------------------------------------- GPU out of memory


def test_gpu_out_of_memory_is_a_warning_with_the_full_result(env, capsys, scene, model_path, monkeypatch):
    from roof_detector.core import inference, pipeline
    from roof_detector.core.model_io import LoadedModel, read_metadata

    gpu = LoadedModel(
        module=FlakyGpuNet(fits=3),
        metadata=read_metadata(model_path),
        device=torch.device("cuda"),
        path=model_path,
        extra={"backend": "torch"},
    )
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: gpu)
    monkeypatch.setattr(inference, "_to_device", lambda x, device: x)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    code, out, err = detect(capsys, scene, "-o", env / "out" / "b.gpkg", "--model", model_path, "--batch-size", "12")
    assert code == 0 and _summary(out)[0] == 2
    assert len(err) == 1 and err[0].startswith("warning: The GPU ran out of memory with 12 tiles per batch")
    assert "with 3 tiles per batch" in err[0] and "--batch-size" in err[0]
    assert_nothing_left(env, ["b.gpkg"])


# --------------------------------------------------------------------------- fine-tune labels


def test_finetune_with_lines_instead_of_polygons(env, capsys):
    from osgeo import osr

    from roof_detector.core.training.export import export_model
    from roof_detector.core.training.trainer import TrainConfig
    from roof_detector.core.unet import build_model

    raster = rect_scene(env / "in" / "ortho.tif", [(20, 20, 60, 80)], shape=(128, 128))
    base = export_model(
        build_model("plain_unet", base_channels=4),
        TrainConfig(
            architecture="plain_unet", architecture_params={"base_channels": 4}, gsd_m=0.5, tile_px=64, overlap_px=8
        ),
        str(env / "in" / "base.pt"),
        0.5,
        {"name": "b"},
    )
    labels = str(env / "in" / "lines.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(labels)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    lyr = ds.CreateLayer("outlines", srs, ogr.wkbLineString)
    x, y = UTM_ORIGIN
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt(f"LINESTRING({x + 10} {y - 10},{x + 40} {y - 10},{x + 40} {y - 30})"))
    lyr.CreateFeature(f)
    f = lyr = ds = None
    code = cli.main(
        [
            "finetune",
            "--raster",
            raster,
            "--labels",
            labels,
            "-o",
            str(env / "out" / "m.pt"),
            "--base-model",
            base,
            "--device",
            "cpu",
            "--epochs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "holds no building polygon: 1 feature(s) skipped as not polygons or empty (linestring)" in err
    assert_nothing_left(env)


# --------------------------------------------------------------------------- destinations checked before the run (issue 21)


def test_destinations_are_checked_before_any_work(env, capsys, model_path):
    """0.2.0 found these only after the whole detection (or wrote a GeoPackage named .shp)."""
    import subprocess

    raster = write_raster(env / "in" / "r.tif", np.full((3, 40, 40), DARK, np.uint8), UTM, NORTH_UP)
    cases = [
        (["-o", env / "out" / "b.gpkg", "--layer", "gpkg_contents"], "GeoPackage system table"),
        (["-o", env / "out" / "b.shp"], "written as a GeoPackage only"),
        (["-o", env / "out" / "b.geojson"], "written as a GeoPackage only"),
    ]
    for extra, message in cases:
        code, out, err = detect(capsys, raster, *extra, "--model", model_path)
        assert code == 2 and len(err) == 1 and message in err[0], err
    frozen = env / "out" / "frozen"
    frozen.mkdir()
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        code, out, err = detect(capsys, raster, "-o", frozen / "b.gpkg", "--model", model_path)
        assert code == 2 and "immutable" in err[0] and os.listdir(frozen) == []
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], capture_output=True)
    frozen.rmdir()
    assert_nothing_left(env)


@pytest.mark.parametrize(
    "args, message",
    [(["bench", "--size", "0"], "--size must be at least 256"), (["score", "--case", "bogus"], "unknown --case bogus")],
)
def test_bench_and_score_refuse_nonsense(capsys, args, message):
    """0.2.0 exited 0 on both (issue 21); the developer commands run as ``python -m devtools``."""
    from devtools.__main__ import COMMANDS

    assert cli.main(args, prog="python -m devtools", commands=COMMANDS) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", ["/vsicurl/https://example.org/ortho.tif", "https://example.org/ortho.tif", "/vsizip/ortho.zip/ortho.tif"]
)
def test_remote_and_archive_paths_are_said_to_be_unsupported(env, capsys, model_path, path):
    """0.2.0: "Raster file not found" (issue 21)."""
    code, out, err = detect(capsys, path, "-o", env / "out" / "b.gpkg", "--model", model_path)
    assert code == 2 and "remote and archive paths" in err[0] and "not supported" in err[0]
    assert_nothing_left(env)
