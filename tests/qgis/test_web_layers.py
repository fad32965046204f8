"""Detection on any QGIS raster layer: XYZ tiles from a loopback server, VRTs, in-memory rasters.

The web scene is a 512 x 512 px EPSG:3857 image exactly on the 2 x 2 tiles
(131072..131073, 131070..131071) of zoom 18 (0.597 m pixels, just north of
the equator), dark ground with bright rectangles. The server also has zoom
17 and 19 versions, so the test sees which zoom the reader picks for the
0.5 m test model (18: 0.597 m is closer than 0.299 m).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.qgis.conftest import RECTANGLES, make_request, wait_for
from tests.qgis.tile_server import TileServer, cut_tiles, xyz_uri, zoom_resolution

pytestmark = pytest.mark.qgis

Z = 18
TX0, TY0 = 1 << 17, (1 << 17) - 2
SIZE = 512
# (row, col, rows, cols) in zoom-18 pixels; the third crosses the tile row boundary at 256
WEB_RECTANGLES = [(40, 40, 50, 70), (60, 300, 40, 40), (200, 100, 70, 45), (300, 330, 60, 90), (420, 60, 45, 110)]
_RUN = itertools.count()


def _scene() -> np.ndarray:
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., :3] = 30
    rgba[..., 3] = 255
    for row, col, rows, cols in WEB_RECTANGLES:
        rgba[row : row + rows, col : col + cols, :3] = 220
    return rgba


def _bounds():
    r = zoom_resolution(Z)
    half = 20037508.342789244
    x0, y0 = -half + TX0 * 256 * r, half - TY0 * 256 * r
    return x0, y0 - SIZE * r, x0 + SIZE * r, y0


def _bounds_wkt(bounds) -> str:
    from shapely.geometry import box

    return box(*bounds).wkt


@pytest.fixture(scope="module")
def scene_tiles(qgis_app):
    rgba = _scene()
    tiles = cut_tiles(rgba, Z, TX0, TY0)
    low = rgba.reshape(SIZE // 2, 2, SIZE // 2, 2, 4).mean(axis=(1, 3)).astype(np.uint8)
    tiles.update(cut_tiles(low, Z - 1, TX0 // 2, TY0 // 2))
    high = np.repeat(np.repeat(rgba, 2, axis=0), 2, axis=1)
    tiles.update(cut_tiles(high, Z + 1, TX0 * 2, TY0 * 2))
    return tiles


@pytest.fixture(scope="module")
def scene_tif(tmp_path_factory) -> str:
    """The same image as a GeoTIFF in EPSG:3857 (what the tiles were cut from)."""
    import rasterio
    from rasterio.transform import from_bounds

    path = str(tmp_path_factory.mktemp("web") / "scene_3857.tif")
    data = np.moveaxis(_scene()[..., :3], -1, 0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=3,
        dtype="uint8",
        crs="EPSG:3857",
        transform=from_bounds(*_bounds(), SIZE, SIZE),
    ) as dst:
        dst.write(data)
    return path


@pytest.fixture
def tile_server(scene_tiles):
    servers = []

    def start(fail_every: int = 0) -> TileServer:
        server = TileServer(scene_tiles, fail_every)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fast_retries(monkeypatch):
    """Back-off in milliseconds, so failing servers do not slow the suite."""
    from roof_detector.qgis_io import xyz
    from roof_detector.qgis_io.workers import RetryPolicy

    policy = RetryPolicy(attempts=4, first_delay_s=0.01, factor=2.0, max_delay_s=0.05)
    monkeypatch.setattr(xyz, "DEFAULT_RETRY", policy)
    return policy


def _xyz_layer(project, server: TileServer, name: str = "tiles", add: bool = False):
    """An XYZ layer on ``server``; added to the project only when the test needs it there
    (a map canvas left over from another test would draw it and make requests of its own)."""
    from qgis.core import QgsRasterLayer

    url = server.url + f"?run={next(_RUN)}"  # fresh URLs: QGIS's network cache never answers for a server
    layer = QgsRasterLayer(xyz_uri(url, Z - 1, Z + 1), name, "wms")
    assert layer.isValid()
    if add:
        project.addMapLayer(layer)
    return layer


def _areas(layer):
    return sorted(f["area_m2"] for f in layer.getFeatures())


def _assert_same_buildings(areas, expected, rel=0.02):
    assert len(areas) == len(expected)
    for got, want in zip(areas, expected):
        assert got == pytest.approx(want, rel=rel)


@pytest.fixture(scope="module")
def geotiff_areas(scene_tif, model_path, qgis_app):
    """The reference: the buildings found on the source GeoTIFF (rasterio)."""
    from roof_detector.qgis_adapter.task import DetectTask

    task = DetectTask(make_request(scene_tif, model_path, crs="EPSG:3857"))
    assert task.run(), task.error
    areas = _areas(task.layer)
    assert len(areas) == len(WEB_RECTANGLES)
    return areas


def _web_request(layer, model_path, aoi_wkt, **kwargs):
    from roof_detector.qgis_adapter.request import DetectRequest, raster_input

    return DetectRequest.for_layer(
        raster_input(layer),
        options=dict(model_path=model_path, device="cpu", min_area_m2=5.0, aoi_wkt=aoi_wkt),
        **kwargs,
    )


# -- XYZ through the real task ------------------------------------------------------------------


def test_xyz_layer_finds_the_same_buildings_as_the_geotiff(
    plugin, project, tile_server, model_path, qgis_app, geotiff_areas
):
    server = tile_server()
    layer = _xyz_layer(project, server)
    request = _web_request(layer, model_path, _bounds_wkt(_bounds()))
    assert request.reader == "xyz" and request.crs == "EPSG:3857"
    task = plugin.start(request)
    wait_for(task, qgis_app)
    result = project.mapLayer(plugin.last_layer_id)
    assert result is not None, task.error
    assert result.crs().authid() == "EPSG:3857"
    _assert_same_buildings(_areas(result), geotiff_areas)
    # only the zoom closest to 0.5 m, each of the 4 tiles once
    assert server.zooms() == [Z]
    assert len(server.requests) == 4


def test_failing_requests_are_retried_and_the_result_is_complete(
    plugin, project, tile_server, model_path, qgis_app, geotiff_areas, fast_retries
):
    server = tile_server(fail_every=3)
    layer = _xyz_layer(project, server)
    task = plugin.start(_web_request(layer, model_path, _bounds_wkt(_bounds())))
    wait_for(task, qgis_app)
    result = project.mapLayer(plugin.last_layer_id)
    assert result is not None, task.error
    assert server.failures >= 1 and len(server.requests) > 4
    _assert_same_buildings(_areas(result), geotiff_areas)


def test_server_down_gives_a_clear_message_and_no_layer(
    plugin, project, tile_server, model_path, qgis_app, qgis_iface, fast_retries
):
    server = tile_server()
    layer = _xyz_layer(project, server)
    server.close()  # nothing listens on the port any more
    task = plugin.start(_web_request(layer, model_path, _bounds_wkt(_bounds())))
    wait_for(task, qgis_app)
    assert plugin.last_layer_id is None and project.count() == 0
    messages = " ".join(qgis_iface.messageBar().get_messages(2))
    assert f"127.0.0.1:{server.port}" in messages
    assert "did not deliver" in messages and "attempts" in messages and "nothing was written" in messages


def test_cancel_is_honoured_between_requests(tile_server, fast_retries):
    from roof_detector.core.errors import Cancelled
    from roof_detector.qgis_io.xyz import TileFetcher, XyzTemplate

    server = tile_server(fail_every=1)  # every request fails: the fetcher keeps retrying
    calls = []

    def is_cancelled():
        calls.append(1)
        return len(server.requests) >= 3

    fetcher = TileFetcher(XyzTemplate(server.url), is_cancelled, max_in_flight=2)
    try:
        with pytest.raises(Cancelled):
            fetcher.fetch([(Z, TX0 + i, TY0) for i in range(20)])
    finally:
        fetcher.close()
    assert 3 <= len(server.requests) <= 3 + 2  # the ones in flight when cancel came finish, no more start


def test_in_flight_requests_are_bounded(tile_server, scene_tiles):
    import threading
    import time

    from roof_detector.qgis_io.xyz import TileFetcher, XyzTemplate

    server = tile_server()
    lock, state = threading.Lock(), {"now": 0, "max": 0}
    original = server.httpd.RequestHandlerClass.do_GET

    def slow_get(handler):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        try:
            original(handler)
        finally:
            with lock:
                state["now"] -= 1

    server.httpd.RequestHandlerClass.do_GET = slow_get
    fetcher = TileFetcher(XyzTemplate(server.url + "?bounded"), max_in_flight=2)
    try:
        tiles = fetcher.fetch([k for k in scene_tiles if k[0] == Z + 1])
    finally:
        fetcher.close()
    assert len(tiles) == 16 and all(t is not None for t in tiles.values())
    assert state["max"] == 2


# -- zoom choice, plan, dialog ---------------------------------------------------------------------


def test_zoom_level_closest_to_the_model_resolution():
    from roof_detector.qgis_io.xyz import XyzTemplate, choose_zoom, plan_xyz, zoom_resolution

    assert choose_zoom(0.5, 0, 20) == 18  # 0.597 m beats 0.299 m
    assert choose_zoom(0.4, 0, 20) == 19  # 0.299 m beats 0.597 m
    assert choose_zoom(0.5, 0, 16) == 16  # the finest zoom the service has
    assert choose_zoom(0.5, 0, 20, pixel_ratio=2) == 17  # 512 px tiles: zoom 17 has 0.299 m pixels
    assert zoom_resolution(18) == pytest.approx(0.5972, abs=1e-4)
    # at 60 degrees north a 3857 metre is 0.5 m on the ground: 0.5 m pixels need 1 m in 3857 -> zoom 17
    y60 = 8399737.89
    plan = plan_xyz((0.0, y60 - 100, 100.0, y60), XyzTemplate("http://h/{z}/{x}/{y}.png", 0, 20), 0.5)
    assert plan.zoom == 17 and plan.ground_px_m == pytest.approx(0.597, rel=0.01)


def test_url_template_and_parameters():
    from roof_detector.qgis_io.workers import ServiceError
    from roof_detector.qgis_io.xyz import XyzTemplate, quadkey

    t = XyzTemplate.from_params(
        {
            "type": "xyz",
            "url": "https://t.example/{z}/{x}/{-y}.jpg",
            "zmin": "2",
            "zmax": "19",
            "referer": "https://me",
            "tilePixelRatio": "2",
        }
    )
    assert (t.zmin, t.zmax, t.tile_px, t.host) == (2, 19, 512, "t.example")
    assert t.tile_url(3, 1, 2) == "https://t.example/3/1/5.jpg"
    assert ("Referer", "https://me") in t.headers
    assert quadkey(3, 3, 5) == "213"
    assert XyzTemplate("https://b/{q}.png").tile_url(3, 3, 5) == "https://b/213.png"
    with pytest.raises(ServiceError, match="placeholders"):
        XyzTemplate.from_params({"url": "https://t.example/tile.png"})


def test_dialog_refuses_the_whole_world_and_estimates_an_area(qgis_iface, project, tile_server, model_path):
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle, QgsVectorLayer

    from roof_detector.qgis_ui.dialog import DetectDialog

    layer = _xyz_layer(project, tile_server(), "OSM", add=True)
    qgis_iface.setActiveLayer(layer)
    dialog = DetectDialog(qgis_iface)
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("file"))
    dialog.model_file.setFilePath(model_path)
    assert dialog.raster_combo.currentLayer() is layer and dialog.area_combo.currentData() == "layer"
    assert "whole world" in dialog.estimate_label.text()
    dialog.accept()
    assert dialog.request is None
    from roof_detector.qgis_ui.message_bar import item_text

    text = item_text(dialog.bar.currentItem())
    assert "whole world" in text and "drawn on the map" in text

    zones = QgsVectorLayer("Polygon?crs=EPSG:3857", "zones", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(*_bounds())))
    zones.dataProvider().addFeatures([feature])
    project.addMapLayer(zones)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("selection"))
    dialog.aoi_layer_combo.setLayer(zones)
    assert "No polygons are selected" in dialog.estimate_label.text()
    zones.selectAll()  # the label follows the selection
    estimate = dialog.estimate_label.text()
    assert "4 tile requests (zoom 18)" in estimate and "model tiles" in estimate and "minute" in estimate
    dialog.accept()
    request = dialog.request
    assert request is not None and request.reader == "xyz" and request.provider == "wms"
    assert request.layer_params["url"].startswith("http://127.0.0.1:")
    assert request.aoi_wkt and request.raster_path == ""


def test_too_large_an_area_is_refused(project, tile_server):
    from roof_detector.qgis_io import layer_input, plan_area
    from roof_detector.qgis_adapter.request import RequestError, plan_run, raster_input

    layer = _xyz_layer(project, tile_server())
    inp = layer_input(layer)
    assert inp.reader == "xyz" and inp.is_web
    meta = {"gsd_m": 0.5, "tile_size_px": 512, "overlap_px": 64}
    country = _bounds_wkt((0.0, 0.0, 500000.0, 500000.0))  # 500 km square
    with pytest.raises(RequestError, match="Zoom in"):
        plan_run(raster_input(layer), country, meta)
    plan = plan_area(inp, 0.5, aoi_wkt=_bounds_wkt(_bounds()))
    assert plan.requests == 4 and plan.zoom == 18 and plan.refusal("x", whole_layer=False) == ""


# -- the render path (WMS/WMTS-like: QGIS's own provider draws the layer) --------------------------


def test_render_path_reads_through_the_qgis_provider(project, tile_server, model_path, geotiff_areas):
    import dataclasses

    from roof_detector.qgis_io import READER_RENDER, layer_input
    from roof_detector.qgis_adapter.request import DetectRequest
    from roof_detector.qgis_adapter.task import DetectTask

    server = tile_server()
    inp = dataclasses.replace(layer_input(_xyz_layer(project, server)), reader=READER_RENDER)
    task = DetectTask(
        DetectRequest.for_layer(
            inp, options=dict(model_path=model_path, device="cpu", min_area_m2=5.0, aoi_wkt=_bounds_wkt(_bounds()))
        )
    )
    assert task.run(), task.error
    # QGIS draws each tile at whole output pixels: edges move by up to half a pixel, hence 5 %
    _assert_same_buildings(_areas(task.layer), geotiff_areas, rel=0.05)
    assert server.zooms() == [Z]  # QGIS, too, takes the zoom closest to 0.5 m


def test_render_path_with_the_service_down_is_an_error(project, tile_server, model_path, monkeypatch):
    import dataclasses

    from roof_detector.qgis_io import READER_RENDER, layer_input, provider_source
    from roof_detector.qgis_io.workers import RetryPolicy
    from roof_detector.qgis_adapter.request import DetectRequest
    from roof_detector.qgis_adapter.task import DetectTask

    monkeypatch.setattr(provider_source, "DEFAULT_RETRY", RetryPolicy(2, 0.01, 2.0, 0.02))
    server = tile_server()
    inp = dataclasses.replace(layer_input(_xyz_layer(project, server)), reader=READER_RENDER)
    server.close()
    task = DetectTask(
        DetectRequest.for_layer(inp, options=dict(model_path=model_path, device="cpu", aoi_wkt=_bounds_wkt(_bounds())))
    )
    assert not task.run()
    assert "returned no image" in task.error and task.layer is None


# -- VRT and in-memory rasters -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vrt_path(ortho_path, tmp_path_factory) -> str:
    """A VRT over the four quadrants of the test orthophoto, each its own GeoTIFF."""
    from osgeo import gdal

    folder = tmp_path_factory.mktemp("vrt")
    ds = gdal.Open(ortho_path)
    w, h = ds.RasterXSize, ds.RasterYSize
    parts = []
    for i, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)]):
        part = str(folder / f"part{i}.tif")
        gdal.Translate(part, ds, srcWin=[x, y, w // 2, h // 2])
        parts.append(part)
    ds = None
    path = str(folder / "mosaic.vrt")
    vrt = gdal.BuildVRT(path, parts)
    vrt.FlushCache()
    vrt = None
    return path


def _run(request):
    from roof_detector.qgis_adapter.task import DetectTask

    task = DetectTask(request)
    assert task.run(), task.error
    return _areas(task.layer)


def test_vrt_gives_the_same_buildings_as_its_mosaic(project, vrt_path, ortho_path, model_path):
    from qgis.core import QgsRasterLayer

    from roof_detector.qgis_adapter.request import DetectRequest, raster_input

    mosaic = _run(make_request(ortho_path, model_path))
    assert len(mosaic) == len(RECTANGLES)
    layer = QgsRasterLayer(vrt_path, "mosaic_vrt")
    assert layer.isValid()
    inp = raster_input(layer)
    assert inp.reader == "file" and inp.path == vrt_path  # rasterio opens VRTs itself
    assert (
        _run(DetectRequest.for_layer(inp, options=dict(model_path=model_path, device="cpu", min_area_m2=5.0))) == mosaic
    )
    # the same VRT read through QGIS's provider gives the same buildings
    import dataclasses

    via_qgis = dataclasses.replace(inp, reader="provider", path="")
    _assert_same_buildings(
        _run(DetectRequest.for_layer(via_qgis, options=dict(model_path=model_path, device="cpu", min_area_m2=5.0))),
        mosaic,
        rel=0.01,
    )


def test_in_memory_raster_is_read_through_its_provider(project, ortho_path, model_path):
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    from roof_detector.qgis_adapter.request import DetectRequest, raster_input

    mem = "/vsimem/roof_detector_test_ortho.tif"
    gdal.Translate(mem, ortho_path)
    try:
        layer = QgsRasterLayer(mem, "in memory")
        assert layer.isValid()
        inp = raster_input(layer)
        assert inp.reader == "provider"  # rasterio (its own GDAL) cannot see QGIS's /vsimem/
        areas = _run(DetectRequest.for_layer(inp, options=dict(model_path=model_path, device="cpu", min_area_m2=5.0)))
    finally:
        gdal.Unlink(mem)
    _assert_same_buildings(areas, _run(make_request(ortho_path, model_path)), rel=0.01)


def test_resampling_matches_gdal_bilinear(ortho_path):
    from roof_detector.core.raster_source import PixelWindow, RasterioSource
    from roof_detector.qgis_io.resample import resample

    rng = np.random.default_rng(1)
    img = rng.random((3, 60, 80), dtype=np.float32)
    valid = np.ones((60, 80), dtype=bool)
    same, ok = resample(img, valid, 0, 0, 80, 60, (60, 80))
    assert ok.all() and np.allclose(same, img, atol=1e-6)  # identity window: the pixels themselves
    with RasterioSource(ortho_path) as src:
        for window, shape in [
            (PixelWindow(10.3, 7.7, 71.4, 53.6), (60, 80)),  # reduce 1.19x
            (PixelWindow(5.0, 5.0, 40.0, 30.0), (50, 66)),
        ]:  # enlarge
            want, _ = src.read(window, shape)
            full, _ = src.read(PixelWindow(0, 0, src.width, src.height), (src.height, src.width))
            got, got_ok = resample(full, np.ones(full.shape[1:], bool), *window, shape)
            assert got_ok.all()
            assert np.abs(got - want).mean() < 0.01


# -- Processing ----------------------------------------------------------------------------------


@pytest.fixture
def processing_run(qgis_app, plugin):
    import sys

    plugins = "/usr/share/qgis/python/plugins"
    if plugins not in sys.path:
        sys.path.append(plugins)
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing

    return processing.run


def test_processing_detects_on_an_xyz_layer_over_an_extent(
    processing_run, project, tile_server, model_path, geotiff_areas
):
    from qgis.core import QgsProcessingException

    server = tile_server()
    layer = _xyz_layer(project, server)
    x0, y0, x1, y1 = _bounds()
    result = processing_run(
        "roofdetector:detectbuildings",
        {
            "INPUT": layer,
            "MODEL": model_path,
            "MIN_AREA": 5.0,
            "DEVICE": 1,
            "EXTENT": f"{x0},{x1},{y0},{y1} [EPSG:3857]",
            "OUTPUT": "memory:",
        },
    )
    _assert_same_buildings(_areas(result["OUTPUT"]), geotiff_areas)
    assert server.zooms() == [Z]
    with pytest.raises(QgsProcessingException, match="whole world"):
        processing_run(
            "roofdetector:detectbuildings", {"INPUT": layer, "MODEL": model_path, "DEVICE": 1, "OUTPUT": "memory:"}
        )
