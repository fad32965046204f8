"""Faults in QGIS: an exception inside the task, GPU out of memory, unusable outputs, cancel while
writing, QGIS closing (plugin unload) while tasks run, and bad rasters through Processing.

After each: no partial output, no leftover temporary files, QGIS still usable, and a message.
"""

import os
import threading
import time
from unittest import mock

import numpy as np
import pytest
import torch

from tests.core.test_faults import FlakyGpuNet
from tests.qgis.conftest import EXPECTED_AREAS, RECTANGLES, existing_gpkg, make_request, wait_for
from tests.qgis.test_processing import processing_ready, run  # noqa: F401 - fixtures

pytestmark = pytest.mark.qgis


def _messages(iface, level):
    return list(iface.messageBar().get_messages(level))


@pytest.fixture
def log_messages(qgis_app):
    """Everything written to the QGIS log panel during the test."""
    from qgis.core import QgsApplication

    seen = []

    def record(message, tag, level):
        seen.append((tag, message))

    QgsApplication.messageLog().messageReceived.connect(record)
    yield seen
    QgsApplication.messageLog().messageReceived.disconnect(record)


def test_exception_inside_the_task_is_one_message_and_qgis_goes_on(
    plugin, project, ortho_path, model_path, qgis_app, qgis_iface, tmp_path, log_messages
):
    target = str(tmp_path / "out.gpkg")
    with mock.patch("roof_detector.core.pipeline.detect_buildings", side_effect=ZeroDivisionError("division by zero")):
        task = plugin.start(
            make_request(ortho_path, model_path, output_mode="gpkg", gpkg_path=target, gpkg_layer="roofs")
        )
        wait_for(task, qgis_app)
    critical = _messages(qgis_iface, 2)
    assert critical and "Unexpected error: division by zero" in critical[-1] and "log panel" in critical[-1]
    assert "Traceback" not in critical[-1]
    assert any("Traceback" in m and "ZeroDivisionError" in m for _, m in log_messages)  # details in the log
    assert project.count() == 0 and os.listdir(tmp_path) == [] and not plugin.tasks
    # QGIS is still usable: the next run works
    again = plugin.start(make_request(ortho_path, model_path, output_mode="gpkg", gpkg_path=target, gpkg_layer="roofs"))
    wait_for(again, qgis_app)
    layer = project.mapLayer(plugin.last_layer_id)
    assert layer is not None and layer.featureCount() == len(RECTANGLES)
    assert sorted(os.listdir(tmp_path)) == ["out.gpkg"]


@pytest.mark.slow
def test_gpu_out_of_memory_falls_back_and_the_user_is_told(
    plugin, project, ortho_path, model_path, qgis_app, qgis_iface, monkeypatch
):
    from roof_detector.core import inference, pipeline
    from roof_detector.core.model_io import LoadedModel, read_metadata

    gpu = LoadedModel(
        module=FlakyGpuNet(fits=0),
        metadata=read_metadata(model_path),
        device=torch.device("cuda"),
        path=model_path,
        extra={"backend": "torch"},
    )
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: gpu)
    monkeypatch.setattr(inference, "_to_device", lambda x, device: x)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    task = plugin.start(make_request(ortho_path, model_path, device="cuda", extra_options={"batch_size": 4}))
    wait_for(task, qgis_app)
    layer = project.mapLayer(plugin.last_layer_id)
    assert layer is not None and sorted(f["area_m2"] for f in layer.getFeatures()) == pytest.approx(
        EXPECTED_AREAS, rel=0.05
    )
    warnings = _messages(qgis_iface, 1)
    assert any("ran out of memory even with 1 tile per batch" in w and "went on the CPU" in w for w in warnings)


@pytest.mark.parametrize(
    "case, message",
    [
        ("locked", "locked by another program"),
        ("under_a_file", "is a file, not a folder"),
        ("read_only", "is read-only"),
        ("not_a_geopackage", "not a GeoPackage"),
    ],
)
def test_unusable_geopackage_output_fails_before_detection(
    ortho_path, model_path, tmp_path, monkeypatch, case, message
):
    import sqlite3

    from roof_detector.core import gpkg_writer
    from roof_detector.qgis_adapter.task import DetectTask

    target = str(tmp_path / "out.gpkg")
    if case == "under_a_file":
        (tmp_path / "notes").write_text("x")
        target = str(tmp_path / "notes" / "out.gpkg")
    elif case == "not_a_geopackage":
        open(target, "w").write("text")
    else:
        existing_gpkg(target, "other")
    if case == "read_only":
        monkeypatch.setattr(gpkg_writer.os, "access", lambda p, mode: mode != os.W_OK)
    before = sorted((p, os.path.getsize(tmp_path / p)) for p in os.listdir(tmp_path))
    con = None
    if case == "locked":
        con = sqlite3.connect(target, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
    task = DetectTask(make_request(ortho_path, model_path, output_mode="gpkg", gpkg_path=target, gpkg_layer="roofs"))
    detect = mock.Mock()
    try:
        with mock.patch("roof_detector.core.pipeline.detect_buildings", detect):
            t0 = time.monotonic()
            assert task.run() is False
            assert time.monotonic() - t0 < 3.0
    finally:
        if con is not None:
            con.execute("ROLLBACK")
            con.close()
    assert message in task.error and not task.was_cancelled
    detect.assert_not_called()  # refused before minutes of work
    assert task.layer is None and task.output_uri is None
    assert sorted((p, os.path.getsize(tmp_path / p)) for p in os.listdir(tmp_path)) == before


def test_cancel_while_writing_completes_the_geopackage(
    plugin, project, ortho_path, model_path, qgis_app, tmp_path, monkeypatch
):
    """Writing is the last step and is not interrupted: the layer is whole, never half-written."""
    from roof_detector.core import gpkg_writer

    real_write = gpkg_writer.write_buildings
    tasks = []

    def write_after_cancel(*args, **kwargs):
        tasks[0].cancel()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(gpkg_writer, "write_buildings", write_after_cancel)
    target = str(tmp_path / "out.gpkg")
    task = plugin.start(make_request(ortho_path, model_path, output_mode="gpkg", gpkg_path=target, gpkg_layer="roofs"))
    tasks.append(task)
    wait_for(task, qgis_app)
    layer = project.mapLayer(plugin.last_layer_id)
    assert layer is not None and layer.featureCount() == len(RECTANGLES)
    assert sorted(os.listdir(tmp_path)) == ["out.gpkg"]


# --------------------------------------------------------------------------- QGIS closing while tasks run


def _blocking_engine(running, ignore_cancel_s=0.0, stop_delay_s=0.3):
    """A detect_buildings that runs until cancelled (then takes ``stop_delay_s`` to stop)."""
    from roof_detector.core.errors import Cancelled

    def detect(source, options=None, progress=None, is_cancelled=None, model=None):
        running.set()
        deadline = time.monotonic() + 30
        while not is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(max(stop_delay_s, ignore_cancel_s))
        raise Cancelled()

    return detect


def _wait_until(event, qgis_app, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while not event.is_set() and time.monotonic() < deadline:
        qgis_app.processEvents()
        time.sleep(0.01)
    assert event.is_set()


def test_unload_cancels_running_tasks_waits_and_leaves_nothing(
    qgis_iface, project, ortho_path, model_path, qgis_app, tmp_path, log_messages
):
    from roof_detector.plugin import RoofDetectorPlugin
    from roof_detector.qgis_adapter import lifecycle
    from roof_detector.qgis_adapter.finetune_task import FinetuneRequest, FinetuneTask

    plugin = RoofDetectorPlugin(qgis_iface)
    plugin.initGui()
    detecting, tuning = threading.Event(), threading.Event()
    target = str(tmp_path / "out.gpkg")
    exported = tmp_path / "exported_labels"
    exported.mkdir()
    (exported / "labels.gpkg").write_text("a temporary export of the label layer")
    bars = {level: len(_messages(qgis_iface, level)) for level in range(4)}

    def finetune(options, progress=None, is_cancelled=None, on_epoch=None, log=None):
        return _blocking_engine(tuning)(None, is_cancelled=is_cancelled)

    with (
        mock.patch("roof_detector.core.pipeline.detect_buildings", _blocking_engine(detecting)),
        mock.patch("roof_detector.core.training.finetune.finetune", finetune),
    ):
        detect_task = plugin.start(
            make_request(ortho_path, model_path, output_mode="gpkg", gpkg_path=target, gpkg_layer="roofs")
        )
        ft_task = FinetuneTask(
            FinetuneRequest(
                "ortho",
                dict(raster_path=ortho_path, labels_path="x", output_path=str(tmp_path / "model.pt"), name="m"),
                temp_dir=str(exported),
            ),
            on_finished=mock.Mock(),
        )
        plugin.tasks.add(ft_task)
        from qgis.core import QgsApplication

        QgsApplication.taskManager().addTask(ft_task)
        _wait_until(detecting, qgis_app)
        _wait_until(tuning, qgis_app)
        on_finished = ft_task.on_finished
        t0 = time.monotonic()
        plugin.unload()  # what QGIS does when it closes
        waited = time.monotonic() - t0
        assert detect_task.run_done.is_set() and ft_task.run_done.is_set()  # stopped before unload returned
        assert 0.25 < waited < lifecycle.UNLOAD_WAIT_S
        wait_for(detect_task, qgis_app)
        wait_for(ft_task, qgis_app)
    # finished() ran after the unload without reaching the plugin or the dialog
    on_finished.assert_not_called()
    assert {level: len(_messages(qgis_iface, level)) for level in range(4)} == bars
    assert project.count() == 0 and plugin.last_layer_id is None and not plugin.tasks
    assert not exported.exists()  # the fine-tune's temporary files
    assert os.listdir(tmp_path) == []
    # QGIS is still usable: a plugin loaded again detects normally
    again = RoofDetectorPlugin(qgis_iface)
    again.initGui()
    try:
        task = again.start(make_request(ortho_path, model_path))
        wait_for(task, qgis_app)
        assert project.mapLayer(again.last_layer_id).featureCount() == len(RECTANGLES)
    finally:
        again.unload()


def test_unload_does_not_hang_on_a_task_that_is_slow_to_stop(
    qgis_iface, project, ortho_path, model_path, qgis_app, monkeypatch, log_messages
):
    from roof_detector.plugin import RoofDetectorPlugin
    from roof_detector.qgis_adapter import lifecycle

    monkeypatch.setattr(lifecycle, "UNLOAD_WAIT_S", 0.2)
    plugin = RoofDetectorPlugin(qgis_iface)
    plugin.initGui()
    running = threading.Event()
    bars = {level: len(_messages(qgis_iface, level)) for level in range(4)}
    with mock.patch("roof_detector.core.pipeline.detect_buildings", _blocking_engine(running, ignore_cancel_s=1.0)):
        task = plugin.start(make_request(ortho_path, model_path))
        _wait_until(running, qgis_app)
        t0 = time.monotonic()
        plugin.unload()
        assert time.monotonic() - t0 < 1.0 and not task.run_done.is_set()
        assert any("still stopping" in m for _, m in log_messages)
        wait_for(task, qgis_app)  # it ends after the plugin is gone
    assert task.was_cancelled and task.layer is None
    assert {level: len(_messages(qgis_iface, level)) for level in range(4)} == bars
    assert project.count() == 0


# --------------------------------------------------------------------------- Processing


def _write(path, data, transform, crs="EPSG:32631"):
    import rasterio

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
    ) as ds:
        ds.write(data)
    return str(path)


def test_processing_refuses_a_rotated_raster_and_writes_nothing(run, model_path, tmp_path):  # noqa: F811
    from affine import Affine
    from qgis.core import QgsProcessingException

    path = _write(
        tmp_path / "rotated.tif", np.full((3, 64, 64), 30, np.uint8), Affine(0.5, 0.1, 500000, 0.1, -0.5, 5000000)
    )
    out = tmp_path / "out.gpkg"
    with pytest.raises(QgsProcessingException, match="rotated or sheared.*gdalwarp"):
        run("roofdetector:detectbuildings", {"INPUT": path, "MODEL": model_path, "DEVICE": 1, "OUTPUT": str(out)})
    assert sorted(os.listdir(tmp_path)) == ["rotated.tif"]


def test_processing_on_a_raster_smaller_than_one_tile(run, model_path, tmp_path):  # noqa: F811
    from affine import Affine
    from qgis.core import QgsVectorLayer

    data = np.full((3, 30, 40), 30, np.uint8)
    data[:, 5:25, 5:35] = 220  # 10 x 15 m, in a 15 x 20 m raster
    path = _write(tmp_path / "tiny.tif", data, Affine(0.5, 0, 500000, 0, -0.5, 5000000))
    result = run(
        "roofdetector:detectbuildings",
        {"INPUT": path, "MODEL": model_path, "DEVICE": 1, "MIN_AREA": 5.0, "OUTPUT": str(tmp_path / "out.gpkg")},
    )
    layer = QgsVectorLayer(result["OUTPUT"], "b")
    assert result["BUILDINGS"] == 1 and next(layer.getFeatures())["area_m2"] == pytest.approx(150.0, rel=0.005)


def test_processing_cancel_while_tracing_the_last_outlines_creates_no_output(run, ortho_path, model_path, tmp_path):  # noqa: F811
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    class CancelWhenTracing(QgsProcessingFeedback):
        def setProgressText(self, text):  # noqa: N802 - QGIS API
            super().setProgressText(text)
            if "Tracing the last building outlines" in text:
                self.cancel()

    out = tmp_path / "out.gpkg"
    with pytest.raises(QgsProcessingException, match="Cancelled by the user; nothing was written"):
        run(
            "roofdetector:detectbuildings",
            {"INPUT": ortho_path, "MODEL": model_path, "DEVICE": 1, "OUTPUT": str(out)},
            feedback=CancelWhenTracing(),
        )
    assert os.listdir(tmp_path) == []
