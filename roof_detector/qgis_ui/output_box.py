"""The Detect dialog's "Output" group: a temporary layer, or a layer in a GeoPackage file.

The GeoPackage path defaults to ``<raster stem>_buildings.gpkg`` next to the
orthophoto (else in the project's folder, else the home folder, whichever is
writable first); the path chosen for an orthophoto is remembered for the rest
of the QGIS session. A layer that exists in the file is replaced only when the
user says so (asked once, about the layer: the file's other layers are kept).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict

from qgis.core import QgsProject
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QButtonGroup, QFormLayout, QGroupBox, QLineEdit, QRadioButton, QWidget

from ..qgis_adapter.output import gpkg_layer_names
from ..qgis_adapter.request import DetectRequest, RequestError
from . import settings, tr
from .area_rows import local_raster_file

#: GeoPackage path chosen per orthophoto (its layer source) during this QGIS session.
SESSION_PATHS: Dict[str, str] = {}
SUFFIX = "_buildings.gpkg"


def default_gpkg_path(layer: Any) -> str:
    """``<stem>_buildings.gpkg`` beside the raster file, else in the project's folder, else at home."""
    path = local_raster_file(layer)
    if path:
        stem = os.path.splitext(os.path.basename(path))[0]
    else:
        stem = re.sub(r"[^\w.-]+", "_", layer.name()).strip("_") if layer is not None else ""
    folders = [os.path.dirname(path)] if path else []
    folders += [QgsProject.instance().homePath(), os.path.expanduser("~")]
    folder = next((f for f in folders if f and os.path.isdir(f) and os.access(f, os.W_OK)), os.getcwd())
    return os.path.join(folder, (stem or "roof_detector") + SUFFIX)


class OutputBox(QGroupBox):
    """Temporary layer or GeoPackage file + layer name; fills a request's output fields."""

    def __init__(self, parent: QWidget):
        super().__init__(tr("Output"), parent)
        self.memory_radio = QRadioButton(tr("Temporary layer"), self)
        self.gpkg_radio = QRadioButton(tr("GeoPackage file"), self)
        self.group = QButtonGroup(self)
        self.group.addButton(self.memory_radio)
        self.group.addButton(self.gpkg_radio)
        self.gpkg_file = QgsFileWidget(self)
        self.gpkg_file.setStorageMode(QgsFileWidget.SaveFile)
        self.gpkg_file.setFilter(tr("GeoPackage (*.gpkg)"))
        # Ask once: a file that exists keeps its other layers, so Qt's "replace the file?" would be
        # wrong; confirm_replace asks about the layer when (and only when) it exists.
        self.gpkg_file.setConfirmOverwrite(False)
        self.gpkg_layer_edit = QLineEdit(self)
        form = QFormLayout(self)
        form.addRow(self.memory_radio)
        form.addRow(self.gpkg_radio)
        form.addRow(tr("File"), self.gpkg_file)
        form.addRow(tr("Layer name"), self.gpkg_layer_edit)
        self.gpkg_radio.toggled.connect(self.update_enabled)

    def update_enabled(self, *_: Any) -> None:
        gpkg = self.gpkg_radio.isChecked()
        self.gpkg_file.setEnabled(gpkg)
        self.gpkg_layer_edit.setEnabled(gpkg)

    def load(self, raster: Any) -> None:
        """The remembered mode and layer name; the path for ``raster``."""
        gpkg = settings.get("output_mode") == "gpkg"
        (self.gpkg_radio if gpkg else self.memory_radio).setChecked(True)
        self.gpkg_layer_edit.setText(settings.get("gpkg_layer"))
        self.set_raster(raster)
        self.update_enabled()

    def set_raster(self, raster: Any) -> None:
        """The output follows the orthophoto: its path chosen this session, else its default path."""
        if raster is not None:
            self.gpkg_file.setFilePath(SESSION_PATHS.get(raster.source()) or default_gpkg_path(raster))

    def save(self, raster: Any) -> None:
        """Remember the mode and layer name (settings) and this raster's path (this session)."""
        settings.set("output_mode", "gpkg" if self.gpkg_radio.isChecked() else "memory")
        settings.set("gpkg_layer", self.gpkg_layer_edit.text())
        if raster is not None and self.gpkg_radio.isChecked() and self.gpkg_file.filePath().strip():
            SESSION_PATHS[raster.source()] = self.target_path()

    def target_path(self) -> str:
        """The chosen file, with the .gpkg extension."""
        target = self.gpkg_file.filePath().strip()
        return target if not target or target.lower().endswith(".gpkg") else target + ".gpkg"

    def fill(self, request: DetectRequest, confirm_replace: Callable[[str, str], bool]) -> None:
        """Set the request's output; raise :class:`RequestError` for a bad choice or a refused replacement."""
        if not self.gpkg_radio.isChecked():
            return
        target, name = self.target_path(), self.gpkg_layer_edit.text().strip()
        if not target:
            raise RequestError(tr("Choose the GeoPackage file to write."))
        if not name:
            raise RequestError(tr("Enter a layer name for the GeoPackage."))
        folder = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(folder):
            raise RequestError(tr("Folder {folder} does not exist.").format(folder=folder))
        replace = False
        if name in gpkg_layer_names(target):
            if not confirm_replace(target, name):
                raise RequestError(
                    tr("Layer '{layer}' exists in {path}; choose another layer name.").format(layer=name, path=target)
                )
            replace = True
        request.output_mode, request.gpkg_path, request.gpkg_layer = "gpkg", target, name
        request.replace_layer = replace
