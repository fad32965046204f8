"""The Detect Buildings dialog: defaults, refusals, remembered choices, AOI."""

import os
import shutil
from pathlib import Path
from unittest import mock

import pytest

from tests.qgis.conftest import ORIGIN, existing_gpkg, write_test_raster

pytestmark = pytest.mark.qgis


def _dialog(iface):
    from roof_detector.qgis_ui.dialog import DetectDialog

    return DetectDialog(iface)


def _bar_text(dialog):
    from roof_detector.qgis_ui.message_bar import item_text

    return item_text(dialog.bar.currentItem())


def _use_model_file(dialog, path):
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("file"))
    dialog.model_file.setFilePath(path)


def test_defaults_follow_the_active_layer(qgis_iface, ortho_layer, data_dir, project):
    from qgis.core import QgsRasterLayer

    dialog = _dialog(qgis_iface)
    assert dialog.raster_combo.currentLayer() is ortho_layer
    assert dialog.area_combo.currentData() == "layer"
    assert dialog.memory_radio.isChecked()
    assert dialog.min_area_spin.value() == 10.0
    other = QgsRasterLayer(str(write_test_raster(data_dir / "other.tif")), "other")
    project.addMapLayer(other)
    qgis_iface.setActiveLayer(other)
    assert _dialog(qgis_iface).raster_combo.currentLayer() is other


def test_no_raster_layer_is_refused_with_a_message(qgis_iface, project, model_path):
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.accept()
    assert dialog.request is None and dialog.result() == 0
    assert "No raster layer" in _bar_text(dialog)


def test_layer_without_crs_is_refused(qgis_iface, project, data_dir, model_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer

    layer = QgsRasterLayer(str(write_test_raster(data_dir / "nocrs.tif", crs=None)), "nocrs")
    layer.setCrs(QgsCoordinateReferenceSystem())
    project.addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.accept()
    assert dialog.request is None
    assert "no coordinate reference system" in _bar_text(dialog)


def test_non_file_provider_is_refused():
    from qgis.core import QgsRasterLayer

    from roof_detector.qgis_adapter.request import RequestError, raster_file_path

    layer = mock.MagicMock(spec=QgsRasterLayer)
    layer.name.return_value = "OSM"
    layer.isValid.return_value = True
    layer.providerType.return_value = "wms"
    with pytest.raises(RequestError, match="'wms' provider"):
        raster_file_path(layer)


def test_broken_model_file_is_refused(qgis_iface, ortho_layer, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, str(bad))
    dialog.accept()
    assert dialog.request is None
    assert "not a TorchScript model" in _bar_text(dialog)


def test_accepted_request_and_threshold_from_metadata(qgis_iface, ortho_layer, ortho_path, tmp_path):
    from devtools.test_model import make_test_model

    model = make_test_model(str(tmp_path / "m.pt"), threshold=0.35)
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model)
    assert dialog.threshold_spin.value() == pytest.approx(0.35)
    assert not dialog.threshold_spin.isEnabled()
    dialog.accept()
    req = dialog.request
    assert req is not None and dialog.result() == 1
    assert req.raster_path == ortho_path and req.raster_name == "ortho"
    assert req.crs == "EPSG:32631" and req.model_path == model
    assert req.options["threshold"] is None and req.aoi_wkt is None and req.output_mode == "memory"
    assert req.layer_name == "Buildings (ortho)"


def test_choices_are_remembered(qgis_iface, ortho_layer, model_path, tmp_path):
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.threshold_check.setChecked(True)
    dialog.threshold_spin.setValue(0.6)
    dialog.min_area_spin.setValue(25.0)
    dialog.separate_check.setChecked(False)
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cpu"))
    dialog.gpkg_radio.setChecked(True)
    dialog.gpkg_file.setFilePath(str(tmp_path / "out.gpkg"))
    dialog.gpkg_layer_edit.setText("roofs")
    dialog.accept()
    assert dialog.request.options["threshold"] == pytest.approx(0.6) and dialog.request.options["device"] == "cpu"
    assert dialog.request.gpkg_layer == "roofs"
    assert dialog.request.options["separate_touching"] is False
    again = _dialog(qgis_iface)
    assert again.model_combo.currentData() == "file"
    assert again.model_file.filePath() == model_path
    assert again.threshold_check.isChecked() and again.threshold_spin.value() == pytest.approx(0.6)
    assert again.min_area_spin.value() == 25.0
    assert not again.separate_check.isChecked()
    assert not again.tta_check.isChecked()  # off by default
    assert again.device_combo.currentData() == "cpu"
    assert again.gpkg_radio.isChecked() and again.gpkg_layer_edit.text() == "roofs"


def test_model_library_is_listed(qgis_iface, ortho_layer, model_path):
    from roof_detector.qgis_adapter.paths import model_library_dir

    folder = model_library_dir()
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, "my_city.pt")
    shutil.copy(model_path, target)
    try:
        dialog = _dialog(qgis_iface)
        index = dialog.model_combo.findData("library:" + target)
        assert index > 0 and "my_city.pt" in dialog.model_combo.itemText(index)
        dialog.model_combo.setCurrentIndex(index)
        assert "brightness-test-model" in dialog.model_info.text()
    finally:
        os.remove(target)


def test_map_extent_becomes_aoi_in_raster_crs(qgis_iface, ortho_layer, model_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle
    from shapely import wkt
    from shapely.geometry import box

    canvas = qgis_iface.mapCanvas()
    crs4326 = QgsCoordinateReferenceSystem("EPSG:4326")
    canvas.setDestinationCrs(crs4326)
    inner = QgsRectangle(ORIGIN[0] + 10, ORIGIN[1] - 40, ORIGIN[0] + 40, ORIGIN[1] - 10)
    to4326 = QgsCoordinateTransform(ortho_layer.crs(), crs4326, QgsProject.instance())
    canvas.setExtent(to4326.transformBoundingBox(inner))
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("extent"))
    dialog.accept()
    aoi = wkt.loads(dialog.request.aoi_wkt)
    # The canvas widens the extent to its aspect ratio; the AOI is that extent, in UTM metres.
    back = QgsCoordinateTransform(crs4326, ortho_layer.crs(), QgsProject.instance())
    shown = back.transformBoundingBox(canvas.extent())
    assert aoi.bounds == pytest.approx(
        (shown.xMinimum(), shown.yMinimum(), shown.xMaximum(), shown.yMaximum()), abs=1.0
    )
    assert aoi.contains(box(inner.xMinimum(), inner.yMinimum(), inner.xMaximum(), inner.yMaximum()).buffer(-0.5))


def test_selected_polygons_become_aoi(qgis_iface, ortho_layer, project, model_path):
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle, QgsVectorLayer
    from shapely import wkt

    polys = QgsVectorLayer("Polygon?crs=EPSG:32631", "zones", "memory")
    feats = []
    for x0 in (0, 50):
        f = QgsFeature()
        f.setGeometry(
            QgsGeometry.fromRect(QgsRectangle(ORIGIN[0] + x0, ORIGIN[1] - 30, ORIGIN[0] + x0 + 20, ORIGIN[1]))
        )
        feats.append(f)
    polys.dataProvider().addFeatures(feats)
    project.addMapLayer(polys)
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("selection"))
    dialog.aoi_layer_combo.setLayer(polys)
    dialog.accept()
    assert dialog.request is None and "No polygons are selected" in _bar_text(dialog)
    polys.selectByIds([next(polys.getFeatures()).id()])
    dialog.accept()
    aoi = wkt.loads(dialog.request.aoi_wkt)
    assert aoi.area == pytest.approx(600.0)


def test_existing_gpkg_layer_is_replaced_only_when_confirmed(qgis_iface, ortho_layer, model_path, tmp_path):

    target = str(tmp_path / "out.gpkg")
    existing_gpkg(target, "roofs")
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.gpkg_radio.setChecked(True)
    dialog.gpkg_file.setFilePath(target)
    dialog.gpkg_layer_edit.setText("roofs")
    with mock.patch.object(dialog, "confirm_replace", return_value=False) as ask:
        dialog.accept()
    assert ask.called and dialog.request is None
    with mock.patch.object(dialog, "confirm_replace", return_value=True):
        dialog.accept()
    assert dialog.request.replace_layer and dialog.request.gpkg_path == target


def test_device_choice_shows_the_gpu_torch_found(qgis_iface, ortho_layer):
    import torch

    dialog = _dialog(qgis_iface)
    cuda_item = dialog.device_combo.model().item(dialog.device_combo.findData("cuda"))
    assert cuda_item.isEnabled() == torch.cuda.is_available()
    with (
        mock.patch("roof_detector.core.devices.cuda_driver_present", return_value=True),
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.get_device_name", return_value="NVIDIA H100 80GB HBM3"),
    ):
        dialog = _dialog(qgis_iface)
    assert "NVIDIA H100" in dialog.device_info.text()
    assert dialog.device_combo.model().item(dialog.device_combo.findData("cuda")).isEnabled()


def test_outlines_are_regularised_and_solar_defaults_by_default(qgis_iface, ortho_layer, model_path):
    from roof_detector.core.solar import SolarParams

    dialog = _dialog(qgis_iface)
    assert dialog.regularize_check.isChecked() and dialog.tolerance_spin.value() == 1.0
    assert dialog.tolerance_spin.isEnabled()
    assert dialog.yield_auto_check.isChecked() and not dialog.yield_spin.isEnabled()
    assert (
        dialog.setback_spin.value(),
        dialog.usable_spin.value(),
        dialog.panel_area_spin.value(),
        dialog.panel_wp_spin.value(),
    ) == (0.5, 0.6, 1.96, 400.0)
    _use_model_file(dialog, model_path)
    dialog.accept()
    options = dialog.request.detect_options()
    assert options.regularize is True and options.regularize_tolerance_m == 1.0
    assert options.separate_touching is True and dialog.separate_check.isChecked()
    assert options.solar == SolarParams()  # the engine's defaults, yield estimated from latitude


def test_solar_choices_reach_the_engine_and_are_remembered(qgis_iface, ortho_layer, model_path):
    from roof_detector.core.solar import SolarParams
    from roof_detector.qgis_ui import settings

    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.solar_box.setCollapsed(False)
    dialog.regularize_check.setChecked(False)
    assert not dialog.tolerance_spin.isEnabled()
    dialog.tolerance_spin.setValue(2.5)
    dialog.setback_spin.setValue(1.0)
    dialog.usable_spin.setValue(0.75)
    dialog.panel_area_spin.setValue(1.7)
    dialog.panel_wp_spin.setValue(430.0)
    dialog.yield_auto_check.setChecked(False)
    assert dialog.yield_spin.isEnabled()
    dialog.yield_spin.setValue(1234.0)
    dialog.accept()
    options = dialog.request.detect_options()
    assert options.regularize is False and options.regularize_tolerance_m == 2.5
    assert options.solar == SolarParams(
        setback_m=1.0, usable_fraction=0.75, panel_area_m2=1.7, panel_wp=430.0, specific_yield_kwh_per_kwp=1234.0
    )
    assert settings.solar_kwargs() == options.solar.as_dict()  # what the Rooftop Report sizes with
    again = _dialog(qgis_iface)
    assert not again.regularize_check.isChecked() and again.tolerance_spin.value() == 2.5
    assert again.solar_kwargs() == options.solar.as_dict()
    assert not again.yield_auto_check.isChecked() and not again.solar_box.isCollapsed()


def test_help_button_opens_the_readme_and_an_existing_file_is_asked_about_once(qgis_iface, ortho_layer):
    from unittest import mock

    from qgis.PyQt.QtWidgets import QDialogButtonBox

    from roof_detector.qgis_ui.dialog import DetectDialog

    dialog = DetectDialog(qgis_iface)
    help_button = dialog.buttons.button(QDialogButtonBox.Help)
    assert help_button is not None
    with mock.patch("qgis.PyQt.QtGui.QDesktopServices.openUrl") as open_url:
        help_button.click()
    assert open_url.call_args[0][0].toString().startswith("https://github.com/")
    assert not dialog.gpkg_file.confirmOverwrite()  # Qt's "replace the file?" is not asked on top of ours


def test_tta_checkbox_reaches_the_engine_and_is_remembered(qgis_iface, ortho_layer, model_path):
    dialog = _dialog(qgis_iface)
    _use_model_file(dialog, model_path)
    assert not dialog.tta_check.isChecked()
    dialog.tta_check.setChecked(True)
    dialog.accept()
    assert dialog.request.options["tta"] is True and dialog.request.detect_options().tta is True
    again = _dialog(qgis_iface)
    assert again.tta_check.isChecked()
    again.tta_check.setChecked(False)
    again.accept()


def test_a_very_large_raster_is_run_only_when_confirmed(qgis_iface, project, model_path, tmp_path):
    """Issue 21: the dialog asks before a run of more than 100,000 tiles; the engine refuses it otherwise."""
    from qgis.core import QgsRasterLayer

    from tests.core.test_runaway_work import huge_vrt

    layer = QgsRasterLayer(huge_vrt(tmp_path, 20_000, 0.5), "huge")
    project.addMapLayer(layer)
    dialog = _dialog(qgis_iface)
    dialog.raster_combo.setLayer(layer)
    _use_model_file(dialog, model_path)
    with mock.patch.object(dialog, "confirm_large", return_value=False) as ask:
        dialog.accept()
    assert ask.called and "more than 100,000 tiles" in ask.call_args[0][0] and dialog.request is None
    assert "more than 100,000 tiles" in _bar_text(dialog)
    with mock.patch.object(dialog, "confirm_large", return_value=True):
        dialog.accept()
    assert dialog.request.options["confirm_large_run"] is True


def test_the_dialog_opens_without_importing_torch_where_no_gpu_driver_is(tmp_path):
    """QA, session 16: filling the device combo imported torch on the GUI thread, and QGIS froze
    for 2.5-2.8 s on the first click, on every machine without a GPU too. A fresh process is
    needed: this one has imported torch long ago."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from unittest import mock
        from qgis.core import QgsApplication
        app = QgsApplication([], True)
        app.initQgis()
        from roof_detector.core import devices
        with mock.patch.object(devices, "cuda_driver_present", return_value=False):
            from roof_detector.qgis_ui.dialog import DetectDialog
            dialog = DetectDialog(None)
        print("TORCH", "torch" in sys.modules, dialog.device_info.text())
        """
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TORCH False No CUDA GPU found; CPU with" in proc.stdout
