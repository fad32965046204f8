"""The "Fine-tune Model" dialog: labelled layers in, a better model in the library out.

Non-modal: it starts a :class:`~.finetune_task.FinetuneTask`, draws its
curves live (one point per epoch, from the task's ``epochFinished`` signal,
on the main thread) and, when done, shows the base model's and the new
model's validation IoU and accuracy side by side. Closing it while training
only hides it; the run goes on in QGIS's task manager.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Set

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsMessageLog, QgsRasterLayer
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtCore import pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..qgis_adapter.deps import dependency_problem
from ..qgis_adapter.finetune_task import FinetuneRequest, FinetuneTask
from ..qgis_adapter.paths import library_models_in, model_library_dir
from ..qgis_adapter.request import RequestError, is_polygon_layer
from . import LOG_TAG, settings, tr
from .message_bar import fit_dialog_height, push
from .curve_chart import CurveChart
from .finetune_request import finetune_request
from .finetune_results import ComparisonBox, epochs_text, stop_reason
from .finetune_training_box import TrainingBox
from .pickers import (
    add_model_choices,
    chosen_model_path,
    choice_combo,
    layer_combo,
    model_summary,
    select_data,
)
from .widget_settings import save_widgets


def epoch_status(engine_text: str) -> str:
    """The engine's progress text ('epoch 1 step 3/30 loss 0.412') as the dialog's status line."""
    import re

    m = re.match(r"epoch (\d+) step (\d+)/(\d+)(?: loss ([\d.]+))?", engine_text or "")
    if not m:
        return engine_text
    return tr("Epoch {epoch}: batch {step} of {steps}{loss}…").format(
        epoch=m.group(1),
        step=m.group(2),
        steps=m.group(3),
        loss=tr(", training loss {loss}").format(loss=m.group(4)) if m.group(4) else "",
    )


AREA_MODES = (
    ("labels", "Extent of the label layer"),
    ("layer", "All polygons of a layer"),
    ("selection", "Selected polygons of a layer"),
)
AREA_HELP = (
    "Inside the labelled area every building must be in the label layer: unlabelled buildings "
    'there count as "not building". Outside it nothing is learnt.'
)


class FinetuneDialog(QDialog):
    """Choices for a fine-tuning run, its live curves and its before/after figures."""

    def __init__(
        self,
        iface: Any = None,
        parent: Optional[QWidget] = None,
        library_dir: Optional[str] = None,
        task_manager: Any = None,
        tasks: Optional[Set[Any]] = None,
    ):
        super().__init__(parent)
        self.iface = iface
        self.library_dir = library_dir or model_library_dir()
        self.task_manager = task_manager
        self.tasks = tasks if tasks is not None else set()
        self.task: Optional[FinetuneTask] = None
        self.last_task: Optional[FinetuneTask] = None
        self.comparison: Dict[str, Dict[str, float]] = {}
        self.on_task_finished: Optional[Callable[[FinetuneTask, bool], None]] = None  # hook for the plugin/tests
        self.setWindowTitle(tr("Fine-tune Model"))
        self.setMinimumWidth(1000)
        self._build()
        self._load_settings()
        self._update_enabled()

    # -- construction ------------------------------------------------------
    def _build(self) -> None:
        self.bar = QgsMessageBar(self)
        form = QFormLayout()
        self._build_input_rows(form)
        self._build_model_rows(form)
        left = QVBoxLayout()
        left.addLayout(form)
        self.training = TrainingBox(self)
        left.addWidget(self.training)
        left.addStretch(1)
        columns = QHBoxLayout()
        columns.addLayout(left, 5)
        columns.addLayout(self._build_progress_column(), 6)

        self.buttons = QDialogButtonBox(self)
        self.start_button = QPushButton(tr("Start fine-tuning"), self)
        self.stop_button = QPushButton(tr("Stop"), self)
        self.buttons.addButton(self.start_button, QDialogButtonBox.ActionRole)
        self.buttons.addButton(self.stop_button, QDialogButtonBox.ActionRole)
        self.buttons.addButton(QDialogButtonBox.Close)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.bar)
        layout.addLayout(columns, 1)
        layout.addWidget(self.buttons)

        self.area_combo.currentIndexChanged.connect(self._update_enabled)
        self.model_combo.currentIndexChanged.connect(self._update_enabled)
        self.raster_combo.layerChanged.connect(self._suggest_name)
        self.fill_models()

    def _build_input_rows(self, form: QFormLayout) -> None:
        """Orthophoto, labels and the labelled area."""
        self.raster_combo = layer_combo(self, QgsMapLayerProxyModel.RasterLayer)
        form.addRow(tr("Orthophoto"), self.raster_combo)

        self.labels_combo = layer_combo(self, QgsMapLayerProxyModel.PolygonLayer)
        self.labels_combo.setToolTip(
            tr(
                "Building polygons you trust: cadastre, OpenStreetMap or drawn by hand. "
                "Any CRS: they are reprojected to the raster's."
            )
        )
        self.labels_selected = QCheckBox(tr("Selected features only"), self)
        form.addRow(tr("Buildings (labels)"), self.labels_combo)
        form.addRow("", self.labels_selected)

        self.area_combo = choice_combo(self, AREA_MODES)
        self.area_layer_combo = layer_combo(self, QgsMapLayerProxyModel.PolygonLayer)
        self.area_help = QLabel(tr(AREA_HELP), self)
        self.area_help.setWordWrap(True)
        self.area_help.setMinimumHeight(self.fontMetrics().lineSpacing() * 3)
        form.addRow(tr("Labelled area"), self.area_combo)
        form.addRow(tr("Area layer"), self.area_layer_combo)
        form.addRow(self.area_help)

    def _build_model_rows(self, form: QFormLayout) -> None:
        self.model_combo = QComboBox(self)
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)
        self.model_info.setMinimumHeight(self.fontMetrics().lineSpacing() * 2)
        form.addRow(tr("Base model"), self.model_combo)
        form.addRow(self.model_info)

        self.name_edit = QLineEdit(self)
        self.name_edit.setPlaceholderText(tr("e.g. roofs-lyon-2023"))
        form.addRow(tr("New model name"), self.name_edit)

    def _build_progress_column(self) -> QVBoxLayout:
        """Training curves, status, progress and the before/after table."""
        self.chart = CurveChart(self)
        self.status_label = QLabel(tr("Not started."), self)
        self.status_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.results_box = ComparisonBox(self)
        right = QVBoxLayout()
        right.addWidget(self.chart, 1)
        right.addWidget(self.status_label)
        right.addWidget(self.progress)
        right.addWidget(self.results_box)
        return right

    def fill_models(self) -> None:
        """(Re)list the bundled model and the library's models, keeping the current choice."""
        current = self.model_combo.currentData() or settings.get("ft_base_model")
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        add_model_choices(self.model_combo, library_models_in(self.library_dir), self.library_dir)
        index = self.model_combo.findData(current)
        self.model_combo.setCurrentIndex(index if index >= 0 else 0)
        self.model_combo.blockSignals(False)
        self._update_enabled()

    # -- settings ------------------------------------------------------------
    def _load_settings(self) -> None:
        active = self.iface.activeLayer() if self.iface is not None else None
        if isinstance(active, QgsRasterLayer):
            self.raster_combo.setLayer(active)
        elif is_polygon_layer(active):
            self.labels_combo.setLayer(active)
        select_data(self.area_combo, settings.get("ft_area_mode"))
        select_data(self.model_combo, settings.get("ft_base_model"))
        self.training.load_settings()
        self._suggest_name()

    def _save_settings(self) -> None:
        save_widgets((("ft_area_mode", self.area_combo), ("ft_base_model", self.model_combo)))
        self.training.save_settings()

    def _suggest_name(self, *_: Any) -> None:
        """Propose 'finetuned-<raster>' while the user has not typed a name of their own."""
        raster = self.raster_combo.currentLayer()
        suggestion = f"finetuned-{raster.name()}" if raster is not None else ""
        if not self.name_edit.text().strip() or self.name_edit.text() == getattr(self, "_suggested", None):
            self.name_edit.setText(suggestion)
        self._suggested = suggestion

    # -- state -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.task is not None

    def selected_model_path(self) -> Optional[str]:
        return chosen_model_path(self.model_combo.currentData())

    def _update_enabled(self, *_: Any) -> None:
        idle = not self.running
        for widget in (
            self.raster_combo,
            self.labels_combo,
            self.labels_selected,
            self.area_combo,
            self.model_combo,
            self.name_edit,
            *self.training.inputs(),
        ):
            widget.setEnabled(idle)
        self.area_layer_combo.setEnabled(idle and self.area_combo.currentData() != "labels")
        self.start_button.setEnabled(idle)
        self.stop_button.setEnabled(not idle)
        self.model_info.setText(model_summary(self.selected_model_path())["text"])

    # -- the request -------------------------------------------------------
    def build_request(self) -> FinetuneRequest:
        """Check every choice and return the request; raises :class:`RequestError` for bad ones."""
        return finetune_request(
            self.raster_combo.currentLayer(),
            (self.labels_combo.currentLayer(), self.labels_selected.isChecked()),
            (self.area_combo.currentData(), self.area_layer_combo.currentLayer()),
            self.selected_model_path(),
            self.name_edit.text().strip(),
            self.library_dir,
            self.training.options(),
        )

    # -- running -----------------------------------------------------------
    def message(self, text: str, level: int = Qgis.Info, title: str = "") -> None:
        """Show ``text`` in the dialog's message bar and write it to the log."""
        QgsMessageLog.logMessage(text, LOG_TAG, level)
        push(self.bar, title, text, level)  # the whole text: QGIS's own items show one line

    def start(self) -> Optional[FinetuneTask]:
        """Validate the choices and queue the task; return it (None when refused)."""
        from qgis.core import QgsApplication

        if self.running:
            return None
        self.bar.clearWidgets()
        try:
            request = self.build_request()
        except RequestError as exc:
            self.message(str(exc), Qgis.Warning, tr("Cannot start"))
            return None
        self._save_settings()
        for note in request.notes:
            self.message(note, Qgis.Info)
        task = FinetuneTask(request, on_finished=self._task_finished)
        task.epochFinished.connect(self.add_epoch)
        task.progressChanged.connect(self._on_progress)
        self.task = task
        self.last_task = task
        self.tasks.add(task)
        self.chart.clear()
        self.comparison = {}
        self.results_box.setVisible(False)
        self.progress.setValue(0)
        self.status_label.setText(tr("Preparing the labelled area and measuring the base model…"))
        self._update_enabled()
        (self.task_manager or QgsApplication.taskManager()).addTask(task)
        QgsMessageLog.logMessage(tr("Started: {name}").format(name=task.description()), LOG_TAG, Qgis.Info)
        return task

    @pyqtSlot(dict)
    def add_epoch(self, info: Dict[str, Any]) -> None:
        """One epoch's figures from the task (main thread): add a point to each curve."""
        row = info.get("row", {})
        self.chart.add_row(row, bool(info.get("improved")))
        self.status_label.setText(
            tr("Epoch {epoch}: validation IoU {iou:.3f}, accuracy {acc:.3f}{best}").format(
                epoch=row.get("epoch"),
                iou=float(row.get("val_iou", float("nan"))),
                acc=float(row.get("val_accuracy", float("nan"))),
                best=tr(" (best so far)") if info.get("improved") else "",
            )
        )

    @pyqtSlot(float)
    def _on_progress(self, value: float) -> None:
        self.progress.setValue(int(value))
        # Until the first epoch ends, say what the task is doing now ("epoch 1 step 3/30 ...").
        task = self.task
        if task is not None and not self.chart.rows and getattr(task, "status_text", ""):
            self.status_label.setText(epoch_status(task.status_text))

    def ask_keep_best(self) -> Optional[bool]:
        """Ask what a stop should do: True keep the best epoch, False discard, None go on training."""
        box = QMessageBox(QMessageBox.Question, tr("Stop fine-tuning?"), "", parent=self)
        if self.chart.rows:
            box.setText(
                tr("Keep the best model so far (epoch {epoch}) in the library?").format(
                    epoch=self.chart.best_epoch or len(self.chart.rows)
                )
            )
            keep = box.addButton(tr("Stop and keep it"), QMessageBox.YesRole)
            box.addButton(tr("Stop and discard it"), QMessageBox.DestructiveRole)
        else:
            box.setText(tr("No epoch has finished yet, so there is no model to keep. Stop anyway?"))
            keep = None
            box.addButton(tr("Stop"), QMessageBox.DestructiveRole)
        go_on = box.addButton(tr("Continue training"), QMessageBox.RejectRole)
        box.setDefaultButton(go_on)
        box.exec_()
        clicked = box.clickedButton()
        if clicked is None or clicked == go_on:
            return None
        return clicked == keep

    def stop(self) -> None:
        """Stop button: ask whether to keep the best model so far, then cancel the task."""
        task = self.task
        if task is None:
            return
        keep = self.ask_keep_best()
        if keep is None or self.task is not task:
            return
        task.set_keep_best(keep)
        task.cancel()
        self.stop_button.setEnabled(False)
        self.status_label.setText(tr("Stopping after the current batch…"))

    def _task_finished(self, task: FinetuneTask, ok: bool) -> None:
        """Main thread: report the run in the dialog (and QGIS's message bar), show before/after."""
        from .present import notify

        self.tasks.discard(task)
        if self.task is task:
            self.task = None
        self._update_enabled()
        result = task.result if ok else None
        if result is not None and result.model_path:
            self._report_saved(task, result)
        elif result is not None:
            self._report_notes(result)
            text = tr("Fine-tuning cancelled; the model was not kept.")
            self.status_label.setText(text)
            self.message(text, Qgis.Info)
        elif task.was_cancelled:
            text = tr("Fine-tuning cancelled before the first epoch ended; no model was written.")
            self.status_label.setText(text)
            self.message(text, Qgis.Info)
        else:
            text = task.error or tr("Fine-tuning failed for an unknown reason.")
            self.status_label.setText(tr("Failed."))
            self.message(text, Qgis.Critical, tr("Fine-tuning failed"))
            if not self.isVisible():
                notify(self.iface, text, Qgis.Critical)
        self.fill_models()
        if self.on_task_finished is not None:
            self.on_task_finished(task, ok)

    def _report_notes(self, result: Any) -> None:
        self.progress.setValue(100)
        for note in result.notes:
            level = Qgis.Warning if ("repaired" in note or "skipped" in note) else Qgis.Info
            self.message(note, level)

    def _report_saved(self, task: FinetuneTask, result: Any) -> None:
        """A model was written: figures, where it is, and a message in QGIS's bar."""
        from .present import notify

        self._report_notes(result)
        self.show_comparison(result.before, result.after)
        stopped = stop_reason(result.stopped)
        epochs = epochs_text(len(result.history))
        text = tr(
            "Model '{name}' saved to the library after {epochs} ({stopped}); threshold {thr:.2f}. "
            "It is listed in Detect Buildings."
        ).format(name=task.request.name, epochs=epochs, stopped=stopped, thr=result.threshold)
        self.status_label.setText(tr("Done: {epochs}, {stopped}.").format(epochs=epochs, stopped=stopped))
        self.status_label.setToolTip(text)
        self.results_box.info.setText(
            tr("Saved as {model} in the model library.").format(model=os.path.basename(result.model_path))
        )
        self.results_box.info.setToolTip("\n".join(p for p in (result.model_path, result.curves_path) if p))
        push(self.bar, tr("Done"), text, Qgis.Success)
        notify(self.iface, text, Qgis.Success, 10)  # logs it too: once

    def show_comparison(self, before: Dict[str, float], after: Dict[str, float]) -> None:
        """Fill the before/after table (validation IoU and accuracy)."""
        self.comparison = {"before": dict(before or {}), "after": dict(after or {})}
        self.results_box.show_figures(before, after)

    # -- closing -----------------------------------------------------------
    def reject(self) -> None:
        """Close: while training runs the dialog only hides; the task goes on."""
        if self.running and self.iface is not None:
            from .present import notify

            notify(
                self.iface,
                tr("Fine-tuning goes on in the background; open Fine-tune Model… again to follow it."),
                Qgis.Info,
                5,
            )
        super().reject()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        if not self.running:
            self.fill_models()
        super().showEvent(event)
        fit_dialog_height(self)  # the wrapped notes of the form get their lines


def show_finetune_dialog(
    iface: Any, dialog: Optional[FinetuneDialog] = None, tasks: Optional[Set[Any]] = None
) -> Optional[FinetuneDialog]:
    """Plugin action: check the dependencies, then show (or bring back) the dialog; return it."""
    from .present import notify

    problem = dependency_problem("finetune")
    if problem:
        notify(iface, problem, Qgis.Critical)
        return dialog
    if dialog is None:
        dialog = FinetuneDialog(iface, iface.mainWindow() if iface is not None else None, tasks=tasks)
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
