"""The Fine-tune Model dialog and task, and the Model Library dialog, on a tiny generated setup.

A 256 x 256 px raster at 0.5 m (EPSG:32631) with bright buildings, their
polygons as a memory layer or a GeoPackage, and a tiny fine-tunable base
model (plain U-Net, 4 base channels, 64 px tiles) in a temporary library.
Runs use 8 samples per epoch so each takes a second or two.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.core.finetune_setup import ORIGIN, building_rects, ring, write_base_model, write_ortho
from tests.qgis.conftest import wait_for

pytestmark = pytest.mark.qgis

RECTS = building_rects()


def _wkt(points):
    return "POLYGON((" + ",".join(f"{x} {y}" for x, y in points) + "))"


@pytest.fixture(scope="module")
def ft_files(tmp_path_factory):
    """The raster, a GeoPackage of the buildings (EPSG:32631) and the tiny base model."""
    from osgeo import ogr, osr

    folder = tmp_path_factory.mktemp("finetune")
    raster = write_ortho(str(folder / "ortho.tif"), RECTS)
    gpkg = str(folder / "labels.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(gpkg)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    lyr = ds.CreateLayer("buildings", srs, ogr.wkbPolygon)
    for rect in RECTS:
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(_wkt(ring(*rect))))
        lyr.CreateFeature(f)
    ds = None
    base = write_base_model(str(folder / "base.pt"))
    return {"raster": raster, "gpkg": gpkg, "base": base}


@pytest.fixture
def library(tmp_path, ft_files):
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.copy(ft_files["base"], lib / "base.pt")
    return lib


@pytest.fixture
def raster_layer(project, ft_files):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(ft_files["raster"], "ortho")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer


def memory_polygons(project, wkts, crs="EPSG:32631", name="labels"):
    """A memory polygon layer holding ``wkts`` (in ``crs``), added to the project."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer(f"Polygon?crs={crs}", name, "memory")
    features = []
    for wkt in wkts:
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(f)
    layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    project.addMapLayer(layer)
    return layer


def labels_in_4326(project):
    """The buildings in EPSG:4326, plus one self-intersecting (bow-tie) copy of the first one."""
    from pyproj import Transformer

    to4326 = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    wkts = [_wkt([to4326.transform(x, y) for x, y in ring(*rect)]) for rect in RECTS]
    (x0, y0), (x1, _), (_, y1) = ring(*RECTS[0])[:3]
    bowtie = [(x0, y0), (x1, y1), (x1, y0), (x0, y1), (x0, y0)]
    wkts.append(_wkt([to4326.transform(x, y) for x, y in bowtie]))
    return memory_polygons(project, wkts, "EPSG:4326")


def make_dialog(iface, library, raster, labels, name="lyon", epochs=2, patience=4):
    from roof_detector.qgis_ui.finetune_dialog import FinetuneDialog

    dialog = FinetuneDialog(iface, library_dir=str(library))
    dialog.raster_combo.setLayer(raster)
    dialog.labels_combo.setLayer(labels)
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("library:" + str(library / "base.pt")))
    assert dialog.model_combo.currentIndex() >= 0
    dialog.name_edit.setText(name)
    dialog.training.epochs_spin.setValue(epochs)
    dialog.training.lr_spin.setValue(0.003)
    dialog.training.batch_spin.setValue(4)
    dialog.training.samples_spin.setValue(8)
    dialog.training.patience_spin.setValue(patience)
    dialog.training.device_combo.setCurrentIndex(dialog.training.device_combo.findData("cpu"))
    return dialog


def bar_texts(dialog):
    """Every message in the dialog's message bar as 'title: text' (the whole text, as shown)."""
    from roof_detector.qgis_ui.message_bar import item_text

    return [item_text(w) for w in dialog.bar.items()]


# -- runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_finetune_from_memory_layer_in_another_crs(qgis_iface, qgis_app, project, raster_layer, library, monkeypatch):
    from qgis.PyQt.QtCore import QThread

    from roof_detector.core.model_io import read_metadata
    from roof_detector.qgis_adapter import paths
    from roof_detector.qgis_ui.dialog import DetectDialog

    labels = labels_in_4326(project)
    dialog = make_dialog(qgis_iface, library, raster_layer, labels)
    threads = []
    real_add_row = dialog.chart.add_row

    def add_row(row, improved=False):
        threads.append(QThread.currentThread() == qgis_app.thread())
        real_add_row(row, improved)

    dialog.chart.add_row = add_row
    statuses, logged = [], []
    real_set_text = dialog.status_label.setText
    dialog.status_label.setText = lambda text: (statuses.append((len(dialog.chart.rows), text)), real_set_text(text))
    from qgis.core import QgsApplication

    QgsApplication.messageLog().messageReceived.connect(
        lambda text, tag, level: logged.append(text) if tag == "Roof Detector" else None
    )
    task = dialog.start()
    assert task is not None, bar_texts(dialog)
    temp_dir = task.request.temp_dir
    assert temp_dir and os.path.isfile(task.request.options["labels_path"])  # the memory layer went to a GeoPackage
    assert dialog.running and not dialog.start_button.isEnabled() and dialog.stop_button.isEnabled()
    wait_for(task, qgis_app, timeout_s=120)
    texts = " | ".join(bar_texts(dialog))
    assert "EPSG:4326" in texts and "reprojected" in texts  # another CRS: told, not refused
    assert "1 invalid label geometries were repaired" in texts  # the engine's note
    model = library / "lyon.pt"
    assert model.is_file(), texts
    meta = read_metadata(model)
    assert meta["name"] == "lyon" and meta["base_model"]["name"] == "tiny-base"
    assert meta["training"]["kind"] == "fine-tune" and meta["training"]["label_polygons"] == 25
    assert set(meta["metrics"]) == {"val_before", "val_after"} and 0 < meta["threshold"] < 1
    assert (library / "lyon_curves.png").stat().st_size > 5000
    # the live chart received one point per epoch, for each curve
    assert [r["epoch"] for r in dialog.chart.rows] == [1, 2]
    assert threads == [True, True]  # delivered on the main thread
    for key in ("train_loss", "val_loss", "train_iou", "val_iou", "train_accuracy", "val_accuracy"):
        assert len(dialog.chart.series(key)) == 2
    assert dialog.chart.grab().width() > 0  # paints without error
    # before / after side by side
    assert set(dialog.comparison) == {"before", "after"}
    assert dialog.comparison["after"]["iou"] == pytest.approx(meta["metrics"]["val_after"]["iou"])
    assert dialog.results_box.isVisibleTo(dialog)
    assert dialog.results_box.table.item(0, 0).text() == f"{meta['metrics']['val_before']['iou']:.3f}"
    assert not dialog.running and dialog.start_button.isEnabled()
    assert not os.path.exists(temp_dir)  # the exported layer is cleaned up
    assert any("lyon" in m for m in qgis_iface.messageBar().get_messages(3))
    # before the first epoch ends the status says which batch runs (not "Preparing…" throughout)
    assert any(n == 0 and t.startswith("Epoch 1: batch ") for n, t in statuses), statuses
    done = [t for t in logged if "saved to the library after 2 epochs" in t]
    assert len(done) == 1, logged  # logged once in the plugin's log tab
    # the new model is offered as a base model and in the Detect dialog
    assert dialog.model_combo.findData("library:" + str(model)) >= 0
    monkeypatch.setattr(paths, "model_library_dir", lambda: str(library))
    detect = DetectDialog(qgis_iface)
    assert detect.model_combo.findData("library:" + str(model)) >= 0


def _run_and_stop(dialog, qgis_app, keep):
    dialog.ask_keep_best = lambda: keep
    task = dialog.start()
    assert task is not None, bar_texts(dialog)
    stopped = False
    deadline = time.monotonic() + 120
    while dialog.running and time.monotonic() < deadline:
        qgis_app.processEvents()
        if dialog.chart.rows and not stopped:
            dialog.stop()  # on the main thread, after the first epoch arrived
            stopped = True
        time.sleep(0.02)
    wait_for(task, qgis_app)
    assert stopped
    return task


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.slow
def test_stop_asks_and_keeps_or_drops_the_model(qgis_iface, qgis_app, project, raster_layer, library, ft_files, keep):
    from qgis.core import QgsVectorLayer

    labels = QgsVectorLayer(ft_files["gpkg"] + "|layername=buildings", "buildings", "ogr")
    project.addMapLayer(labels)
    dialog = make_dialog(qgis_iface, library, raster_layer, labels, name="stopped", epochs=30, patience=30)
    task = _run_and_stop(dialog, qgis_app, keep)
    assert task.request.options["labels_path"] == ft_files["gpkg"] and task.request.temp_dir is None  # used in place
    assert task.result is not None and task.result.stopped == "cancelled"
    assert 1 <= len(task.result.history) < 30
    assert (library / "stopped.pt").exists() == keep
    text = dialog.status_label.text()
    assert ("stopped by you" in text) if keep else ("not kept" in text)


def test_stop_can_be_called_off(qgis_iface, project, raster_layer, library, ft_files):
    from unittest import mock

    dialog = make_dialog(qgis_iface, library, raster_layer, memory_polygons(project, []))
    task = mock.MagicMock()
    dialog.task = task
    dialog.ask_keep_best = lambda: None  # "Continue training"
    dialog.stop()
    task.cancel.assert_not_called()
    dialog.ask_keep_best = lambda: False
    dialog.stop()
    task.set_keep_best.assert_called_once_with(False)
    task.cancel.assert_called_once()


# -- bad inputs ------------------------------------------------------------------------
def test_labels_outside_the_raster_are_refused_before_starting(qgis_iface, project, raster_layer, library):
    far = memory_polygons(project, [_wkt([(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)])])
    dialog = make_dialog(qgis_iface, library, raster_layer, far)
    assert dialog.start() is None and not dialog.running
    assert any("No polygon of layer 'labels' lies inside raster 'ortho'" in t for t in bar_texts(dialog))


def test_too_small_area_gets_the_engines_message(qgis_iface, qgis_app, project, raster_layer, library):
    labels = memory_polygons(project, [_wkt(ring(*r)) for r in RECTS])
    x, y = ORIGIN[0] + 20, ORIGIN[1] - 20
    area = memory_polygons(project, [_wkt([(x, y), (x + 20, y), (x + 20, y - 20), (x, y - 20), (x, y)])], name="area")
    dialog = make_dialog(qgis_iface, library, raster_layer, labels)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("layer"))
    dialog.area_layer_combo.setLayer(area)
    task = dialog.start()
    assert task is not None and task.request.options["area_wkt"].startswith("Polygon")
    wait_for(task, qgis_app, timeout_s=60)
    assert any("too small to hold out validation" in t for t in bar_texts(dialog))
    assert not (library / "lyon.pt").exists() and not dialog.running


def test_choices_are_checked(qgis_iface, project, raster_layer, library):
    labels = memory_polygons(project, [_wkt(ring(*r)) for r in RECTS])
    dialog = make_dialog(qgis_iface, library, raster_layer, labels, name="base")
    assert dialog.start() is None
    assert any("already holds a model file base.pt" in t for t in bar_texts(dialog))
    dialog.name_edit.setText("new")
    dialog.labels_selected.setChecked(True)
    assert dialog.start() is None
    assert any("No features are selected in layer 'labels'" in t for t in bar_texts(dialog))
    dialog.labels_selected.setChecked(False)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("selection"))
    dialog.area_layer_combo.setLayer(labels)
    assert dialog.start() is None
    assert any("No polygons are selected" in t for t in bar_texts(dialog))
    assert sorted(os.listdir(library)) == ["base.pt"]


def test_selected_features_only_exports_the_selection(qgis_iface, project, raster_layer, library, ft_files):
    from osgeo import ogr
    from qgis.core import QgsVectorLayer

    labels = QgsVectorLayer(ft_files["gpkg"] + "|layername=buildings", "buildings", "ogr")
    project.addMapLayer(labels)
    labels.selectByIds([f.id() for f in labels.getFeatures()][:10])
    dialog = make_dialog(qgis_iface, library, raster_layer, labels)
    dialog.labels_selected.setChecked(True)
    request = dialog.build_request()
    try:
        assert request.options["labels_path"] != ft_files["gpkg"] and request.options["labels_path"].startswith(
            request.temp_dir
        )
        ds = ogr.Open(request.options["labels_path"])
        assert ds.GetLayerByName(request.options["labels_layer"]).GetFeatureCount() == 10
        ds = None
        assert request.options["area_wkt"] is None and request.options["val_fraction"] == pytest.approx(0.2)
        # the time budget (default 15 min) is shown before starting and reaches the engine
        assert request.options["max_minutes"] == 15.0 and request.finetune_options().max_minutes == 15.0
        assert "at most 15 min" in dialog.training.budget_info.text()
        dialog.training.budget_spin.setValue(0)
        assert "No time budget" in dialog.training.budget_info.text()
        assert request.options["output_path"] == str(library / "lyon.pt")
    finally:
        from roof_detector.qgis_adapter.finetune_task import FinetuneTask

        FinetuneTask(request).cleanup()
    assert not os.path.exists(request.options["labels_path"])


def test_decoder_only_is_the_declared_default_reaches_the_engine_and_is_remembered(
    qgis_iface, project, raster_layer, library, ft_files
):
    from qgis.core import QgsVectorLayer

    from roof_detector.core.params import FINETUNE
    from roof_detector.qgis_ui import settings

    labels = QgsVectorLayer(ft_files["gpkg"] + "|layername=buildings", "buildings", "ogr")
    project.addMapLayer(labels)
    try:
        dialog = make_dialog(qgis_iface, library, raster_layer, labels)
        check = dialog.training.freeze_check
        assert check.isChecked() is FINETUNE["freeze_encoder"].default
        assert "encoder" in check.toolTip()
        check.setChecked(not FINETUNE["freeze_encoder"].default)
        assert dialog.training.options()["freeze_encoder"] is (not FINETUNE["freeze_encoder"].default)
        dialog.training.save_settings()
        again = make_dialog(qgis_iface, library, raster_layer, labels)
        assert again.training.freeze_check.isChecked() is (not FINETUNE["freeze_encoder"].default)
    finally:
        settings.clear()


# -- plugin actions ---------------------------------------------------------------------
def test_plugin_actions_open_the_dialogs(plugin, qgis_iface, project):
    by_name = {a.objectName(): a for a in plugin.menu_actions}
    by_name["roofDetectorFinetune"].trigger()
    assert plugin.finetune_dialog is not None and plugin.finetune_dialog.isVisible()
    assert plugin.finetune_dialog.training.val_spin.value() == 20  # the seed study's 80/20 split
    assert "unlabelled buildings" in plugin.finetune_dialog.area_help.text()
    by_name["roofDetectorModelLibrary"].trigger()
    assert plugin.library_dialog is not None and plugin.library_dialog.isVisible()
    plugin.finetune_dialog.hide()
    plugin.library_dialog.hide()


# -- the library dialog --------------------------------------------------------------------
def test_library_dialog_lists_renames_deletes_imports_exports(qgis_iface, tmp_path):
    from roof_detector.core.model_io import read_metadata
    from devtools.test_model import make_test_model
    from roof_detector.qgis_ui.library_dialog import ModelLibraryDialog

    lib = tmp_path / "lib"
    lib.mkdir()
    make_test_model(str(lib / "a.pt"), extra_metadata={"name": "A", "metrics": {"val_after": {"iou": 0.75}}})
    (lib / "a_curves.png").write_bytes(b"png")
    (lib / "junk.pt").write_bytes(b"junk")
    dialog = ModelLibraryDialog(qgis_iface, library_dir=str(lib))
    cells = [[dialog.table.item(r, c).text() for c in range(5)] for r in range(dialog.table.rowCount())]
    assert cells[0] == ["A", "0.0.1", "0.5", "0.750", "a.pt"]
    assert cells[1][0] == "junk (invalid)" and cells[1][4] == "junk.pt"

    dialog.select_file("junk.pt")
    assert not dialog.rename_button.isEnabled() and dialog.delete_button.isEnabled()

    dialog.select_file("a.pt")
    dialog.ask_new_name = lambda entry: "junk"
    assert dialog.rename_selected() is None
    from roof_detector.qgis_ui.message_bar import item_text

    assert "already holds junk.pt" in item_text(dialog.bar.currentItem())
    dialog.ask_new_name = lambda entry: "Paris 2024"
    assert dialog.rename_selected() == str(lib / "Paris_2024.pt")
    assert read_metadata(lib / "Paris_2024.pt")["name"] == "Paris 2024"
    assert (lib / "Paris_2024_curves.png").exists() and dialog.selected_entry().file_name == "Paris_2024.pt"

    out = tmp_path / "out"
    out.mkdir()
    dialog.ask_export_path = lambda entry: str(out / "shared.pt")
    assert dialog.export_selected() == str(out / "shared.pt")
    assert read_metadata(out / "shared.pt")["name"] == "Paris 2024"

    dialog.ask_import_path = lambda: str(lib / "junk.pt")
    assert dialog.import_file() is None
    assert "Cannot import junk.pt" in item_text(dialog.bar.currentItem())
    make_test_model(str(out / "berlin.pt"))
    dialog.ask_import_path = lambda: str(out / "berlin.pt")
    assert dialog.import_file() == str(lib / "berlin.pt")
    assert [e.file_name for e in dialog.entries] == ["berlin.pt", "junk.pt", "Paris_2024.pt"]

    dialog.select_file("junk.pt")
    dialog.confirm_delete = lambda entry: False
    assert dialog.delete_selected() is False and (lib / "junk.pt").exists()
    dialog.confirm_delete = lambda entry: True
    assert dialog.delete_selected() is True and not (lib / "junk.pt").exists()
    assert dialog.table.rowCount() == 2


def test_library_dialog_says_a_model_file_is_code(qgis_iface, tmp_path):
    """Issue 21: TorchScript is no sandbox; the library says so where models are imported."""
    from roof_detector.qgis_ui.library_dialog import ModelLibraryDialog

    dialog = ModelLibraryDialog(qgis_iface, library_dir=str(tmp_path))
    assert "is a program" in dialog.trust_label.text() and "trusted sources only" in dialog.trust_label.text()
    assert dialog.import_button.toolTip() == dialog.trust_label.text()


def test_the_forms_wrapped_notes_get_their_lines_when_the_dialog_opens(
    qgis_iface, qgis_app, project, raster_layer, library
):
    """Qt's window minimum ignores word-wrapped labels: the labelled-area note overlapped the
    *Base model* row below it in a grab of the dialog as it opened."""
    from qgis.PyQt.QtWidgets import QLabel

    labels = memory_polygons(project, ["POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))"])
    dialog = make_dialog(qgis_iface, library, raster_layer, labels)
    dialog.show()
    try:
        for _ in range(5):
            qgis_app.processEvents()
        notes = [w for w in dialog.findChildren(QLabel) if w.isVisible() and w.wordWrap() and w.text()]
        assert any("labelled area" in w.text() for w in notes)
        for note in notes:
            assert note.height() >= note.heightForWidth(note.width()), note.text()
    finally:
        dialog.hide()
        dialog.deleteLater()
