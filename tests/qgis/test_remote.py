"""The plugin's "Run on: Roof Detector server" mode against the real server (uvicorn in a subprocess)."""

import sys

import pytest

from tests.qgis.conftest import EXPECTED_AREAS, ORIGIN, make_request, wait_for

pytest.importorskip("fastapi")
pytestmark = pytest.mark.qgis

TOKEN = "t0ken-for-the-plugin-tests-0123456789"
_FIRST_ROOF_AOI = (
    f"POLYGON(({ORIGIN[0]} {ORIGIN[1] - 20}, {ORIGIN[0] + 25} {ORIGIN[1] - 20}, "
    f"{ORIGIN[0] + 25} {ORIGIN[1]}, {ORIGIN[0]} {ORIGIN[1]}, {ORIGIN[0]} {ORIGIN[1] - 20}))"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    from tests.service.server_helpers import Server

    folder = tmp_path_factory.mktemp("remote")
    (folder / "tokens").write_text(TOKEN + "\n")
    srv = Server(folder / "data", model_path, "--token-file", str(folder / "tokens"), token=TOKEN)
    yield srv
    srv.stop()


@pytest.fixture
def authcfg(qgis_app):
    from qgis.core import QgsApplication

    from roof_detector.qgis_adapter.remote import store_token

    manager = QgsApplication.authManager()
    if not manager.masterPasswordIsSet():
        assert manager.setMasterPassword("roof-detector-tests", True)
    return store_token(TOKEN)


def _layer_rows(layer):
    names = [n for n in layer.fields().names() if n != "fid"]
    types = [layer.fields().field(n).typeName() for n in names]
    rows = sorted(
        (tuple(round(f[n], 6) if isinstance(f[n], float) else f[n] for n in names), f.geometry().asWkt(3))
        for f in layer.getFeatures()
    )
    return names, types, rows


def test_remote_run_makes_the_same_styled_layer_as_a_local_run(
    plugin, project, ortho_path, model_path, qgis_app, server, authcfg
):
    local = plugin.start(make_request(ortho_path, model_path))
    wait_for(local, qgis_app)
    local_layer = project.mapLayer(plugin.last_layer_id)
    remote = plugin.start(make_request(ortho_path, "", server_url=server.url, server_authcfg=authcfg))
    assert type(remote).__name__ == "RemoteDetectTask"
    wait_for(remote, qgis_app)
    assert remote.error is None, remote.error
    layer = project.mapLayer(plugin.last_layer_id)
    assert layer is not None and layer is not local_layer
    # the second result of the same raster in the project is numbered (issue 17: distinct layer names)
    assert layer.name() == "Buildings (ortho) (2)" and layer.crs().authid() == "EPSG:32631"
    assert sorted(f["area_m2"] for f in layer.getFeatures()) == pytest.approx(EXPECTED_AREAS, rel=0.05)
    assert _layer_rows(layer) == _layer_rows(local_layer)
    assert 0 < layer.renderer().symbol().symbolLayer(0).color().alpha() < 255  # the same style
    # the server's copy was deleted once downloaded
    assert server.json("GET", f"/v1/detections/{remote.job_id}")[0] == 404


def test_remote_run_of_an_area_to_geopackage(plugin, project, ortho_path, qgis_app, server, authcfg, tmp_path):
    out = tmp_path / "remote.gpkg"
    request = make_request(
        ortho_path,
        "",
        server_url=server.url,
        server_authcfg=authcfg,
        aoi_wkt=_FIRST_ROOF_AOI,
        output_mode="gpkg",
        gpkg_path=str(out),
        gpkg_layer="roofs",
    )
    task = plugin.start(request)
    wait_for(task, qgis_app)
    assert task.error is None, task.error
    layer = project.mapLayer(plugin.last_layer_id)
    assert layer.providerType() == "ogr" and layer.featureCount() == 1
    assert [f["area_m2"] for f in layer.getFeatures()] == pytest.approx([150.0], rel=0.05)
    from osgeo import ogr

    ds = ogr.Open(str(out))  # kept: a layer of a freed dataset crashes GDAL
    meta = ds.GetLayerByName("roofs").GetMetadata()  # the one writer, with the server's provenance
    ds = None
    assert meta["server"] == server.url and meta["server_job"] == task.job_id
    assert meta["source_raster"] and meta["model"] and float(meta["min_area_m2"]) == request.options["min_area_m2"]


def test_remote_run_needs_no_engine_packages(
    plugin, project, ortho_path, qgis_app, server, authcfg, monkeypatch, tmp_path
):
    """With torch, onnxruntime, rasterio and shapely unimportable, a server run still works (layer and GeoPackage)."""
    from roof_detector.qgis_adapter import deps

    for name in ("torch", "onnxruntime", "rasterio", "shapely", "scipy"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    # Engine modules loaded by earlier tests are imported afresh, as on a desktop without those packages
    # (the pure ones stay: their classes are the ones the plugin's error mapper knows).
    for name in [
        m
        for m in sys.modules
        if m.startswith("roof_detector.core.") and m not in ("roof_detector.core.errors", "roof_detector.core.params")
    ]:
        monkeypatch.delitem(sys.modules, name)
    assert deps.dependency_problem("detect") is not None
    assert deps.dependency_problem("server") is None
    task = plugin.start(make_request(ortho_path, "", server_url=server.url, server_authcfg=authcfg))
    wait_for(task, qgis_app)
    assert task.error is None, task.error
    assert project.mapLayer(plugin.last_layer_id).featureCount() == len(EXPECTED_AREAS)
    out = tmp_path / "no-engine.gpkg"
    task = plugin.start(
        make_request(
            ortho_path,
            "",
            server_url=server.url,
            server_authcfg=authcfg,
            output_mode="gpkg",
            gpkg_path=str(out),
            gpkg_layer="roofs",
        )
    )
    wait_for(task, qgis_app)
    assert task.error is None, task.error
    layer = project.mapLayer(plugin.last_layer_id)
    assert layer.providerType() == "ogr" and layer.featureCount() == len(EXPECTED_AREAS)
    assert "kwp" in layer.fields().names()


def test_wrong_token_and_unreachable_server_give_one_clear_line(plugin, ortho_path, qgis_app, qgis_iface, server):
    from roof_detector.qgis_adapter.remote import store_token
    from tests.service.server_helpers import free_port

    task = plugin.start(make_request(ortho_path, "", server_url=server.url, server_authcfg=store_token("x" * 20)))
    wait_for(task, qgis_app)
    assert "refused the token" in task.error
    task = plugin.start(make_request(ortho_path, "", server_url=f"http://127.0.0.1:{free_port()}"))
    wait_for(task, qgis_app)
    assert "Cannot reach the Roof Detector server" in task.error
    assert "Traceback" not in task.error


def test_cancelling_a_remote_run_cancels_the_job_on_the_server(plugin, ortho_path, qgis_app, tmp_path):
    """A slow model keeps the job running; cancelling the task sends DELETE and the server stops it."""
    import time

    from tests.core.synthetic_rasters import rect_scene
    from tests.service.server_helpers import Server, make_slow_model

    big = rect_scene(tmp_path / "big.tif", [(20, 20, 60, 80)], shape=(600, 600))
    srv = Server(tmp_path / "data", make_slow_model(str(tmp_path / "slow.pt")), "--batch-size", "1")
    try:
        task = plugin.start(make_request(str(big), "", server_url=srv.url))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            qgis_app.processEvents()
            if task.job_id and srv.json("GET", f"/v1/detections/{task.job_id}")[1]["tiles_done"] > 0:
                break
            time.sleep(0.05)
        assert 0 < task.progress() < 95
        task.cancel()
        wait_for(task, qgis_app)
        assert task.was_cancelled and task.layer is None
        job = srv.wait(task.job_id, timeout_s=30)
        assert job["state"] == "cancelled" and job["tiles_done"] < job["tiles_total"]
    finally:
        srv.stop()


def test_dialog_run_on_server_keeps_the_token_out_of_the_settings(ortho_layer, qgis_iface, authcfg):
    from qgis.core import QgsSettings

    from roof_detector.qgis_ui import settings
    from roof_detector.qgis_ui.dialog import DetectDialog
    from roof_detector.qgis_adapter.remote import load_token

    dialog = DetectDialog(qgis_iface, local_problem="Roof Detector needs torch")
    # this computer cannot detect: only the server is offered
    assert dialog.run_on_combo.currentData() == "server"
    assert not dialog.run_on_combo.model().item(0).isEnabled()
    assert not dialog.model_combo.isEnabled() and dialog.server_url_edit.isEnabled()
    dialog.server_url_edit.setText("http://127.0.0.1:8123")
    dialog.server_token_edit.setText("a-token-typed-in-the-dialog-42")
    dialog.accept()
    request = dialog.request
    assert request is not None, dialog.bar.items()
    assert request.server_url == "http://127.0.0.1:8123" and request.raster_name == "ortho"
    assert load_token(request.server_authcfg) == "a-token-typed-in-the-dialog-42"
    stored = {key: QgsSettings().value(key) for key in QgsSettings().allKeys()}
    assert not any("a-token-typed" in str(v) for v in stored.values())
    assert settings.get("run_on") == "server" and settings.get("server_authcfg") == request.server_authcfg

    dialog = DetectDialog(qgis_iface)
    dialog.server_url_edit.setText("not a url")
    dialog.accept()
    assert dialog.request is None
