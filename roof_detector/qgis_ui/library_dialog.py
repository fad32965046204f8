"""The "Model Library" dialog: a thin layer over :mod:`roof_detector.core.model_library`.

Lists the models of the user's library folder (name, version, GSD,
validation IoU, file) and renames, deletes, imports and exports them. The
questions it asks (new name, confirmation, file to import or export to) are
separate methods so tests can answer them.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Tuple

from qgis.core import Qgis, QgsMessageLog
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import LOG_TAG, tr
from .message_bar import push
from ..qgis_adapter.paths import model_library_dir

COLUMNS = ("Name", "Version", "GSD (m)", "Val. IoU", "File")
TRUST_WARNING = tr(
    "A model file is a program: it runs on this computer whenever it is used. Import and use "
    "models from trusted sources only. Models whose code reads or writes files are refused."
)


class ModelLibraryDialog(QDialog):
    """Manage the model files of the library folder."""

    def __init__(self, iface: Any = None, parent: Optional[QWidget] = None, library_dir: Optional[str] = None):
        super().__init__(parent)
        self.iface = iface
        self.library_dir = library_dir or model_library_dir()
        self.entries: List[Any] = []
        self.setWindowTitle(tr("Model Library"))
        self.setMinimumSize(720, 360)
        self._build()
        self.refresh()

    def _build(self) -> None:
        self.bar = QgsMessageBar(self)
        self.folder_label = QLabel(tr("Folder: {folder}").format(folder=self.library_dir), self)
        self.folder_label.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels([tr(c) for c in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self._update_enabled)

        self.rename_button = QPushButton(tr("Rename…"), self)
        self.delete_button = QPushButton(tr("Delete…"), self)
        self.import_button = QPushButton(tr("Import…"), self)
        self.export_button = QPushButton(tr("Export…"), self)
        self.folder_button = QPushButton(tr("Open folder"), self)
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.import_button.clicked.connect(self.import_file)
        self.export_button.clicked.connect(self.export_selected)
        self.folder_button.clicked.connect(self.open_folder)
        side = QVBoxLayout()
        for b in (self.rename_button, self.delete_button, self.import_button, self.export_button, self.folder_button):
            side.addWidget(b)
        side.addStretch(1)
        middle = QHBoxLayout()
        middle.addWidget(self.table, 1)
        middle.addLayout(side)

        # TorchScript is no sandbox: a model file runs as code whenever it is used.
        self.trust_label = QLabel(TRUST_WARNING, self)
        self.trust_label.setWordWrap(True)
        self.import_button.setToolTip(TRUST_WARNING)
        buttons = QDialogButtonBox(QDialogButtonBox.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.bar)
        layout.addWidget(self.folder_label)
        layout.addLayout(middle, 1)
        layout.addWidget(self.trust_label)
        layout.addWidget(buttons)

    # -- listing -------------------------------------------------------------
    def refresh(self, select_path: Optional[str] = None) -> None:
        """Re-read the folder and fill the table (optionally selecting ``select_path``)."""
        from ..core.model_library import list_models

        self.entries = list_models(self.library_dir)
        self.table.setRowCount(len(self.entries))
        for row, e in enumerate(self.entries):
            cells = [
                e.name if e.ok else tr("{name} (invalid)").format(name=e.name),
                e.version,
                f"{e.gsd_m:g}" if e.gsd_m is not None else "",
                f"{e.val_iou:.3f}" if e.val_iou is not None else "",
                e.file_name,
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(e.error or e.path)
                self.table.setItem(row, col, item)
            if select_path and os.path.normcase(e.path) == os.path.normcase(select_path):
                self.table.selectRow(row)
        self.table.resizeColumnsToContents()
        self._update_enabled()

    def selected_entry(self) -> Optional[Any]:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self.entries[min(rows)] if rows else None

    def select_file(self, file_name: str) -> None:
        """Select the row of ``file_name`` (tests, and after an operation)."""
        for row, e in enumerate(self.entries):
            if e.file_name == file_name:
                self.table.selectRow(row)
                return

    def _update_enabled(self) -> None:
        entry = self.selected_entry()
        for b in (self.rename_button, self.export_button):
            b.setEnabled(entry is not None and entry.ok)
        self.delete_button.setEnabled(entry is not None)

    # -- questions (tests answer them) --------------------------------------------
    def ask_new_name(self, entry: Any) -> Optional[str]:
        text, ok = QInputDialog.getText(
            self, tr("Rename model"), tr("New name of '{name}':").format(name=entry.name), text=entry.name
        )
        return text.strip() if ok and text.strip() else None

    def confirm_delete(self, entry: Any) -> bool:
        answer = QMessageBox.question(
            self,
            tr("Delete model?"),
            tr("Delete '{name}' ({file}) and its training curves from the library? This cannot be undone.").format(
                name=entry.name, file=entry.file_name
            ),
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def ask_import_path(self) -> Optional[str]:
        path, _ = QFileDialog.getOpenFileName(
            self,
            tr("Import a model (from a trusted source only: a model file is a program)"),
            "",
            tr("TorchScript model (*.pt)"),
        )
        return path or None

    def ask_export_path(self, entry: Any) -> Optional[str]:
        path, _ = QFileDialog.getSaveFileName(self, tr("Export model"), entry.file_name, tr("TorchScript model (*.pt)"))
        return path or None

    # -- operations ------------------------------------------------------------
    def _report(self, text: str, level: int) -> None:
        QgsMessageLog.logMessage(text, LOG_TAG, level)
        push(self.bar, "", text, level, 0 if level >= Qgis.Warning else 5)

    def _run(self, action: Callable[[], Any], success: Callable[[Any], str]) -> Tuple[bool, Any]:
        """(done, result) of ``action``; its refusal or success goes to the message bar and the log."""
        from ..core.errors import RoofDetectorError

        self.bar.clearWidgets()
        try:
            result = action()
        except RoofDetectorError as exc:
            self._report(str(exc), Qgis.Warning)
            return False, None
        except OSError as exc:
            self._report(tr("File operation failed: {error}").format(error=exc), Qgis.Critical)
            return False, None
        self._report(success(result), Qgis.Success)
        return True, result

    def rename_selected(self) -> Optional[str]:
        from ..core.model_library import rename_model

        entry = self.selected_entry()
        if entry is None:
            return None
        name = self.ask_new_name(entry)
        if not name:
            return None
        done, new = self._run(
            lambda: rename_model(entry.path, name), lambda path: tr("Renamed to {path}.").format(path=path)
        )
        self.refresh(select_path=new)
        return new

    def delete_selected(self) -> bool:
        from ..core.model_library import delete_model

        entry = self.selected_entry()
        if entry is None or not self.confirm_delete(entry):
            return False
        done, _ = self._run(
            lambda: delete_model(entry.path), lambda removed: tr("Deleted {file}.").format(file=entry.file_name)
        )
        self.refresh()
        return done

    def import_file(self) -> Optional[str]:
        from ..core.model_library import import_model

        source = self.ask_import_path()
        if not source:
            return None
        done, new = self._run(
            lambda: import_model(source, self.library_dir), lambda path: tr("Imported as {path}.").format(path=path)
        )
        self.refresh(select_path=new)
        return new

    def export_selected(self) -> Optional[str]:
        from ..core.model_library import export_model_file

        entry = self.selected_entry()
        if entry is None:
            return None
        target = self.ask_export_path(entry)
        if not target:
            return None
        # The file dialog has asked before replacing an existing file.
        done, path = self._run(
            lambda: export_model_file(entry.path, target, overwrite=True),
            lambda path: tr("Exported to {path}.").format(path=path),
        )
        return path

    def open_folder(self) -> None:
        os.makedirs(self.library_dir, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(self.library_dir))


def show_library_dialog(iface: Any, dialog: Optional[ModelLibraryDialog] = None) -> Optional[ModelLibraryDialog]:
    """Plugin action: check the dependencies, then show the (refreshed) library dialog; return it."""
    from ..qgis_adapter.deps import dependency_problem
    from .present import notify

    problem = dependency_problem("detect")
    if problem:
        notify(iface, problem, Qgis.Critical)
        return dialog
    if dialog is None:
        dialog = ModelLibraryDialog(iface, iface.mainWindow() if iface is not None else None)
    else:
        dialog.refresh()
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
