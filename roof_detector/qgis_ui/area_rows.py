"""The Detect dialog's input rows: the orthophoto (a project layer or a file) and the area to search.

The area is the whole layer, an extent chosen with QGIS's own extent widget
(the current map extent, which follows the map while it is chosen, a layer's
extent, or a rectangle drawn on the map: the dialog is non-modal and steps
aside while drawing), or the selected polygons of a layer. It reaches the
engine as a polygon in the raster's CRS (:mod:`..qgis_adapter.request`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from qgis.core import QgsMapLayerProxyModel, QgsProject, QgsProviderRegistry, QgsRasterLayer, QgsSettings
from qgis.gui import QgsExtentWidget
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtWidgets import QFileDialog, QFormLayout, QHBoxLayout, QToolButton, QWidget

from ..qgis_adapter.request import RequestError, extent_aoi_wkt, selection_aoi_wkt
from . import tr
from .pickers import choice_combo, layer_combo

AREA_MODES = (("layer", "Whole layer"), ("extent", "Extent"), ("selection", "Selected polygons of a layer"))
LAST_DIR_KEY = "UI/lastRasterFileFilterDir"  # the folder QGIS's own Add Raster Layer remembers


def local_raster_file(layer: Any) -> str:
    """The local file behind a raster layer ('' for a web or database layer)."""
    if layer is None or layer.providerType() != "gdal":
        return ""
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or ""
    return path if os.path.isfile(path) else ""


class AreaRows(QObject):
    """Orthophoto combo + file button, area mode, extent widget, polygon layer; ``changed`` on any change."""

    changed = pyqtSignal()

    def __init__(self, dialog: QWidget, canvas: Any = None):
        super().__init__(dialog)
        self.dialog, self.canvas = dialog, canvas
        self.raster_combo = layer_combo(dialog, QgsMapLayerProxyModel.RasterLayer)
        self.browse_button = QToolButton(dialog)
        self.browse_button.setText("…")
        self.browse_button.setObjectName("roofDetectorBrowseRaster")
        self.browse_button.setToolTip(tr("Open a raster file that is not in the project (it is added to the project)"))
        self.area_combo = choice_combo(dialog, AREA_MODES)
        self.extent_widget = QgsExtentWidget(dialog, QgsExtentWidget.CondensedStyle)
        self.extent_widget.setObjectName("roofDetectorExtent")
        self.aoi_layer_combo = layer_combo(dialog, QgsMapLayerProxyModel.PolygonLayer)
        self._set_up_extent()
        self.raster_combo.layerChanged.connect(self.set_raster)
        self.area_combo.currentIndexChanged.connect(self.update_enabled)
        self.extent_widget.extentChanged.connect(lambda *_: self.changed.emit())

    def add_rows(self, form: QFormLayout) -> None:
        """Orthophoto, Area, Extent and Polygon layer rows."""
        row = QHBoxLayout()
        row.addWidget(self.raster_combo, 1)
        row.addWidget(self.browse_button)
        form.addRow(tr("Orthophoto"), row)
        form.addRow(tr("Area"), self.area_combo)
        form.addRow(tr("Extent"), self.extent_widget)
        form.addRow(tr("Polygon layer"), self.aoi_layer_combo)

    def _set_up_extent(self) -> None:
        widget = self.extent_widget
        widget.toggleDialogVisibility.connect(self._show_dialog)  # drawing on the map hides the dialog
        if self.canvas is None:
            return
        crs = self.canvas.mapSettings().destinationCrs()
        widget.setMapCanvas(self.canvas)
        widget.setOutputCrs(crs)
        widget.setCurrentExtent(self.canvas.extent(), crs)
        widget.setOutputExtentFromCurrent()
        self.canvas.extentsChanged.connect(self._follow_map)
        self.canvas.destinationCrsChanged.connect(self._follow_map)

    def _follow_map(self) -> None:
        """While "current map extent" is chosen, the area is what the map shows now (the dialog is non-modal)."""
        crs = self.canvas.mapSettings().destinationCrs()
        if crs != self.extent_widget.outputCrs():
            self.extent_widget.setOutputCrs(crs)
        self.extent_widget.setCurrentExtent(self.canvas.extent(), crs)
        if self.extent_widget.extentState() == QgsExtentWidget.CurrentExtent:
            self.extent_widget.setOutputExtentFromCurrent()
        self.changed.emit()

    def _show_dialog(self, visible: bool) -> None:
        self.dialog.setVisible(visible)
        if visible:
            self.dialog.raise_()
            self.dialog.activateWindow()

    def set_raster(self, layer: Any) -> None:
        """Follow the chosen orthophoto: its extent is the widget's "layer extent"."""
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            self.extent_widget.setOriginalExtent(layer.extent(), layer.crs())  # "use layer's extent"
            if self.canvas is None:  # no map: the extent starts as the layer's, in its CRS
                self.extent_widget.setOutputCrs(layer.crs())
                self.extent_widget.setCurrentExtent(layer.extent(), layer.crs())
                self.extent_widget.setOutputExtentFromOriginal()
        self.changed.emit()

    def update_enabled(self, *_: Any) -> None:
        mode = self.area_combo.currentData()
        self.extent_widget.setEnabled(mode == "extent")
        self.aoi_layer_combo.setEnabled(mode == "selection")
        self.changed.emit()

    def area_wkt(self, raster: QgsRasterLayer) -> Optional[str]:
        """The chosen area as WKT in the raster CRS (None: whole layer); raises RequestError."""
        mode = self.area_combo.currentData()
        if mode == "extent":
            widget = self.extent_widget
            if not widget.isValid() or widget.outputExtent().isEmpty():
                raise RequestError(
                    tr("Choose the extent: the map's, a layer's, or draw one on the map (the button beside it).")
                )
            return extent_aoi_wkt(widget.outputExtent(), widget.outputCrs(), raster)
        if mode == "selection":
            return selection_aoi_wkt(self.aoi_layer_combo.currentLayer(), raster)
        return None

    def choose_raster_file(self) -> Optional[QgsRasterLayer]:
        """The file button: ask for a raster file and open it (None when the user cancels)."""
        folder = QgsSettings().value(LAST_DIR_KEY, os.path.expanduser("~"))
        path, _ = QFileDialog.getOpenFileName(
            self.dialog, tr("Open an orthophoto"), str(folder), QgsProviderRegistry.instance().fileRasterFilters()
        )
        return self.open_raster_file(path) if path else None

    def open_raster_file(self, path: str) -> QgsRasterLayer:
        """Select ``path``'s layer: the project's if it has one on that file, else a new one added to the project.

        Raises :class:`RequestError` (nothing added) when GDAL cannot read the file as a raster.
        """
        wanted = os.path.realpath(path)
        for layer in QgsProject.instance().mapLayers().values():
            file = local_raster_file(layer) if isinstance(layer, QgsRasterLayer) else ""
            if file and os.path.realpath(file) == wanted:
                self.raster_combo.setLayer(layer)
                return layer
        layer = QgsRasterLayer(path, os.path.splitext(os.path.basename(path))[0], "gdal")
        if not layer.isValid():
            raise RequestError(
                tr(
                    "{path} cannot be opened as a raster; choose an orthophoto file (GeoTIFF, JPEG 2000, VRT...)."
                ).format(path=path)
            )
        QgsProject.instance().addMapLayer(layer)
        self.raster_combo.setLayer(layer)
        QgsSettings().setValue(LAST_DIR_KEY, os.path.dirname(os.path.abspath(path)))
        return layer
