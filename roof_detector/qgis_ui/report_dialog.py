"""The Rooftop Report dialog: totals, histogram of building areas and table of a polygon layer.

Every figure, the HTML and the CSV come from :mod:`roof_detector.core.report`
(``build_table`` -> ``totals`` / ``histogram_png`` / ``render_html`` /
``write_csv``); this module only gathers one row per feature and shows or
exports what ``core.report`` makes of them.

Rows come from the layer's solar fields when it has them (a detection
result, or the output of *Rooftop solar potential*); otherwise they are
computed with :func:`roof_detector.core.footprints.measure_polygons` and the
solar parameters remembered by the Detect dialog, without changing the
layer. A layer of more than :data:`TASK_THRESHOLD` features is read in a
:class:`QgsTask` (through a ``QgsVectorLayerFeatureSource``, safe in a worker
thread) while the dialog shows progress.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any, Dict, List, Optional, Set

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMessageLog,
    QgsVectorLayer,
)
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtGui import QPageSize, QPdfWriter, QTextDocument
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLabel,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..qgis_adapter.report_rows import Rows, RowsTask, read_rows  # noqa: F401 - read_rows re-exported
from ..qgis_adapter.request import is_polygon_layer
from . import LOG_TAG, settings, tr
from .message_bar import push

#: Features above which the rows are gathered in a background task.
TASK_THRESHOLD = 2000
#: Rows of the buildings table shown in the dialog (the exports hold all of them).
SHOWN_ROWS = 500
#: Without these the layer is sized here instead (they make the totals).
REQUIRED_FIELDS = ("area_m2", "usable_area_m2", "panels", "kwp", "annual_kwh")
EXPORTS = {"html": ("HTML", "*.html"), "pdf": ("PDF", "*.pdf"), "csv": ("CSV", "*.csv")}


class ReportError(ValueError):
    """The layer cannot be reported on; the message says why and what to do."""


def has_solar_fields(layer: QgsVectorLayer) -> bool:
    """True if ``layer`` carries the solar fields the totals are made of."""
    names = set(layer.fields().names())
    return all(name in names for name in REQUIRED_FIELDS)


def check_layer(layer: Any) -> QgsVectorLayer:
    """``layer`` if a report can be made of it, else raise :class:`ReportError`."""
    if layer is None:
        raise ReportError(tr("Select a polygon layer of buildings in the Layers panel first."))
    if not is_polygon_layer(layer):
        raise ReportError(
            tr("Layer '{name}' is not a polygon layer; select a layer of building outlines.").format(name=layer.name())
        )
    if not has_solar_fields(layer) and not layer.crs().isValid():
        raise ReportError(
            tr(
                "Layer '{name}' has no coordinate reference system, so its roofs cannot be "
                "measured. Set it in Layer Properties > Source."
            ).format(name=layer.name())
        )
    return layer


class ReportDialog(QDialog):
    """Shows the rooftop report of one polygon layer; exports it as HTML, PDF or CSV.

    ``solar_kwargs`` size the layer if it has no solar fields; ``described_params``
    (e.g. a detection's choices) are listed in the report when the figures come
    from the layer's fields. ``tasks`` is the plugin's set of running tasks (so
    unloading the plugin cancels a running one).
    """

    def __init__(
        self,
        layer: QgsVectorLayer,
        solar_kwargs: Optional[Dict[str, Any]] = None,
        parent: Optional[QWidget] = None,
        described_params: Optional[Dict[str, Any]] = None,
        tasks: Optional[Set[Any]] = None,
        task_manager: Any = None,
    ):
        super().__init__(parent)
        self.layer = check_layer(layer)
        self.layer_name = layer.name()
        provider = layer.providerType()
        self.source = f"{layer.name()} ({layer.source()})" if provider and provider != "memory" else layer.name()
        self.solar_kwargs = dict(solar_kwargs if solar_kwargs is not None else settings.solar_kwargs())
        self.described_params = described_params
        self.tasks = tasks if tasks is not None else set()
        self.task_manager = task_manager
        self.task: Optional[RowsTask] = None
        self.data: Optional[Rows] = None
        self.table: List[Dict[str, Any]] = []
        self.totals: Dict[str, Any] = {}
        self.png: bytes = b""
        self.setWindowTitle(tr("Rooftop Report – {name}").format(name=self.layer_name))
        self.resize(760, 720)
        self._build()
        self.start()

    # -- construction ------------------------------------------------------
    def _build(self) -> None:
        self.bar = QgsMessageBar(self)
        self.status_label = QLabel(self)
        self.status_label.setWordWrap(True)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        self.browser = QTextBrowser(self)
        self.browser.setObjectName("roofDetectorReportView")
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close, self)
        self.export_buttons: Dict[str, QPushButton] = {}
        for kind, (label, _) in EXPORTS.items():
            button = self.buttons.addButton(tr("Export {format}…").format(format=label), QDialogButtonBox.ActionRole)
            button.clicked.connect(lambda *_, k=kind: self.export(k))
            button.setEnabled(False)
            self.export_buttons[kind] = button
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.browser, 1)
        layout.addWidget(self.buttons)

    # -- gathering rows ------------------------------------------------------
    def start(self) -> None:
        """Gather the rows: at once for a small layer, in a QgsTask for a big one."""
        solar = None if has_solar_fields(self.layer) else self.solar_kwargs
        count = self.layer.featureCount()
        if solar is None:
            self.status_label.setText(
                tr("Figures read from the solar fields of layer '{name}'.").format(name=self.layer_name)
            )
        else:
            self.status_label.setText(
                tr(
                    "Layer '{name}' has no solar fields: its roofs are sized with the "
                    "solar parameters of the Detect Buildings dialog (the layer is not "
                    "changed)."
                ).format(name=self.layer_name)
            )
        if count > TASK_THRESHOLD:
            task = RowsTask(self.layer, solar, on_finished=self._task_finished)
            task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
            self.task = task
            self.tasks.add(task)
            self.progress.setVisible(True)
            self.browser.setPlainText(tr("Reading {count} buildings…").format(count=count))
            (self.task_manager or QgsApplication.taskManager()).addTask(task)
            return
        try:
            rows = read_rows(self.layer, self.layer.fields(), solar, self.layer.crs().toWkt())
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback dialog
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)
            self._fail(str(exc) or type(exc).__name__)
            return
        self.show_rows(rows)

    def _task_finished(self, task: RowsTask, ok: bool) -> None:
        self.tasks.discard(task)
        if self.task is not task:
            return
        self.task = None
        self.progress.setVisible(False)
        if ok and task.result is not None:
            self.show_rows(task.result)
        elif task.error:
            self._fail(task.error)
        else:
            self.browser.setPlainText(tr("Cancelled."))

    def _fail(self, error: str) -> None:
        text = tr("The report could not be made: {error}").format(error=error)
        QgsMessageLog.logMessage(f"{self.layer_name}: {text}", LOG_TAG, Qgis.Critical)
        push(self.bar, tr("Rooftop Report"), text, Qgis.Critical)
        self.browser.setPlainText(text)

    def cancel(self) -> None:
        """Cancel a running task (closing the dialog does this)."""
        if self.task is not None:
            try:
                self.task.cancel()
            except RuntimeError:  # already deleted by the task manager
                pass

    # -- showing -------------------------------------------------------------
    def report_params(self) -> Optional[Dict[str, Any]]:
        """The parameters listed in the report."""
        if self.data is not None and self.data.computed:
            from ..core.solar import SolarParams

            return SolarParams(**self.solar_kwargs).as_dict()
        params = {tr("solar figures"): tr("read from the layer's fields")}
        params.update(self.described_params or {})
        return params

    def show_rows(self, data: Rows) -> None:
        """Make the table, totals and histogram (core.report) and show them."""
        from ..core.report import build_table, histogram_png, totals

        self.data = data
        self.table = build_table(data.rows)
        self.totals = totals(self.table)
        self.png = histogram_png([row["area_m2"] for row in self.table])
        shown = self.table[:SHOWN_ROWS]
        html = self.html(shown)
        if len(shown) < len(self.table):
            self.status_label.setText(
                self.status_label.text()
                + " "
                + tr(
                    "The table below lists the first {shown} of {count} buildings; the exports hold all of them."
                ).format(shown=len(shown), count=len(self.table))
            )
        if data.skipped:
            push(
                self.bar,
                tr("Rooftop Report"),
                tr("{n} features without a polygon were left out.").format(n=data.skipped),
                Qgis.Warning,
            )
        self.browser.setHtml(html)
        for button in self.export_buttons.values():
            button.setEnabled(True)
        QgsMessageLog.logMessage(
            tr("Rooftop report of '{name}': {n} buildings, {kwp} kWp, {kwh} kWh/yr").format(
                name=self.layer_name, n=self.totals["buildings"], kwp=self.totals["kwp"], kwh=self.totals["annual_kwh"]
            ),
            LOG_TAG,
            Qgis.Info,
        )

    def html(self, table: Optional[List[Dict[str, Any]]] = None) -> str:
        """The report page (core.report.render_html) for ``table`` (default: all rows)."""
        from ..core.report import render_html

        return render_html(
            self.table if table is None else table,
            self.totals,
            self.png,
            title=tr("Rooftop solar report"),
            params=self.report_params(),
            source=self.source,
        )

    # -- exporting -----------------------------------------------------------
    def default_path(self, kind: str) -> str:
        folder = settings.get("report_dir") or os.path.expanduser("~")
        stem = re.sub(r"[^\w.-]+", "_", self.layer_name).strip("_") or "rooftops"
        return os.path.join(folder, f"{stem}_rooftop_report.{kind}")

    def ask_save_path(self, kind: str) -> str:
        """Ask where to write the ``kind`` export ("" when the user cancels)."""
        label, pattern = EXPORTS[kind]
        path, _ = QFileDialog.getSaveFileName(
            self,
            tr("Export the report as {format}").format(format=label),
            self.default_path(kind),
            f"{label} ({pattern})",
        )
        return path

    def export(self, kind: str, path: Optional[str] = None) -> Optional[str]:
        """Write the report as ``kind`` (html | pdf | csv) to ``path`` (asked when None); return the path."""
        if self.data is None:
            return None
        path = path or self.ask_save_path(kind)
        if not path:
            return None
        if not path.lower().endswith("." + kind):
            path += "." + kind
        try:
            {"html": self.write_html, "pdf": self.write_pdf, "csv": self.write_csv}[kind](path)
        except Exception as exc:  # noqa: BLE001 - OSError mostly; a message, never a traceback dialog
            text = tr("Could not write {path}: {error}").format(path=path, error=exc)
            QgsMessageLog.logMessage(text, LOG_TAG, Qgis.Critical)
            push(self.bar, tr("Export failed"), text, Qgis.Critical)
            return None
        settings.set("report_dir", os.path.dirname(os.path.abspath(path)))
        text = tr("Report written to {path}").format(path=path)
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.Success)
        push(self.bar, tr("Exported"), text, Qgis.Success, 8)
        return path

    def write_html(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.html())

    def write_csv(self, path: str) -> None:
        from ..core.report import write_csv

        write_csv(self.table, path)

    def write_pdf(self, path: str) -> None:
        """The HTML page laid out by QTextDocument onto A4 pages of a QPdfWriter (works headless)."""
        document = QTextDocument()
        document.setHtml(self.html())
        writer = QPdfWriter(path)
        writer.setPageSize(QPageSize(QPageSize.A4))
        writer.setResolution(150)
        writer.setTitle(tr("Rooftop solar report"))
        writer.setCreator("Roof Detector")
        document.print_(writer)
        del writer  # finishes the file
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise OSError(tr("no PDF was written"))

    # -- closing -------------------------------------------------------------
    def reject(self) -> None:
        self.cancel()
        super().reject()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)


def show_report(
    iface: Any,
    layer: Any,
    solar_kwargs: Optional[Dict[str, Any]] = None,
    described_params: Optional[Dict[str, Any]] = None,
    tasks: Optional[Set[Any]] = None,
    previous: Optional[ReportDialog] = None,
) -> Optional[ReportDialog]:
    """Plugin action: show the report dialog of ``layer`` (non-modal, replacing ``previous``) and return it;
    or say why not in the message bar and return None."""
    from ..qgis_adapter.deps import dependency_problem
    from .present import notify

    problem = dependency_problem("report")
    if problem:
        notify(iface, problem, Qgis.Critical)
        return None
    try:
        check_layer(layer)
    except ReportError as exc:
        notify(iface, str(exc), Qgis.Warning, 8)
        return None
    if previous is not None:
        try:
            previous.cancel()
            previous.close()
            previous.deleteLater()
        except RuntimeError:  # already deleted
            pass
    parent = iface.mainWindow() if iface is not None else None
    dialog = ReportDialog(layer, solar_kwargs, parent, described_params=described_params, tasks=tasks)
    dialog.show()
    dialog.raise_()
    return dialog
