"""The Detect dialog as a planner uses it: non-modal beside the map, QGIS's extent widget, a raster file
that is not loaded yet, and the default GeoPackage path (issue 17)."""

import os
from unittest import mock

import pytest
from shapely import wkt
from shapely.geometry import box

from tests.qgis.conftest import ORIGIN, existing_gpkg, write_test_raster

pytestmark = pytest.mark.qgis


def _use_model_file(dialog, path):
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("file"))
    dialog.model_file.setFilePath(path)


def _bar_text(dialog):
    from roof_detector.qgis_ui.message_bar import item_text

    return item_text(dialog.bar.currentItem())


def _rect(x0, y0, x1, y1):
    """A rectangle in metres from the test raster's top-left corner (EPSG:32631), y downwards."""
    from qgis.core import QgsRectangle

    return QgsRectangle(ORIGIN[0] + x0, ORIGIN[1] - y1, ORIGIN[0] + x1, ORIGIN[1] - y0)


def _bounds(rect):
    return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())


def test_the_dialog_is_non_modal_kept_once_and_starts_the_task_when_accepted(
    plugin, qgis_iface, ortho_layer, model_path
):
    plugin.actions[0].trigger()
    dialog = plugin.dialog
    assert dialog is not None and dialog.isVisible() and not dialog.isModal()
    plugin.actions[0].trigger()  # a second click raises the same dialog
    assert plugin.dialog is dialog and dialog.isVisible()
    _use_model_file(dialog, model_path)
    with mock.patch.object(plugin, "start") as start:
        dialog.buttons.button(dialog.buttons.Ok).click()
    assert start.call_count == 1 and start.call_args[0][0].raster_name == "ortho"
    assert plugin.dialog is None and not dialog.isVisible()
    plugin.actions[0].trigger()  # the next click opens a fresh dialog (active layer, remembered choices)
    again = plugin.dialog
    assert again is not None and again is not dialog and again.model_combo.currentData() == "file"
    with mock.patch.object(plugin, "start") as start:
        again.reject()
    start.assert_not_called()
    assert plugin.dialog is None


def test_the_extent_follows_the_map_while_the_dialog_is_open(qgis_iface, ortho_layer, model_path):
    from qgis.gui import QgsExtentWidget

    from roof_detector.qgis_ui.dialog import DetectDialog

    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(ortho_layer.crs())
    canvas.setExtent(_rect(0, 0, 80, 64))
    dialog = DetectDialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("extent"))
    assert dialog.extent_widget.isEnabled() and not dialog.aoi_layer_combo.isEnabled()
    assert dialog.extent_widget.extentState() == QgsExtentWidget.CurrentExtent
    dialog.show()
    canvas.setExtent(_rect(10, 10, 30, 30))  # the user pans and zooms with the dialog open
    shown = canvas.extent()
    assert _bounds(dialog.extent_widget.outputExtent()) == pytest.approx(_bounds(shown), abs=1e-6)
    dialog.accept()
    aoi = wkt.loads(dialog.request.aoi_wkt)
    assert aoi.bounds == pytest.approx(_bounds(shown), abs=0.01)
    assert aoi.contains(box(*_bounds(_rect(11, 11, 29, 29))))


def test_a_layer_extent_or_a_rectangle_drawn_on_the_map_is_the_area(qgis_iface, project, ortho_layer, model_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsRectangle, QgsVectorLayer

    from roof_detector.qgis_ui.dialog import DetectDialog

    canvas = qgis_iface.mapCanvas()
    crs3857 = QgsCoordinateReferenceSystem("EPSG:3857")
    canvas.setDestinationCrs(crs3857)
    to3857 = QgsCoordinateTransform(ortho_layer.crs(), crs3857, project)
    canvas.setExtent(to3857.transformBoundingBox(ortho_layer.extent()))
    zones = QgsVectorLayer("Polygon?crs=EPSG:32631", "zones", "memory")
    from qgis.core import QgsFeature, QgsGeometry

    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(_rect(20, 20, 60, 50)))
    zones.dataProvider().addFeatures([feature])
    zones.updateExtents()
    project.addMapLayer(zones)
    dialog = DetectDialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("extent"))
    dialog.show()
    dialog.extent_widget.setOutputExtentFromLayer(zones)  # "Calculate from layer"
    canvas.setExtent(to3857.transformBoundingBox(_rect(0, 0, 10, 10)))  # panning no longer changes it
    dialog.accept()
    aoi = wkt.loads(dialog.request.aoi_wkt)  # in the raster's CRS, covering the layer's extent
    assert aoi.contains(box(*_bounds(_rect(20.5, 20.5, 59.5, 49.5))))
    assert aoi.area == pytest.approx(40 * 30, rel=0.02)

    dialog = DetectDialog(qgis_iface)
    _use_model_file(dialog, model_path)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("extent"))
    dialog.show()
    from qgis.gui import QgsMapToolPan

    pan = QgsMapToolPan(canvas)  # QGIS's usual tool, given back after drawing
    canvas.setMapTool(pan)
    dialog.extent_widget.setOutputExtentFromDrawOnCanvas()  # the dialog steps aside for drawing
    assert not dialog.isVisible()
    from qgis.gui import QgsMapToolExtent
    from qgis.PyQt.QtCore import QPoint, Qt
    from qgis.PyQt.QtTest import QTest

    assert isinstance(canvas.mapTool(), QgsMapToolExtent)
    viewport = canvas.viewport()
    start, end = (
        QPoint(viewport.width() // 5, viewport.height() // 4),
        QPoint(viewport.width() // 2, viewport.height() // 2),
    )
    QTest.mousePress(viewport, Qt.LeftButton, Qt.NoModifier, start)  # drag a rectangle on the map
    QTest.mouseMove(viewport, end)
    QTest.mouseRelease(viewport, Qt.LeftButton, Qt.NoModifier, end)
    assert dialog.isVisible() and canvas.mapTool() is pan
    to_map = canvas.getCoordinateTransform()
    corners = [to_map.toMapCoordinates(p.x(), p.y()) for p in (start, end)]
    drawn = QgsRectangle(corners[0], corners[1])
    dialog.accept()
    aoi = wkt.loads(dialog.request.aoi_wkt)
    back = QgsCoordinateTransform(crs3857, ortho_layer.crs(), project)
    assert aoi.bounds == pytest.approx(_bounds(back.transformBoundingBox(drawn)), abs=0.05)
    canvas.unsetMapTool(pan)


def test_a_raster_file_not_in_the_project_is_added_once_and_chosen(qgis_iface, project, ortho_layer, tmp_path):
    from roof_detector.qgis_ui.dialog import DetectDialog

    other = str(write_test_raster(tmp_path / "district_7.tif"))
    dialog = DetectDialog(qgis_iface)
    with mock.patch("qgis.PyQt.QtWidgets.QFileDialog.getOpenFileName", return_value=(other, "")) as ask:
        dialog.browse_button.click()
        assert ask.called and "*.tif" in ask.call_args[0][3].lower()
        layer = dialog.raster_combo.currentLayer()
        assert layer is not None and layer.name() == "district_7" and project.mapLayer(layer.id()) is layer
        assert dialog.gpkg_file.filePath() == str(tmp_path / "district_7_buildings.gpkg")
        dialog.raster_combo.setLayer(ortho_layer)
        dialog.browse_button.click()  # the same file again: its layer is chosen, not added a second time
    assert dialog.raster_combo.currentLayer() is layer and project.count() == 2
    junk = tmp_path / "notes.tif"
    junk.write_text("not an image")
    with mock.patch("qgis.PyQt.QtWidgets.QFileDialog.getOpenFileName", return_value=(str(junk), "")):
        dialog.browse_button.click()
    assert "cannot be opened as a raster" in _bar_text(dialog) and str(junk) in _bar_text(dialog)
    assert project.count() == 2 and dialog.raster_combo.currentLayer() is layer
    with mock.patch("qgis.PyQt.QtWidgets.QFileDialog.getOpenFileName", return_value=("", "")):
        dialog.browse_button.click()  # cancelled: nothing changes
    assert project.count() == 2


def test_the_default_output_is_beside_the_raster_and_the_choice_is_kept_this_session(
    qgis_iface, project, ortho_layer, ortho_path, model_path, tmp_path
):
    from qgis.core import QgsRasterLayer

    from roof_detector.qgis_ui.dialog import DetectDialog

    default = os.path.join(os.path.dirname(ortho_path), "ortho_buildings.gpkg")
    dialog = DetectDialog(qgis_iface)
    assert dialog.gpkg_file.filePath() == default and dialog.gpkg_layer_edit.text() == "buildings"
    _use_model_file(dialog, model_path)
    dialog.gpkg_radio.setChecked(True)
    chosen = str(tmp_path / "roofs_2026.gpkg")
    dialog.gpkg_file.setFilePath(chosen)
    dialog.accept()
    assert dialog.request.gpkg_path == chosen
    other = QgsRasterLayer(str(write_test_raster(tmp_path / "north.tif")), "north")
    project.addMapLayer(other)
    again = DetectDialog(qgis_iface)
    assert again.gpkg_radio.isChecked() and again.gpkg_file.filePath() == chosen  # kept for this orthophoto
    again.raster_combo.setLayer(other)  # the output follows the orthophoto
    assert again.gpkg_file.filePath() == str(tmp_path / "north_buildings.gpkg")
    again.raster_combo.setLayer(ortho_layer)
    assert again.gpkg_file.filePath() == chosen


def test_the_default_output_never_replaces_a_layer_silently(qgis_iface, ortho_layer, model_path, tmp_path):
    from qgis.core import QgsRasterLayer

    from roof_detector.qgis_adapter.output import gpkg_layer_names
    from roof_detector.qgis_ui.dialog import DetectDialog

    raster = QgsRasterLayer(str(write_test_raster(tmp_path / "south.tif")), "south")
    ortho_layer.project().addMapLayer(raster)
    target = str(tmp_path / "south_buildings.gpkg")
    existing_gpkg(target, "buildings")
    before = os.path.getmtime(target)
    dialog = DetectDialog(qgis_iface)
    dialog.raster_combo.setLayer(raster)
    _use_model_file(dialog, model_path)
    dialog.gpkg_radio.setChecked(True)
    assert dialog.gpkg_file.filePath() == target
    with mock.patch.object(dialog, "confirm_replace", return_value=False) as ask:
        dialog.accept()
    assert ask.call_args[0] == (target, "buildings") and dialog.request is None
    assert "choose another layer name" in _bar_text(dialog)
    assert gpkg_layer_names(target) == ["buildings"] and os.path.getmtime(target) == before


def test_a_web_layer_defaults_to_the_project_folder(project, tmp_path):
    from roof_detector.qgis_ui.output_box import default_gpkg_path

    layer = mock.MagicMock()
    layer.providerType.return_value = "wms"
    layer.name.return_value = "OSM Standard / 2026"
    project.setFileName(str(tmp_path / "city.qgz"))
    try:
        assert default_gpkg_path(layer) == str(tmp_path / "OSM_Standard_2026_buildings.gpkg")
    finally:
        project.setFileName("")
