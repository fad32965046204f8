"""detect_buildings end to end on generated rasters with the brightness test model."""

import os
import threading
from unittest import mock

import numpy as np
import pytest
import shapely
from affine import Affine
from osgeo import ogr

from roof_detector.core import background_lane, pipeline
from roof_detector.core.errors import Cancelled, InputRasterError, ModelError, RoofDetectorError
from roof_detector.core.gpkg_writer import write_buildings
from tests.core.geom_helpers import area_perimeter_m
from roof_detector.core.model_io import load_model
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from roof_detector.core.raster_source import PixelWindow, RasterSource
from devtools.test_model import make_test_model

from .synthetic_rasters import (
    BRIGHT,
    DARK,
    LONLAT,
    MERCATOR,
    PX_AREA,
    UTM,
    UTM_ORIGIN,
    rect_scene,
    scene_in_crs,
    touching_pair_scene,
    utm_rect,
    write_raster,
)


def _detect(path, model, **kw):
    return detect_buildings(path, DetectOptions(**kw), model=model)


def test_counts_and_areas_of_rectangles(tmp_path, model):
    # 20 x 30 m and 10 x 10 m buildings, a 2 x 2 m blob under min_area
    path = rect_scene(tmp_path / "r.tif", [(20, 20, 60, 80), (120, 200, 140, 220), (150, 20, 154, 24)])
    res = _detect(path, model)
    assert len(res.buildings) == 2
    areas = sorted(b.area_m2 for b in res.buildings)
    assert areas[0] == pytest.approx(400 * PX_AREA, rel=1e-3)
    assert areas[1] == pytest.approx(2400 * PX_AREA, rel=1e-3)
    big = max(res.buildings, key=lambda b: b.area_m2)
    assert big.perimeter_m == pytest.approx(200 * 0.5 / 0.9996, rel=1e-3)
    assert big.confidence > 0.99
    assert big.geometry.geom_type == "Polygon"
    # polygons come back in the raster CRS, on the drawn pixel edges
    x0, y0 = UTM_ORIGIN
    assert big.geometry.bounds == pytest.approx((x0 + 10, y0 - 30, x0 + 40, y0 - 10))
    assert res.crs_wkt and "UTM zone 31N" in res.crs_wkt
    assert res.raster_path == str(path)
    assert res.model_metadata["name"] == "brightness-test-model"
    assert res.total_area_m2 == pytest.approx(sum(areas))
    assert res.warnings == []


def test_min_area_is_configurable(tmp_path, model):
    path = rect_scene(tmp_path / "r.tif", [(150, 20, 154, 24)])  # 2 x 2 m
    assert _detect(path, model).buildings == []
    assert len(_detect(path, model, min_area_m2=3.0).buildings) == 1


def test_building_across_tile_borders_is_one_seamless_feature(tmp_path, model):
    # tiles of 64 px with stride 56: this block crosses column and row tile borders
    path = rect_scene(tmp_path / "r.tif", [(40, 40, 130, 190)])
    res = _detect(path, model)
    assert res.stats["tiles"] > 4
    assert len(res.buildings) == 1
    b = res.buildings[0]
    assert b.area_m2 == pytest.approx(90 * 150 * PX_AREA, rel=1e-3)
    assert len(b.geometry.interiors) == 0
    assert shapely.get_num_coordinates(b.geometry) == 5  # a clean rectangle: no seam vertices


def test_same_building_same_area_in_utm_mercator_and_degrees(tmp_path, model):
    building = utm_rect(5, 5, 23.0, 17.5)
    true_area, true_perimeter = area_perimeter_m(building, UTM)
    areas = {}
    for crs in (UTM, MERCATOR, LONLAT):
        path, drawn = scene_in_crs(tmp_path / f"{crs.replace(':', '_')}.tif", crs, building)
        res = _detect(path, model)
        assert len(res.buildings) == 1, crs
        b = res.buildings[0]
        assert b.geometry.intersects(drawn)  # in the raster's own CRS
        areas[crs] = b.area_m2
        assert b.area_m2 == pytest.approx(true_area, rel=0.01), crs
        assert b.perimeter_m == pytest.approx(true_perimeter, rel=0.01), crs
    assert max(areas.values()) / min(areas.values()) < 1.01


def test_resampling_to_model_gsd_keeps_ground_area(tmp_path, model):
    # 0.25 m pixels: the model grid is half as fine; and native-0.5-unit Web Mercator (0.32 m ground)
    path = rect_scene(tmp_path / "fine.tif", [(40, 40, 160, 200)], shape=(300, 300), pixel_m=0.25)
    res = _detect(path, model)
    assert res.stats["model_grid_px"] == (150, 150)
    assert len(res.buildings) == 1
    assert res.buildings[0].area_m2 == pytest.approx(120 * 160 * 0.0625 / 0.9996**2, rel=0.02)

    merc = rect_scene(
        tmp_path / "merc.tif",
        [(40, 40, 160, 200)],
        shape=(300, 300),
        pixel_m=0.5,
        crs=MERCATOR,
        origin=(334000.0, 6446000.0),
    )
    res = _detect(merc, model)
    lat = 50.0
    expected = 120 * 160 * 0.25  # Mercator units^2 ...
    scale2 = np.cos(np.radians(lat + 0.0)) ** 2  # ... times cos^2(lat) on the ground (~0.41)
    assert len(res.buildings) == 1
    assert res.buildings[0].area_m2 == pytest.approx(expected * scale2, rel=0.03)


def test_grey_uint16_raster(tmp_path, model):
    path = rect_scene(tmp_path / "g16.tif", [(20, 20, 80, 100)], bands=1, dtype="uint16", value=3000, ground=400)
    res = _detect(path, model)
    assert len(res.buildings) == 1
    assert res.buildings[0].area_m2 == pytest.approx(60 * 80 * PX_AREA, rel=1e-3)


def test_raster_smaller_than_one_tile(tmp_path, model):
    path = rect_scene(tmp_path / "tiny.tif", [(5, 5, 25, 35)], shape=(30, 40))
    res = _detect(path, model)
    assert res.stats["tiles"] == 1
    assert len(res.buildings) == 1
    assert res.buildings[0].area_m2 == pytest.approx(20 * 30 * PX_AREA, rel=1e-3)


def _bright_with_invalid(tmp_path, kind):
    """Everything bright except a dark ground strip; the left half is invalid (nodata/mask/alpha).

    Returns the path and the valid half as a box in the raster CRS.
    """
    rows, cols = 100, 160
    data = np.full((4 if kind == "alpha" else 3, rows, cols), BRIGHT, np.uint8)
    data[:3, 45:55, :] = DARK  # splits the valid half into two buildings
    t = Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1])
    kwargs = {}
    if kind == "nodata":
        data[:3, :, :80] = 255  # white nodata: bright, must not count
        kwargs["nodata"] = 255
    elif kind == "mask":
        mask = np.ones((rows, cols), bool)
        mask[:, :80] = False
        kwargs["mask"] = mask
    else:
        data[3] = 255
        data[3, :, :80] = 0
        kwargs["alpha"] = True
    path = write_raster(tmp_path / f"{kind}.tif", data, UTM, t, **kwargs)
    return path, shapely.box(UTM_ORIGIN[0] + 40, UTM_ORIGIN[1] - 50, UTM_ORIGIN[0] + 80, UTM_ORIGIN[1])


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha"])
def test_invalid_pixels_never_become_buildings(tmp_path, model, kind):
    path, valid_half = _bright_with_invalid(tmp_path, kind)
    res = _detect(path, model)
    assert len(res.buildings) == 2  # the two valid bright blocks...
    for b in res.buildings:  # ...and nothing from the invalid half
        assert valid_half.buffer(1e-6).contains(b.geometry)
    assert sum(b.area_m2 for b in res.buildings) == pytest.approx(80 * 90 * PX_AREA, rel=1e-3)
    assert res.stats["valid_pixels"] == 80 * 100


def test_threshold_override(tmp_path, model):
    # mean 0.52 -> probability sigmoid(40 * 0.02) = 0.69
    path = rect_scene(tmp_path / "dim.tif", [(20, 20, 60, 60)], value=133)
    assert len(_detect(path, model).buildings) == 1
    assert _detect(path, model, threshold=0.8).buildings == []
    with pytest.raises(RoofDetectorError, match="Threshold must be from 0.01 to 0.99"):
        _detect(path, model, threshold=1.5)


def test_small_holes_filled_large_holes_kept(tmp_path, model):
    path = rect_scene(tmp_path / "holes.tif", [(10, 10, 90, 90), (10, 110, 90, 190)])
    import rasterio

    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        data[:, 40:42, 40:42] = DARK  # 1 m2 speckle hole
        data[:, 40:50, 140:150] = DARK  # 25 m2 courtyard
        ds.write(data)
    res = _detect(path, model)
    by_x = sorted(res.buildings, key=lambda b: b.geometry.bounds[0])
    assert len(by_x) == 2
    assert len(by_x[0].geometry.interiors) == 0
    assert by_x[0].area_m2 == pytest.approx(6400 * PX_AREA, rel=1e-3)
    assert len(by_x[1].geometry.interiors) == 1
    assert by_x[1].area_m2 == pytest.approx(6300 * PX_AREA, rel=1e-3)


def test_area_of_interest_limits_work_and_clips(tmp_path, model):
    path = rect_scene(tmp_path / "aoi.tif", [(20, 20, 60, 80), (120, 200, 180, 280)], shape=(200, 300))
    x0, y0 = UTM_ORIGIN
    # covers the first building (x 10..40, y -30..-10 m) whole, misses the second
    aoi = shapely.box(x0 + 5, y0 - 40, x0 + 60, y0 - 5)
    res = _detect(path, model, aoi_wkt=aoi.wkt)
    assert len(res.buildings) == 1
    assert res.stats["tiles"] < res.stats["tiles_full_raster"]
    # an AOI cutting a building clips it
    cut = shapely.box(x0 + 5, y0 - 40, x0 + 25, y0 - 5)
    res = _detect(path, model, aoi_wkt=cut.wkt)
    assert len(res.buildings) == 1
    assert res.buildings[0].area_m2 == pytest.approx(15 * 20 / 0.9996**2, rel=1e-3)  # x 10..25, y -30..-10
    assert cut.buffer(1e-6).contains(res.buildings[0].geometry)


def test_area_of_interest_errors(tmp_path, model):
    path = rect_scene(tmp_path / "aoi.tif", [])
    with pytest.raises(InputRasterError, match="does not overlap"):
        _detect(path, model, aoi_wkt=shapely.box(0, 0, 10, 10).wkt)
    with pytest.raises(InputRasterError, match="not valid WKT"):
        _detect(path, model, aoi_wkt="POLYGON((garbage")


def test_coarse_pixels_warn(tmp_path, model):
    path = rect_scene(tmp_path / "coarse.tif", [(5, 5, 10, 10)], shape=(16, 16), pixel_m=5.0)
    res = _detect(path, model)
    assert len(res.warnings) == 1 and "coarser" in res.warnings[0] and "5.00 m" in res.warnings[0]


def test_progress_reaches_one_and_stage_timings_are_reported(tmp_path, model):
    path = rect_scene(tmp_path / "p.tif", [(20, 20, 60, 80)])
    seen = []
    res = detect_buildings(path, DetectOptions(batch_size=3), progress=lambda f, m: seen.append((f, m)), model=model)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("tile" in m for _, m in seen)
    assert res.stats["batches"] == -(-res.stats["tiles"] // 3)
    assert set(res.stats["timings_s"]) >= {
        "read",
        "infer",
        "write",
        "polygonise",
        "attributes",
        "outlines_after_inference",
    }


def test_cancel_stops_before_the_next_batch(tmp_path, model):
    path = rect_scene(tmp_path / "c.tif", [(20, 20, 60, 80)])
    calls = []

    def is_cancelled():
        if threading.current_thread() is threading.main_thread():  # the outline thread asks too
            calls.append(1)
        return len(calls) > 2  # after two batches

    with pytest.raises(Cancelled):
        detect_buildings(path, DetectOptions(batch_size=2), is_cancelled=is_cancelled, model=model)
    assert len(calls) == 3


class ArraySource(RasterSource):
    """A raster held in memory: proves the pipeline needs nothing but the interface."""

    def __init__(self, rgb, transform, crs_wkt):
        self.rgb, self._t, self._crs = rgb, transform, crs_wkt
        self.reads = 0

    name = property(lambda self: "in-memory")
    crs_wkt = property(lambda self: self._crs)
    transform = property(lambda self: self._t)
    width = property(lambda self: self.rgb.shape[2])
    height = property(lambda self: self.rgb.shape[1])
    band_count = property(lambda self: 3)
    dtype = property(lambda self: "float32")

    def read(self, window: PixelWindow, out_shape):
        self.reads += 1
        c0, r0 = int(round(window.col_off)), int(round(window.row_off))
        part = self.rgb[:, r0 : r0 + out_shape[0], c0 : c0 + out_shape[1]]
        return part.copy(), np.ones(out_shape, bool)


def test_any_raster_source_works(model):
    rgb = np.full((3, 100, 100), 0.1, np.float32)
    rgb[:, 10:50, 60:90] = 0.9
    src = ArraySource(rgb, Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1]), UTM)
    res = detect_buildings(src, DetectOptions(), model=model)
    # one read per run of neighbouring tiles in a batch (read_tiles): a 2 x 2 tile grid, one row a read
    assert res.stats["tiles"] == 4 and src.reads == 2
    assert len(res.buildings) == 1
    assert res.buildings[0].area_m2 == pytest.approx(1200 * PX_AREA, rel=1e-3)


def test_model_loading_errors(tmp_path, monkeypatch):
    path = rect_scene(tmp_path / "r.tif", [])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a model")
    with pytest.raises(ModelError, match="not a TorchScript model"):
        detect_buildings(path, DetectOptions(model_path=str(bad)))
    monkeypatch.setattr(pipeline, "BUNDLED_MODEL_PATH", tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="bundled model .* is missing"):
        detect_buildings(path, DetectOptions())


def test_model_path_option_loads_that_model(tmp_path, model_path):
    path = rect_scene(tmp_path / "r.tif", [(20, 20, 60, 80)])
    res = detect_buildings(path, DetectOptions(model_path=model_path, device="cpu"))
    assert len(res.buildings) == 1 and res.stats["device"].startswith("CPU")


@pytest.mark.parametrize("kind", ["nodata", "mask"])
def test_invalid_pixels_stay_out_when_resampled(tmp_path, model, kind):
    # 0.3 m pixels: the model grid (0.5 m) blends neighbours; hidden white must not bleed in
    data = np.full((3, 200, 200), 100, np.uint8)
    data[:, :, :101] = 255
    kwargs = {"nodata": 255} if kind == "nodata" else {"mask": np.arange(200)[None, :].repeat(200, 0) >= 101}
    path = write_raster(
        tmp_path / f"{kind}.tif", data, UTM, Affine(0.3, 0, UTM_ORIGIN[0], 0, -0.3, UTM_ORIGIN[1]), **kwargs
    )
    res = _detect(path, model, min_area_m2=0.0)
    assert res.stats["model_grid_px"] == (120, 120)
    assert res.buildings == []
    # the same white block, valid, is found: the test can fail
    unmasked = write_raster(tmp_path / "plain.tif", data, UTM, Affine(0.3, 0, UTM_ORIGIN[0], 0, -0.3, UTM_ORIGIN[1]))
    assert len(_detect(unmasked, model, min_area_m2=0.0).buildings) == 1


def _peak_python_allocations(tmp_path, rows: int, model) -> tuple:
    import tracemalloc

    import rasterio

    n = 2000
    path = str(tmp_path / f"big{rows}.tif")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=n,
        height=rows,
        count=3,
        dtype="uint8",
        crs=UTM,
        transform=Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1]),
        tiled=True,
        compress="deflate",
    ) as ds:
        block = np.full((3, 200, n), DARK, np.uint8)
        for c in range(0, n, 100):
            block[:, 50:90, c + 10 : c + 60] = BRIGHT  # 25 x 20 m buildings, 20 per 200-row band
        for r in range(0, rows, 200):
            ds.write(block, window=rasterio.windows.Window(0, r, n, 200))
    tracemalloc.start()
    try:
        res = detect_buildings(path, DetectOptions(batch_size=2), model=model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, len(res.buildings)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_raster_height(tmp_path):
    """Tiles are stitched into one strip of rows at a time and traced strip by strip: the
    peak of Python-side allocations for 3000 rows of 2000 px is that of 1000 rows plus at
    most the outline thread's queue (8 batches, ~5 MB here, filled or not depending on
    scheduling), where a float mosaic would add 16 MB, and stays under the 24 MB such a
    mosaic of the larger raster would take by itself (its RGB alone is 18 MB)."""
    model = load_model(make_test_model(str(tmp_path / "m256.pt"), tile_size_px=256, overlap_px=16), "cpu")
    peak_small, found_small = _peak_python_allocations(tmp_path, 1000, model)
    peak_large, found_large = _peak_python_allocations(tmp_path, 3000, model)
    assert (found_small, found_large) == (5 * 20, 15 * 20)
    assert peak_large < peak_small + 8e6, f"peaks {peak_small / 1e6:.1f} MB -> {peak_large / 1e6:.1f} MB"
    assert peak_large < 20e6, f"peak Python allocations {peak_large / 1e6:.1f} MB"


@pytest.mark.skipif(not hasattr(os, "getpriority") or not os.uname().sysname == "Linux", reason="Linux thread nice")
def test_outline_thread_runs_at_low_priority_and_the_caller_keeps_its_own(tmp_path, model, monkeypatch):
    monkeypatch.setattr(background_lane, "BUSY_MACHINE_CORES", 1e9)  # the idle class even on a busy CI machine
    seen = {}
    real = pipeline.StripVectorizer.add

    def add(self, *strip):
        seen["outline"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["policy"] = os.sched_getscheduler(threading.get_native_id())
        return real(self, *strip)

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    path = rect_scene(tmp_path / "n.tif", [(20, 20, 60, 80)])
    with mock.patch.object(pipeline.StripVectorizer, "add", add):
        res = detect_buildings(path, DetectOptions(batch_size=2), model=model)
    assert len(res.buildings) == 1
    assert seen["outline"] == min(19, max(before, background_lane.BACKGROUND_NICE))
    assert seen["policy"] == os.SCHED_IDLE  # a waking model thread takes its core at once
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER


def test_touching_roofs_are_separated_and_nothing_is_lost(tmp_path, model):
    # rows 40-100 cross the tile-row border at 56 (64 px tiles, stride 56): the pair is carried across strips
    path, pixels = touching_pair_scene(tmp_path / "pair.tif")
    split = _detect(path, model, regularize=False)
    whole = _detect(path, model, regularize=False, separate_touching=False)
    assert len(whole.buildings) == 1 and len(split.buildings) == 2
    assert whole.total_area_m2 == pytest.approx(pixels * PX_AREA, rel=1e-3)
    assert split.total_area_m2 == pytest.approx(whole.total_area_m2, rel=1e-6)
    x0, y0 = UTM_ORIGIN
    left = shapely.Point(x0 + 35, y0 - 35)  # centre of the left roof (col 70, row 70)
    right = shapely.Point(x0 + 67, y0 - 35)  # centre of the right roof (col 134)
    owners = [[b.geometry.contains(p) for p in (left, right)] for b in split.buildings]
    assert sorted(owners) == [[False, True], [True, False]]
    assert all(b.area_m2 >= 3600 * PX_AREA for b in split.buildings)  # the bridge is shared out, not dropped


def test_every_detection_has_the_shape_field_null_when_not_regularised(tmp_path, model):
    # One schema for runs with and without regularisation: the field is there, unclassified (null).
    path = rect_scene(tmp_path / "r.tif", [(20, 20, 60, 80)])
    plain, squared = _detect(path, model, regularize=False), _detect(path, model)
    assert [b.attributes["shape"] for b in plain.buildings] == [None]
    assert [b.attributes["shape"] for b in squared.buildings] == ["rectilinear"]
    gpkg = str(tmp_path / "plain.gpkg")
    write_buildings(plain.buildings, gpkg, plain.crs_wkt)
    ds = ogr.Open(gpkg)
    defn = ds.GetLayer(0).GetLayerDefn()
    assert "shape" in [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    ds = None


def test_separation_with_a_custom_threshold(tmp_path, model):
    path, _ = touching_pair_scene(tmp_path / "pair.tif")
    assert len(_detect(path, model, threshold=0.95).buildings) == 2  # the bridge is not building at 0.95
    assert len(_detect(path, model, threshold=0.6).buildings) == 2
    assert len(_detect(path, model, threshold=0.6, separate_touching=False).buildings) == 1


def _recording_model_calls(calls):
    """A patch of BatchPredictor.__call__ recording (thread, start, end) of every model call."""
    import time

    from roof_detector.core.inference import BatchPredictor

    real = BatchPredictor.__call__

    def call(self, rgb):
        t0 = time.perf_counter()
        try:
            return real(self, rgb)
        finally:
            calls.append((threading.current_thread().name, t0, time.perf_counter()))

    return mock.patch.object(BatchPredictor, "__call__", call)


def test_runs_sharing_a_network_lock_take_turns_and_overlap_their_last_outlines(tmp_path, model):
    """detect-many's two jobs per worker: the lock is held from the first tile predicted to the
    last, so two runs' model calls never interleave, and the second run predicts while the first
    still traces its last outlines (here made slow)."""
    import time

    path = rect_scene(tmp_path / "t.tif", [(20, 20, 60, 80)])
    lock = threading.Lock()
    calls, returned, results = [], {}, {}
    real_finish = pipeline.StripVectorizer.finish

    def slow_finish(self):  # on the outline thread; the first run's finishes first (it predicted first)
        if not returned and not getattr(slow_finish, "slept", False):
            slow_finish.slept = True
            time.sleep(1.0)
        return real_finish(self)

    def run(name):
        results[name] = detect_buildings(path, DetectOptions(batch_size=2), model=model, network_lock=lock)
        returned[name] = time.perf_counter()

    with _recording_model_calls(calls), mock.patch.object(pipeline.StripVectorizer, "finish", slow_finish):
        first = threading.Thread(target=run, args=("first",), name="first")
        first.start()
        while not lock.locked():
            time.sleep(0.005)
        second = threading.Thread(target=run, args=("second",), name="second")
        second.start()
        first.join(60)
        second.join(60)
    by = {n: [(a, b) for t, a, b in calls if t == n] for n in ("first", "second")}
    assert len(by["first"]) == len(by["second"]) == -(-results["first"].stats["tiles"] // 2) > 1
    # turns: every model call of the second run after the last of the first
    assert max(b for _, b in by["first"]) <= min(a for a, _ in by["second"])
    # the second run's network started while the first was still tracing
    assert min(a for a, _ in by["second"]) < returned["first"] - 0.5
    assert results["second"].stats["timings_s"]["network_lock_wait"] > 0
    assert [b.geometry.wkb for b in results["first"].buildings] == [b.geometry.wkb for b in results["second"].buildings]
    assert not lock.locked()


def test_a_cancel_ends_the_wait_for_the_network_lock(tmp_path, model):
    import time

    path = rect_scene(tmp_path / "w.tif", [(20, 20, 60, 80)])
    lock = threading.Lock()
    lock.acquire()  # another job is predicting
    t0 = time.perf_counter()
    try:
        with pytest.raises(Cancelled):
            detect_buildings(
                path,
                DetectOptions(),
                model=model,
                is_cancelled=lambda: time.perf_counter() - t0 > 0.3,
                network_lock=lock,
            )
        assert time.perf_counter() - t0 < 2.0
    finally:
        lock.release()
    res = detect_buildings(path, DetectOptions(), model=model, network_lock=lock)  # free: runs
    assert len(res.buildings) == 1 and not lock.locked()


def test_the_outline_thread_leaves_the_idle_class_when_the_run_ends_early(model, monkeypatch):
    """A cancel or an error may leave a model call running on every core, where an idle-class
    thread would hardly run: the strip in progress ends in the normal class (at nice 19)."""
    from roof_detector.core.outline_worker import OutlineWorker

    monkeypatch.setattr(background_lane, "BUSY_MACHINE_CORES", 1e9)

    release, seen = threading.Event(), {}

    class Blocking:
        buildings: list = []

        def add(self, *strip):
            seen["before"] = os.sched_getscheduler(threading.get_native_id())
            release.wait(10)
            seen["after"] = os.sched_getscheduler(threading.get_native_id())

    class Mosaic:
        def add(self, tile, prob, valid):
            return (0, prob, valid)

    tile = mock.Mock(keep=(0, 0, 1, 1), row_off=0, col_off=0)
    with pytest.raises(RuntimeError):
        with OutlineWorker(Mosaic(), Blocking()) as outlines:
            outlines.submit([(tile, np.zeros((1, 1)), np.ones((1, 1), bool))])
            while "before" not in seen:
                threading.Event().wait(0.01)
            threading.Timer(0.3, release.set).start()  # __exit__ below waits for the strip in progress
            raise RuntimeError("cancelled")
    assert seen == {"before": os.SCHED_IDLE, "after": os.SCHED_OTHER}


def _turned_building_scene(path, angle_deg=30.0, shape=(160, 160)):
    """A bright 60 x 36 px rectangle turned ``angle_deg``, its centre 8 px inside the left edge."""
    from rasterio import features
    from shapely import affinity

    rect = affinity.rotate(shapely.box(-30, -18, 30, 18), angle_deg, origin=(0, 0))
    rect = affinity.translate(rect, 8, shape[0] / 2)  # pixel coordinates (col, row)
    mask = features.rasterize([rect], out_shape=shape, transform=Affine.identity()).astype(bool)
    img = np.full((3,) + shape, DARK, dtype=np.uint8)
    img[:, mask] = BRIGHT
    return write_raster(path, img, UTM, Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1]))


def test_squared_outlines_stay_on_the_raster_and_in_the_area_of_interest(tmp_path, model):
    # A turned building cut by the raster's left edge: squared along its own axes, its outline
    # would reach past the edge; it is cut there, and measured as cut (QA, session 9).
    path = _turned_building_scene(tmp_path / "edge.tif")
    x0, y0 = UTM_ORIGIN
    raster = shapely.box(x0, y0 - 80, x0 + 80, y0)
    res = _detect(path, model, regularize=True)
    assert len(res.buildings) == 1
    b = res.buildings[0]
    assert b.geometry.is_valid and raster.buffer(1e-6).contains(b.geometry)
    assert b.area_m2 == pytest.approx(area_perimeter_m(b.geometry, res.crs_wkt)[0], rel=1e-4)  # measured as cut
    # the same inside an area of interest turned 45 degrees across the building
    aoi = shapely.affinity.rotate(shapely.box(x0 - 20, y0 - 60, x0 + 16, y0 - 20), 45)
    res = _detect(path, model, regularize=True, aoi_wkt=aoi.wkt)
    assert res.buildings and all(aoi.buffer(1e-6).contains(b.geometry) for b in res.buildings)
