"""The dependency dialog: what is missing and why, and an Install button that fixes it.

Shown by every GUI entry point when :func:`.deps.dependency_problem` finds
something (and by *Plugins > Roof Detector > Check dependencies…*). Install
runs pip with QGIS's own Python (:func:`.deps.qgis_python_executable`) in a
``QProcess``, into the plugin-owned folder :func:`.deps.deps_dir`, and shows
pip's output live. pip's own configuration (index, proxy, find-links) is
left to apply. After pip, a second process imports the packages from that
folder (and compares shapely's GEOS with QGIS's): a package whose native
library crashes Python is never loaded into QGIS. Only then is the folder
put on ``sys.path`` and the check run again in QGIS.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, List, Optional

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QProcess, QProcessEnvironment
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
)

from ..qgis_adapter.deps import (
    PURPOSE_TEXT,
    PURPOSES,
    TORCH,
    DependencyReport,
    activate_deps_dir,
    check,
    deps_dir,
    install_command,
    needs_source_shapely,
    pip_arguments,
    qgis_python_executable,
)
from . import LOG_TAG, tr

# Imports each module named on the command line with the deps folder appended to sys.path,
# and prints one JSON line: {"versions": {...}, "failed": {...}, "geos": "3.11.1" or null}.
VERIFY_SCRIPT = r"""
import importlib, json, sys
target, names = sys.argv[1], sys.argv[2:]
sys.path.append(target)
out = {"versions": {}, "failed": {}, "geos": None}
for name in names:
    try:
        mod = importlib.import_module(name)
        out["versions"][name] = str(getattr(mod, "__version__", "?"))
    except Exception as exc:
        out["failed"][name] = (str(exc).splitlines() or [type(exc).__name__])[0]
if "shapely" in out["versions"]:
    import shapely
    out["geos"] = ".".join(str(v) for v in shapely.geos_version)
print("VERIFY " + json.dumps(out))
"""


class DependencyDialog(QDialog):
    """Lists what ``purpose`` lacks and installs it (non-modal; one per plugin)."""

    def __init__(
        self,
        purpose: str = "detect",
        parent: Any = None,
        report: Optional[DependencyReport] = None,
        on_ready: Optional[Callable[[], None]] = None,
    ):
        super().__init__(parent)
        self.setObjectName("roofDetectorDependencies")
        self.setWindowTitle(tr("Roof Detector: Python packages"))
        self.purpose = purpose
        self.on_ready = on_ready
        self.process: Optional[QProcess] = None
        self.stage = "idle"  # idle | pip | verify | done | failed
        self.verified: dict = {}
        layout = QVBoxLayout(self)
        self.summary = QTextBrowser(self)
        self.summary.setObjectName("depsSummary")
        self.summary.setOpenExternalLinks(True)
        layout.addWidget(self.summary, 3)
        self.torch_box = QCheckBox(
            tr("Also install PyTorch, CPU build (about 200 MB): needed to fine-tune models; detection runs without it"),
            self,
        )
        self.gpu_box = QCheckBox(
            tr("PyTorch for an NVIDIA GPU (CUDA build, several GB) instead of the CPU build"), self
        )
        self.gpu_box.setEnabled(False)
        self.torch_box.toggled.connect(self.gpu_box.setEnabled)
        self.torch_box.toggled.connect(lambda *_: self._show_command())
        self.gpu_box.toggled.connect(lambda *_: self._show_command())
        layout.addWidget(self.torch_box)
        layout.addWidget(self.gpu_box)
        layout.addWidget(
            QLabel(
                tr(
                    "pip command (QGIS's Python, into the plugin's own folder; pip's configuration "
                    "such as index, proxy and find-links applies):"
                ),
                self,
            )
        )
        self.command = QLineEdit(self)
        self.command.setReadOnly(True)
        self.command.setObjectName("depsCommand")
        layout.addWidget(self.command)
        self.output = QPlainTextEdit(self)
        self.output.setReadOnly(True)
        self.output.setObjectName("depsOutput")
        self.output.setPlaceholderText(tr("pip's output appears here while it runs."))
        layout.addWidget(self.output, 2)
        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.status.setObjectName("depsStatus")
        layout.addWidget(self.status)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close, self)
        self.install_button = QPushButton(tr("Install"), self)
        self.install_button.setObjectName("depsInstall")
        self.buttons.addButton(self.install_button, QDialogButtonBox.ActionRole)
        self.check_button = QPushButton(tr("Check again"), self)
        self.buttons.addButton(self.check_button, QDialogButtonBox.ActionRole)
        self.buttons.rejected.connect(self.close)
        self.install_button.clicked.connect(self.install)
        self.check_button.clicked.connect(lambda *_: self.refresh())
        layout.addWidget(self.buttons)
        self.resize(780, 720)
        self.refresh(report)

    # -- what is missing -------------------------------------------------------
    def refresh(self, report: Optional[DependencyReport] = None) -> DependencyReport:
        """Check (or take ``report``) and show the result."""
        self.report = report if report is not None else check(self.purpose)
        torch_missing = any(m.module in TORCH for m in self.report.missing)
        if torch_missing:
            self.torch_box.setChecked(True)
        self.summary.setHtml(self._summary_html())
        self._show_command()
        self.install_button.setEnabled(bool(self.requirements()) and self.stage not in ("pip", "verify"))
        if self.report.ok and self.stage not in ("pip", "verify"):
            self.status.setText(tr("Everything Roof Detector needs is installed."))
        return self.report

    def _summary_html(self) -> str:
        from html import escape

        r = self.report
        if r.ok:
            return "<p><b>{}</b></p>{}".format(escape(tr("All packages are there.")), self._notes_html())
        rows = "".join(
            "<li><b>{}</b>: {}<br/><small>{}</small></li>".format(escape(m.module), escape(tr(m.why)), escape(m.error))
            for m in r.missing
        )
        html = ""
        if rows:
            html += "<p><b>{}</b></p><ul>{}</ul>".format(
                escape(
                    tr("To {what}, Roof Detector needs Python packages that QGIS's Python lacks:").format(
                        what=tr(PURPOSE_TEXT.get(self.purpose, self.purpose))
                    )
                ),
                rows,
            )
        if r.geos:
            html += "<p><b>shapely / GEOS:</b> {}</p>".format(escape(r.geos))
        return html + self._notes_html()

    def _notes_html(self) -> str:
        from html import escape

        notes = [
            tr(
                "Packages go to {folder} (the plugin's own folder, added to QGIS's Python path; nothing is "
                "installed system-wide or with --user)."
            ).format(folder=deps_dir()),
            tr(
                "Detection on the CPU needs no PyTorch: the bundled model also ships as ONNX (int8). On a CPU "
                "without VNNI (e.g. AMD Zen 2 and 3) its int8 arithmetic is inexact, and PyTorch lets "
                "detection run the model in fp32 instead."
            ),
        ]
        if needs_source_shapely():
            notes.append(
                tr(
                    "Linux: shapely is built from source against the GEOS library QGIS uses (a PyPI "
                    "shapely wheel brings another GEOS and crashes QGIS). That needs the GEOS headers and "
                    "a compiler: on Debian/Ubuntu 'sudo apt install libgeos-dev python3-dev build-essential'."
                )
            )
        return "<p><small>{}</small></p>".format("<br/>".join(escape(n) for n in notes))

    def requirements(self) -> List[str]:
        """What Install installs now."""
        reqs = [r for r in self.report.requirements() if not r.startswith("torch")]
        if self.torch_box.isChecked():
            reqs.append("torch")
        return reqs

    def _show_command(self) -> None:
        reqs = self.requirements()
        self.command.setText(install_command(reqs, gpu=self.gpu_box.isChecked()) if reqs else "")
        self.command.setCursorPosition(0)
        self.command.setToolTip(self.command.text())
        self.install_button.setEnabled(bool(reqs) and self.stage not in ("pip", "verify"))

    # -- install ---------------------------------------------------------------
    def install(self) -> None:
        """Run pip (QGIS's Python, plugin folder), output live; then verify in a separate process."""
        reqs = self.requirements()
        if not reqs or self.stage in ("pip", "verify"):
            return
        target = deps_dir()
        os.makedirs(target, exist_ok=True)
        self.output.clear()
        self._start("pip", qgis_python_executable(), pip_arguments(reqs, target, gpu=self.gpu_box.isChecked()))
        self.status.setText(tr("Installing {names}…").format(names=", ".join(reqs)))

    def _start(self, stage: str, program: str, args: List[str]) -> None:
        self.stage = stage
        self.install_button.setEnabled(False)
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        env.remove("PYTHONPATH")  # the child sees the deps folder only through the verify script
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read_output)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        self.process = proc
        shown = ["<import check>" if a == VERIFY_SCRIPT else a for a in args]
        self.output.appendPlainText("$ " + " ".join([program] + shown))
        proc.start(program, args)

    def _read_output(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self._buffer = getattr(self, "_buffer", "") + text
        for line in text.splitlines():
            if not line.startswith("VERIFY "):
                self.output.appendPlainText(line)

    def _error(self, error: Any) -> None:
        if error == QProcess.FailedToStart:
            self._fail(tr("Could not start {python}: is this QGIS's Python?").format(python=qgis_python_executable()))

    def _finished(self, code: int, status: Any) -> None:
        self._read_output()
        stage, self.process = self.stage, None
        if stage == "pip":
            if status != QProcess.NormalExit or code != 0:
                self._fail(self._pip_failure_hint())
                return
            names = (
                [m.module for m in self.report.missing]
                + list(PURPOSES[self.purpose])
                + (["torch"] if self.torch_box.isChecked() else [])
            )
            self._buffer = ""
            self._start("verify", qgis_python_executable(), ["-c", VERIFY_SCRIPT, deps_dir(), *dict.fromkeys(names)])
            self.status.setText(tr("Checking the installed packages in a separate process…"))
        elif stage == "verify":
            if status != QProcess.NormalExit:
                self._fail(
                    tr(
                        "Importing the new packages crashed a separate Python process; they were NOT loaded "
                        "into QGIS. See the output above."
                    )
                )
                return
            self._verified(self._buffer)

    def _verified(self, text: str) -> None:
        line = next((ln for ln in text.splitlines() if ln.startswith("VERIFY ")), None)
        if line is None:
            self._fail(tr("The check of the installed packages printed no result; see the output above."))
            return
        result = json.loads(line[len("VERIFY ") :])
        self.verified = result
        if result["failed"]:
            self._fail(
                tr("These packages still do not import: {items}.").format(
                    items="; ".join(f"{k} ({v})" for k, v in result["failed"].items())
                )
            )
            return
        if result.get("geos") and Qgis.geosVersion().split("-")[0] != result["geos"]:
            self._fail(
                tr(
                    "shapely was installed with GEOS {ours}, QGIS uses {theirs}: it is not loaded. "
                    "Install libgeos-dev and a compiler, then Install again."
                ).format(ours=result["geos"], theirs=Qgis.geosVersion())
            )
            return
        self.output.appendPlainText(
            tr("Imported in a separate Python: {versions}").format(
                versions=", ".join(f"{k} {v}" for k, v in result["versions"].items())
            )
        )
        activate_deps_dir()
        report = self.refresh()
        if report.ok:
            self.stage = "done"
            self.status.setText(
                tr("Installed and checked: Roof Detector is ready. {versions}").format(
                    versions=", ".join(f"{k} {v}" for k, v in result["versions"].items())
                )
            )
            QgsMessageLog.logMessage(self.status.text(), LOG_TAG, Qgis.Info)
            if self.on_ready is not None:
                callback, self.on_ready = self.on_ready, None
                callback()
        else:
            self._fail(tr("pip finished, but QGIS still reports: {problem}").format(problem=report.message()))

    def _pip_failure_hint(self) -> str:
        text = self.output.toPlainText()
        hint = tr("pip failed; see its output above.")
        if "No module named pip" in text:
            hint += " " + tr("QGIS's Python has no pip: on Debian/Ubuntu 'sudo apt install python3-pip'.")
        elif "geos_c.h" in text or "geos-config" in text or "GEOS" in text and "error" in text.lower():
            hint += " " + tr(
                "Building shapely needs the GEOS headers: 'sudo apt install libgeos-dev python3-dev "
                "build-essential', then Install again."
            )
        elif "No matching distribution" in text or "Could not find a version" in text:
            hint += " " + tr(
                "pip found no suitable package: check the network, or pip's index / find-links "
                "configuration (pip config list)."
            )
        return hint

    def _fail(self, text: str) -> None:
        self.stage = "failed"
        self.status.setText(text)
        self.install_button.setEnabled(bool(self.requirements()))
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.Warning)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        if self.process is not None and self.stage in ("pip", "verify"):
            # A half-finished pip run is stopped; the next Install starts it again.
            self.process.kill()
            self.process.waitForFinished(3000)
        super().closeEvent(event)


_dialog: Optional[DependencyDialog] = None


def show_dependency_dialog(
    iface: Any,
    purpose: str = "detect",
    report: Optional[DependencyReport] = None,
    on_ready: Optional[Callable[[], None]] = None,
) -> DependencyDialog:
    """Show (or bring back) the one dependency dialog for ``purpose``; return it."""
    global _dialog
    parent = iface.mainWindow() if iface is not None else None
    if _dialog is not None:
        try:
            if _dialog.stage in ("pip", "verify"):
                _dialog.show()
                _dialog.raise_()
                return _dialog
            _dialog.close()
            _dialog.deleteLater()
        except RuntimeError:  # deleted with its parent
            pass
    _dialog = DependencyDialog(purpose, parent, report=report, on_ready=on_ready)
    _dialog.show()
    _dialog.raise_()
    return _dialog


def ensure_dependencies(iface: Any, purpose: str = "detect", on_ready: Optional[Callable[[], None]] = None) -> bool:
    """True when ``purpose`` can run; else log the one message, open the dialog and return False."""
    from ..qgis_adapter.deps import check

    report = check(purpose)
    if report.ok:
        return True
    QgsMessageLog.logMessage(report.message(), LOG_TAG, Qgis.Warning)
    show_dependency_dialog(iface, purpose, report, on_ready)
    return False


def close_dependency_dialog() -> None:
    """Plugin unload: close the dialog (stopping a pip run)."""
    global _dialog
    if _dialog is not None:
        try:
            _dialog.close()
            _dialog.deleteLater()
        except RuntimeError:
            pass
    _dialog = None
