"""Bad input and faults at the engine level, shared by every front end.

Each case checks the message the user gets and that nothing is lost or left
behind (no output, no temporary files). Cases already covered elsewhere are
not repeated here: see the "Bad input and faults" table in the README.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from affine import Affine
from osgeo import ogr, osr

from roof_detector.core import inference
from roof_detector.core.errors import Cancelled, LabelError, ModelError
from tests.core.geom_helpers import area_perimeter_m
from roof_detector.core.model_io import LoadedModel, read_metadata
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from devtools.test_model import BrightnessNet
from roof_detector.core.training.finetune import FinetuneOptions, prepare_data
from roof_detector.core.vector_io import read_polygons

from .synthetic_rasters import (
    BRIGHT,
    DARK,
    LONLAT,
    MERCATOR,
    NORTH_UP,
    PX_AREA,
    UTM,
    rect_scene,
    scene_in_crs,
    write_raster,
)

# Three buildings: 20 x 30 m, 10 x 10 m and 15 x 5 m.
RECTS = [(20, 20, 60, 80), (120, 200, 140, 220), (150, 40, 160, 70)]
RECT_AREAS = sorted((r1 - r0) * (c1 - c0) * PX_AREA for r0, c0, r1, c1 in RECTS)


@pytest.fixture
def scene(tmp_path):
    return rect_scene(tmp_path / "scene.tif", RECTS)


def _areas(result):
    return sorted(b.area_m2 for b in result.buildings)


# --------------------------------------------------------------------------- raster inputs


def test_entirely_nodata_raster_says_so_and_finds_nothing(tmp_path, model):
    data = np.zeros((3, 100, 120), np.uint8)
    path = write_raster(tmp_path / "empty.tif", data, UTM, NORTH_UP, nodata=0)
    res = detect_buildings(path, DetectOptions(), model=model)
    assert res.buildings == [] and res.stats["valid_pixels"] == 0
    assert len(res.warnings) == 1 and "no valid pixels" in res.warnings[0] and "nodata" in res.warnings[0]


@pytest.mark.parametrize("dtype, ground, roof", [("float32", 0.05, 0.6), ("int16", -200, 1800)])
def test_non_byte_rasters_are_stretched_per_band(tmp_path, model, dtype, ground, roof):
    """Supported, not refused: every non-uint8 type gets the 2-98 % percentile stretch."""
    path = rect_scene(tmp_path / f"{dtype}.tif", RECTS, dtype=dtype, value=roof, ground=ground)
    res = detect_buildings(path, DetectOptions(), model=model)
    assert _areas(res) == pytest.approx(RECT_AREAS, rel=1e-3)


def test_nan_pixels_of_a_real_raster_are_nodata(tmp_path, model):
    data = np.full((3, 100, 160), 0.1, np.float32)
    data[:, 20:60, 20:60] = 0.9  # a building
    data[:, :, 100:] = np.nan  # no data, but no nodata value declared
    data[:, 40:80, 110:150] = 0.9  # "bright" under NaN in one band only: still no data
    data[1, 40:80, 110:150] = np.nan
    path = write_raster(tmp_path / "nan.tif", data, UTM, NORTH_UP)
    res = detect_buildings(path, DetectOptions(), model=model)
    assert _areas(res) == pytest.approx([1600 * PX_AREA], rel=1e-3)
    assert res.stats["valid_pixels"] == 100 * 100
    assert res.warnings == []


def test_grey_plus_alpha_is_grey_with_alpha_as_validity(tmp_path, model):
    data = np.full((2, 100, 160), DARK, np.uint8)
    data[0, 20:60, 20:60] = BRIGHT
    data[0, 20:60, 100:140] = BRIGHT  # under alpha 0: never a building
    data[1] = 255
    data[1, :, 90:] = 0
    path = str(tmp_path / "la.tif")
    import rasterio
    from rasterio.enums import ColorInterp

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=160,
        height=100,
        count=2,
        dtype="uint8",
        crs=UTM,
        transform=NORTH_UP,
        alpha="YES",
    ) as ds:
        ds.write(data)
        ds.colorinterp = [ColorInterp.gray, ColorInterp.alpha]
    res = detect_buildings(path, DetectOptions(), model=model)
    assert _areas(res) == pytest.approx([1600 * PX_AREA], rel=1e-3)
    assert res.stats["valid_pixels"] == 100 * 90


def _utm_box_at_60n(width_m=23.0, height_m=17.5):
    from pyproj import Transformer

    x, y = Transformer.from_crs(LONLAT, UTM, always_xy=True).transform(3.0, 60.0)  # central meridian of 31N
    return shapely.box(x, y, x + width_m, y + height_m)


@pytest.mark.parametrize("crs", [LONLAT, MERCATOR])
def test_areas_stay_right_far_from_the_equator(tmp_path, model, crs):
    """At 60 N a degree of longitude is half a degree of latitude and Mercator is 2x too long."""
    building = _utm_box_at_60n()
    true_area, true_perimeter = area_perimeter_m(building, UTM)
    path, drawn = scene_in_crs(tmp_path / "north.tif", crs, building)
    res = detect_buildings(path, DetectOptions(), model=model)
    assert len(res.buildings) == 1
    b = res.buildings[0]
    assert b.geometry.intersects(drawn)
    assert b.area_m2 == pytest.approx(true_area, rel=0.01)
    assert b.perimeter_m == pytest.approx(true_perimeter, rel=0.01)
    px_x, px_y = res.stats["raster_pixel_size_m"]
    assert px_x == pytest.approx(0.5, rel=0.02) and px_y == pytest.approx(0.5, rel=0.02)
    if crs == MERCATOR:
        assert drawn.area > 3.9 * true_area  # planar Mercator area would be 4x (1/cos^2 60)
    assert res.warnings == []


# --------------------------------------------------------------------------- model files


def _torchscript_without_metadata(path):
    torch.jit.save(torch.jit.script(BrightnessNet()), str(path))


def _checkpoint(path):
    torch.save(BrightnessNet().state_dict(), str(path))


def _truncated(path, model_path):
    data = open(model_path, "rb").read()
    path.write_bytes(data[: len(data) // 2])


def _asks_for_nir(path, model_path):
    meta = read_metadata(model_path)
    meta["bands"] = ["red", "green", "blue", "nir"]
    torch.jit.save(torch.jit.script(BrightnessNet()), str(path), _extra_files={"metadata.json": json.dumps(meta)})


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "not a TorchScript model .*truncated"),
        ("checkpoint", "not a TorchScript model: a zip archive without Roof Detector metadata or TorchScript code"),
        ("no_metadata", "TorchScript file without Roof Detector metadata"),
        ("nir", r"asks for bands \['red', 'green', 'blue', 'nir'\]; this version supports only"),
    ],
)
def test_unusable_model_files_are_refused_before_any_work(tmp_path, scene, model_path, kind, message):
    bad = tmp_path / f"{kind}.pt"
    {
        "truncated": lambda: _truncated(bad, model_path),
        "checkpoint": lambda: _checkpoint(bad),
        "no_metadata": lambda: _torchscript_without_metadata(bad),
        "nir": lambda: _asks_for_nir(bad, model_path),
    }[kind]()
    with pytest.raises(ModelError, match=message) as info:
        detect_buildings(scene, DetectOptions(model_path=str(bad), device="cpu"))
    assert str(bad) in str(info.value)


def test_model_export_on_a_real_full_disk_leaves_no_file(full_disk):
    """Release 0.2.0 aborted here (c10::Error thrown by torch's zip writer, exit 134): run in a child process."""
    import subprocess
    import sys

    out = full_disk / "lib" / "mine.pt"
    code = (
        "import sys; from devtools.test_model import make_test_model\n"
        "from roof_detector.core.errors import OutputError\n"
        "try:\n    make_test_model(sys.argv[1])\n"
        "except OutputError as exc:\n    print(exc); sys.exit(2)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "disk is full" in proc.stdout and "No model file was written" in proc.stdout
    assert "c10::Error" not in proc.stderr
    assert os.listdir(full_disk / "lib") == []  # no .tmp-*.pt left on the full disk


# --------------------------------------------------------------------------- out of memory


class FlakyGpuNet(BrightnessNet):
    """The brightness model on a pretend GPU that runs out of memory above ``fits`` tiles per call."""

    def __init__(self, fits):
        super().__init__()
        self.fits, self.on_gpu, self.calls = fits, True, []

    def to(self, device, *args, **kwargs):
        if torch.device(device).type == "cpu":
            self.on_gpu = False
        return self

    def forward(self, x):
        self.calls.append(("gpu" if self.on_gpu else "cpu", x.shape[0]))
        if self.on_gpu and x.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


@pytest.fixture
def fake_gpu(monkeypatch, model_path):
    """A factory of LoadedModels on a pretend CUDA device; counts torch.cuda.empty_cache() calls."""
    emptied = []
    monkeypatch.setattr(inference, "_to_device", lambda x, device: x)  # no CUDA here: tensors stay put
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

    def make(fits):
        return LoadedModel(
            module=FlakyGpuNet(fits),
            metadata=read_metadata(model_path),
            device=torch.device("cuda"),
            path="fake-gpu.pt",
            extra={"backend": "torch"},
        )

    make.emptied = emptied
    return make


@pytest.mark.slow
def test_gpu_out_of_memory_retries_with_smaller_batches(scene, model, fake_gpu):
    reference = detect_buildings(scene, DetectOptions(batch_size=8), model=model)
    gpu = fake_gpu(fits=2)
    res = detect_buildings(scene, DetectOptions(batch_size=8), model=gpu)
    assert _areas(res) == pytest.approx(_areas(reference), rel=1e-9)  # nothing lost
    assert gpu.module.calls[:3] == [("gpu", 8), ("gpu", 4), ("gpu", 2)]
    assert {n for _, n in gpu.module.calls[3:]} <= {1, 2} and all(d == "gpu" for d, _ in gpu.module.calls)
    assert sum(n for _, n in gpu.module.calls if n <= 2) == res.stats["tiles"]  # every tile once
    assert len(fake_gpu.emptied) == 2  # cache emptied before each retry
    assert res.stats["batch_size"] == 2 and gpu.device.type == "cuda"
    assert len(res.warnings) == 1
    assert "ran out of memory with 8 tiles per batch" in res.warnings[0] and "with 2 tiles per batch" in res.warnings[0]


@pytest.mark.slow
def test_gpu_out_of_memory_for_one_tile_falls_back_to_the_cpu(scene, model, fake_gpu):
    reference = detect_buildings(scene, DetectOptions(batch_size=4), model=model)
    gpu = fake_gpu(fits=0)
    res = detect_buildings(scene, DetectOptions(batch_size=4), model=gpu)
    assert _areas(res) == pytest.approx(_areas(reference), rel=1e-9)
    assert gpu.module.calls[:4] == [("gpu", 4), ("gpu", 2), ("gpu", 1), ("cpu", 1)]
    assert sum(n for d, n in gpu.module.calls if d == "cpu") == res.stats["tiles"]
    assert gpu.device.type == "cpu" and res.stats["device"].startswith("CPU")
    assert len(res.warnings) == 1 and "went on the CPU" in res.warnings[0] and "even with 1 tile" in res.warnings[0]


def test_out_of_memory_on_the_cpu_with_one_tile_is_an_error(scene, model_path, monkeypatch):
    class NoRoom(BrightnessNet):
        def forward(self, x):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    cpu = LoadedModel(module=NoRoom(), metadata=read_metadata(model_path), device=torch.device("cpu"), path="x")
    with pytest.raises(ModelError, match="Out of memory on the CPU even with one tile"):
        detect_buildings(scene, DetectOptions(batch_size=4), model=cpu)


# --------------------------------------------------------------------------- cancel at every stage


@pytest.mark.parametrize(
    "stage",
    [
        "tiles to process",  # raster opened, nothing read yet
        "Detecting buildings: tile",  # reading, inference, tracing strips
        "Tracing the last building",
    ],
)  # the last strip, after inference
def test_cancel_at_every_stage_leaves_nothing(tmp_path, model, stage):
    many = [(r, c, r + 8, c + 8) for r in range(4, 190, 12) for c in range(4, 290, 12)]  # 384 buildings
    path = rect_scene(tmp_path / "many.tif", many)
    seen = {"cancel": False, "messages": []}

    def progress(fraction, message):
        seen["messages"].append(message)
        if stage in message:
            seen["cancel"] = True

    with pytest.raises(Cancelled, match="nothing was written"):
        detect_buildings(
            path, DetectOptions(batch_size=4), progress=progress, is_cancelled=lambda: seen["cancel"], model=model
        )
    assert seen["cancel"]
    later = {
        "tiles to process": "Detecting",
        "Detecting buildings: tile": "Tracing the last",
        "Tracing the last building": " buildings",
    }[stage]
    assert not any(m.endswith(later) or m.startswith(later) for m in seen["messages"])  # it stopped in that stage


# --------------------------------------------------------------------------- label layers (fine-tune)


ORIGIN = (500000.0, 5000000.0)


def _label_file(path, geometries, epsg=32631, geom_type=None):
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lyr = ds.CreateLayer("labels", srs, geom_type if geom_type is not None else ogr.wkbUnknown)
    for wkt in geometries:
        f = ogr.Feature(lyr.GetLayerDefn())
        if wkt is not None:
            f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        lyr.CreateFeature(f)
    f = lyr = ds = None
    return str(path)


def _sq(x, y, s=10.0, z=None):
    x, y = ORIGIN[0] + x, ORIGIN[1] - y
    pts = [(x, y), (x + s, y), (x + s, y - s), (x, y - s), (x, y)]
    return ",".join(f"{a} {b}" + (f" {z}" if z is not None else "") for a, b in pts)


def test_label_geometries_are_repaired_flattened_or_skipped(tmp_path):
    bowtie = (
        f"POLYGON(({ORIGIN[0]} {ORIGIN[1]},{ORIGIN[0] + 10} {ORIGIN[1] - 10},{ORIGIN[0] + 10} {ORIGIN[1]},"
        f"{ORIGIN[0]} {ORIGIN[1] - 10},{ORIGIN[0]} {ORIGIN[1]}))"
    )
    path = _label_file(
        tmp_path / "mixed.gpkg",
        [
            f"POLYGON(({_sq(20, 20)}))",  # fine
            bowtie,  # invalid: repaired
            f"MULTIPOLYGON((({_sq(40, 20)})),(({_sq(60, 20)})))",  # multi-part: kept whole
            f"POLYGON Z(({_sq(80, 20, z=35.0)}))",  # 3D: flattened
            "POLYGON EMPTY",  # empty: skipped
            None,  # no geometry: skipped
            f"POINT({ORIGIN[0] + 5} {ORIGIN[1] - 5})",  # point: skipped
            f"LINESTRING({ORIGIN[0]} {ORIGIN[1]},{ORIGIN[0] + 30} {ORIGIN[1] - 30})",  # line: skipped
        ],
    )
    layer = read_polygons(path, target_crs_wkt=_wkt(32631))
    assert len(layer.geometries) == 4 and layer.repaired == 1 and layer.skipped == 4
    assert sorted(set(layer.skipped_reasons)) == ["empty", "linestring", "point"]
    assert all(g.is_valid and not g.has_z for g in layer.geometries)
    assert layer.geometries[1].area == pytest.approx(50.0)  # the bowtie's two triangles
    assert layer.geometries[2].geom_type == "MultiPolygon" and layer.geometries[2].area == pytest.approx(200.0)


def _wkt(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


@pytest.fixture
def small_raster(tmp_path):
    data = np.full((3, 128, 128), DARK, np.uint8)
    return write_raster(tmp_path / "ortho.tif", data, UTM, Affine(0.5, 0, ORIGIN[0], 0, -0.5, ORIGIN[1]))


@pytest.mark.parametrize(
    "geometries, message",
    [
        (
            [
                f"POINT({ORIGIN[0] + 5} {ORIGIN[1] - 5})",
                f"LINESTRING({ORIGIN[0]} {ORIGIN[1]},{ORIGIN[0] + 9} {ORIGIN[1]})",
            ],
            r"holds no building polygon: 2 feature\(s\) skipped as not polygons or empty \(linestring, point\)",
        ),
        ([], "holds no building polygon: it has no features"),
        ([f"POLYGON(({_sq(-900, -900)}))"], "No label polygon lies inside the raster"),
    ],
)
def test_label_layers_without_usable_polygons_are_refused(tmp_path, small_raster, geometries, message):
    labels = _label_file(tmp_path / "labels.gpkg", geometries)
    opts = FinetuneOptions(raster_path=small_raster, labels_path=labels, output_path=str(tmp_path / "out.pt"))
    with pytest.raises(LabelError, match=message):
        prepare_data(opts, {"gsd_m": 0.5, "tile_size_px": 64}, log=lambda m: None)
    assert not (tmp_path / "out.pt").exists()


def test_cuda_batch_size_is_fitted_to_free_memory(model_path, monkeypatch):
    from roof_detector.core.inference import GPU_BATCH_MAX, fitted_batch_size

    gpu = LoadedModel(
        module=BrightnessNet(),
        metadata=read_metadata(model_path),
        device=torch.device("cuda"),
        path="fake-gpu.pt",
        extra={"backend": "torch"},
    )
    monkeypatch.setattr(inference, "_cuda_bytes_per_tile", lambda model: 50e6)  # 50 MB per tile
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2e9, 8e9))  # 2 GB free
    assert fitted_batch_size(gpu) == 24  # 60 % of 2 GB / 50 MB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70e9, 80e9))
    assert fitted_batch_size(gpu) == GPU_BATCH_MAX
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30e6, 8e9))
    assert fitted_batch_size(gpu) == 1  # never 0

    def no_probe(model):
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(inference, "_cuda_bytes_per_tile", no_probe)
    assert fitted_batch_size(gpu) == inference.GPU_BATCH_SIZE  # the default, not a crash
    cpu = LoadedModel(module=BrightnessNet(), metadata=read_metadata(model_path), device=torch.device("cpu"), path="x")
    assert fitted_batch_size(cpu) == inference.CPU_BATCH_SIZE


class NanNet(BrightnessNet):
    """A broken model: NaN everywhere (0.2.0 found 0 buildings without a word)."""

    def forward(self, x):
        return super().forward(x) * float("nan")


def test_nan_model_output_is_reported(scene, model_path):
    broken = LoadedModel(
        module=NanNet(),
        metadata=read_metadata(model_path),
        device=torch.device("cpu"),
        path="nan.pt",
        extra={"backend": "torch"},
    )
    res = detect_buildings(scene, DetectOptions(), model=broken)
    assert res.buildings == []
    assert [w for w in res.warnings if "NaN or infinite probabilities" in w and "model file is broken" in w]
