"""QGIS plugin class: the "Detect Buildings", "Fine-tune Model", "Model Library", "Rooftop Report" and
"Check dependencies" actions.

Loading the plugin imports neither torch nor the engine; every action runs
the one dependency check first (:func:`.qgis_adapter.deps.dependency_problem`)
and opens the dependency dialog, which installs what is missing, when it
finds something.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .qgis_ui import LOG_TAG, tr
from .qgis_adapter.paths import resource_path

MENU = "&Roof Detector"


class RoofDetectorPlugin:
    """Registers the toolbar button and menu entry; runs detections as QgsTasks."""

    def __init__(self, iface: Any):
        self.iface = iface
        self.actions: List[QAction] = []
        self.menu = tr(MENU)
        self.tasks: Set[Any] = set()
        self.dialog = None
        self.menu_actions: List[QAction] = []  # menu-only actions (no toolbar button)
        self.finetune_dialog = None
        self.library_dialog = None
        self.report_dialog = None
        self.last_layer_id: Optional[str] = None  # id of the most recent result layer
        self.provider = None  # the Processing provider, see initProcessing

    # -- QGIS plugin API -----------------------------------------------------
    def initProcessing(self) -> None:  # noqa: N802 - QGIS API (also called alone by qgis_process)
        """Register the "Roof Detector" Processing provider (id ``roofdetector``)."""
        if self.provider is not None:
            return
        from .processing.provider import RoofDetectorProvider

        self.provider = RoofDetectorProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        """Create the "Detect Buildings" action in the Plugins menu and the toolbar."""
        self.initProcessing()
        icon_path = resource_path("icon.png")
        action = QAction(QIcon(icon_path) if icon_path else QIcon(), tr("Detect Buildings"), self.iface.mainWindow())
        action.setObjectName("roofDetectorDetectBuildings")
        action.setToolTip(tr("Detect building footprints in an orthophoto"))
        action.triggered.connect(self.run)
        self.iface.addToolBarIcon(action)
        self.iface.addPluginToMenu(self.menu, action)
        self.actions.append(action)
        for text, name, slot in (
            (tr("Fine-tune Model…"), "roofDetectorFinetune", self.run_finetune),
            (tr("Model Library…"), "roofDetectorModelLibrary", self.run_library),
            (tr("Rooftop Report…"), "roofDetectorRooftopReport", self.run_report),
            (tr("Check dependencies…"), "roofDetectorCheckDependencies", self.run_check),
        ):
            extra = QAction(text, self.iface.mainWindow())
            extra.setObjectName(name)
            extra.triggered.connect(slot)
            self.iface.addPluginToMenu(self.menu, extra)
            self.menu_actions.append(extra)

    def unload(self) -> None:
        """Remove every action and menu entry; cancel tasks still running and wait briefly for them."""
        from .qgis_adapter.lifecycle import UNLOAD_WAIT_S, cancel_tasks

        cancel_tasks(self.tasks, UNLOAD_WAIT_S)
        self.tasks.clear()
        for action in self.actions:
            self.iface.removePluginMenu(self.menu, action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions = []
        for action in self.menu_actions:
            self.iface.removePluginMenu(self.menu, action)
            action.deleteLater()
        self.menu_actions = []
        from .qgis_ui.deps_dialog import close_dependency_dialog

        close_dependency_dialog()
        for dialog in (self.dialog, self.finetune_dialog, self.library_dialog, self.report_dialog):
            if dialog is not None:
                dialog.deleteLater()
        self.dialog = self.finetune_dialog = self.library_dialog = self.report_dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # -- behaviour -------------------------------------------------------------
    def _notify(self, text: str, level: int) -> None:
        from .qgis_ui.present import notify

        notify(self.iface, text, level)

    def _dependencies_ok(self, purpose: str) -> bool:
        """The one dependency check; opens the dependency dialog when something is missing."""
        from .qgis_ui.deps_dialog import ensure_dependencies

        return ensure_dependencies(self.iface, purpose)

    def run_check(self) -> None:
        """Action handler: open the dependency dialog (what is there, what is missing, Install)."""
        try:
            from .qgis_ui.deps_dialog import show_dependency_dialog

            show_dependency_dialog(self.iface, "detect")
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            self._failed(exc)

    def run(self) -> None:
        """Action handler: check dependencies, show the (non-modal) Detect dialog; its Detect starts the task.

        One dialog at a time: clicking again while it is open brings it to the front.
        """
        if self.dialog is not None:
            self.dialog.show()
            self.dialog.raise_()
            self.dialog.activateWindow()
            return
        from .qgis_adapter.deps import dependency_problem
        from .qgis_ui import settings

        problem = dependency_problem("detect")
        if problem and settings.get("run_on") != "server":
            # First use on a computer that lacks packages: the dependency dialog does the work.
            if not self._dependencies_ok("detect"):
                return
            problem = None
        elif problem:
            # The user runs on a Roof Detector server: the dialog offers only that, with the reason.
            self._notify(
                problem
                + "\n\n"
                + tr("Without them, Detect Buildings can still run on a Roof Detector server: choose it under Run on."),
                Qgis.Warning,
            )
        from .qgis_ui.dialog import DetectDialog

        try:
            dialog = DetectDialog(self.iface, self.iface.mainWindow(), local_problem=problem)
            dialog.finished.connect(lambda result, d=dialog: self._detect_finished(d, result))
            self.dialog = dialog
            dialog.show()
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            self._failed(exc)

    def _detect_finished(self, dialog: Any, result: int) -> None:
        """The Detect dialog closed: start its request if it was accepted; the next click opens a fresh one."""
        if self.dialog is dialog:
            self.dialog = None
        request = dialog.request if result else None
        dialog.deleteLater()
        if request is None:
            return
        try:
            self.start(request)
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            self._failed(exc)

    def run_finetune(self) -> None:
        """Action handler: show the (non-modal) Fine-tune Model dialog; it runs its own task."""
        if not self._dependencies_ok("finetune"):
            return
        try:
            from .qgis_ui.finetune_dialog import show_finetune_dialog

            self.finetune_dialog = show_finetune_dialog(self.iface, self.finetune_dialog, self.tasks)
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            self._failed(exc)

    def run_library(self) -> None:
        """Action handler: show the Model Library dialog."""
        if not self._dependencies_ok("detect"):
            return
        try:
            from .qgis_ui.library_dialog import show_library_dialog

            self.library_dialog = show_library_dialog(self.iface, self.library_dialog)
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            self._failed(exc)

    def run_report(self) -> None:
        """Action handler: the Rooftop Report of the active layer (sized with the dialog's solar parameters
        if it has no solar fields)."""
        if not self._dependencies_ok("report"):
            return
        self.show_report(self.iface.activeLayer())

    def show_report(self, layer: Any, described_params: Optional[dict] = None) -> Any:
        """Show the Rooftop Report dialog of ``layer``; return it (None when refused)."""
        try:
            from .qgis_ui.report_dialog import show_report

            dialog = show_report(
                self.iface, layer, described_params=described_params, tasks=self.tasks, previous=self.report_dialog
            )
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            self._failed(exc)
            return None
        if dialog is not None:
            self.report_dialog = dialog
        return dialog

    def _report_layer(self, layer_id: str, described_params: Optional[dict] = None) -> None:
        """The message bar's "Report" button after a detection."""
        from qgis.core import QgsProject

        layer = QgsProject.instance().mapLayer(layer_id)
        if layer is None:
            self._notify(tr("The result layer is no longer in the project."), Qgis.Warning)
            return
        self.show_report(layer, described_params)

    def _failed(self, exc: Exception) -> None:
        import traceback

        QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)
        self._notify(tr("Roof Detector failed: {error}").format(error=exc), Qgis.Critical)

    def start(self, request: Any, task_manager: Optional[Any] = None) -> Any:
        """Queue a :class:`DetectTask` (a :class:`RemoteDetectTask` for a server) for ``request``; return it."""
        if getattr(request, "server_url", ""):
            from .qgis_adapter.remote import RemoteDetectTask

            task = RemoteDetectTask(request, on_finished=self._task_finished)
        else:
            from .qgis_adapter.task import DetectTask

            task = DetectTask(request, on_finished=self._task_finished)
        self.tasks.add(task)
        (task_manager or QgsApplication.taskManager()).addTask(task)
        QgsMessageLog.logMessage(tr("Started: {name}").format(name=task.description()), LOG_TAG, Qgis.Info)
        return task

    def _task_finished(self, task: Any, ok: bool) -> None:
        from .qgis_ui.present import on_task_finished

        self.tasks.discard(task)
        params = task.request.report_params() if ok else None
        layer = on_task_finished(self.iface, task, ok, on_report=lambda layer_id: self._report_layer(layer_id, params))
        self.last_layer_id = layer.id() if layer is not None else None
