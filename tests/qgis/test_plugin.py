"""Loading and unloading the plugin; the first use without torch."""

import subprocess
import sys
import textwrap
from unittest import mock

import pytest

pytestmark = pytest.mark.qgis


@pytest.fixture
def recording_iface(qgis_iface):
    """The stub iface with its toolbar/menu methods recording what the plugin adds and removes."""
    calls = {"toolbar": [], "menu": []}
    patches = [
        mock.patch.object(qgis_iface, "addToolBarIcon", side_effect=lambda a: calls["toolbar"].append(a), create=True),
        mock.patch.object(
            qgis_iface, "removeToolBarIcon", side_effect=lambda a: calls["toolbar"].remove(a), create=True
        ),
        mock.patch.object(
            qgis_iface, "addPluginToMenu", side_effect=lambda m, a: calls["menu"].append((m, a)), create=True
        ),
        mock.patch.object(
            qgis_iface, "removePluginMenu", side_effect=lambda m, a: calls["menu"].remove((m, a)), create=True
        ),
    ]
    for p in patches:
        p.start()
    yield qgis_iface, calls
    for p in patches:
        p.stop()


def test_class_factory_loads_and_unloads_cleanly(recording_iface):
    import roof_detector

    iface, calls = recording_iface
    plugin = roof_detector.classFactory(iface)
    plugin.initGui()
    assert len(plugin.actions) == 1
    action = plugin.actions[0]
    assert action.text() == "Detect Buildings" and not action.icon().isNull()
    assert calls["toolbar"] == [action]
    extra = plugin.menu_actions
    assert [a.text() for a in extra] == ["Fine-tune Model…", "Model Library…", "Rooftop Report…", "Check dependencies…"]
    assert calls["menu"] == [("&Roof Detector", action)] + [("&Roof Detector", a) for a in extra]
    plugin.unload()
    assert calls == {"toolbar": [], "menu": []}
    assert plugin.actions == [] and plugin.tasks == set()


def test_unload_closes_the_report_and_cancels_its_task(plugin, project, qgis_iface, monkeypatch):
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle, QgsVectorLayer

    from roof_detector.qgis_ui import report_dialog

    layer = QgsVectorLayer("Polygon?crs=EPSG:32631", "roofs", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500000, 5000000, 500010, 5000010)))
    layer.dataProvider().addFeatures([feature])
    project.addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    monkeypatch.setattr(report_dialog, "TASK_THRESHOLD", 0)  # a task even for one feature
    manager = mock.MagicMock()  # the task is queued but never run
    with mock.patch("qgis.core.QgsApplication.taskManager", return_value=manager):
        plugin.run_report()
    task = plugin.report_dialog.task
    assert task in plugin.tasks and manager.addTask.called
    with mock.patch.object(task, "cancel") as cancel:
        plugin.unload()
        cancel.assert_called_once()
    assert plugin.report_dialog is None and task.on_finished is None


def test_unload_cancels_running_tasks(plugin):
    task = mock.MagicMock()
    plugin.tasks.add(task)
    plugin.unload()
    task.cancel.assert_called_once()
    assert task.on_finished is None


def test_action_refuses_cleanly_when_dependencies_are_missing(plugin, qgis_iface):
    """A missing package opens the dependency dialog instead of the Detect dialog."""
    from roof_detector.qgis_adapter import deps
    from roof_detector.qgis_ui import deps_dialog, settings

    settings.set("run_on", "local")
    with (
        mock.patch.object(deps, "missing_modules", return_value=["onnxruntime"]),
        mock.patch("roof_detector.qgis_ui.dialog.DetectDialog") as dialog,
    ):
        plugin.actions[0].trigger()
        dialog.assert_not_called()
        shown = deps_dialog._dialog
        assert shown is not None and shown.isVisible()
        assert "onnxruntime" in shown.summary.toPlainText() and "-m pip install" in shown.command.text()
        assert "--target" in shown.command.text() and "--user" not in shown.command.text()
    deps_dialog.close_dependency_dialog()


def test_action_offers_only_the_server_to_who_runs_on_one(plugin, qgis_iface):
    """Packages missing, but the user runs on a Roof Detector server: the Detect dialog opens for that."""
    from roof_detector.qgis_adapter import deps
    from roof_detector.qgis_ui import deps_dialog, settings

    settings.set("run_on", "server")
    try:
        with (
            mock.patch.object(deps, "missing_modules", return_value=["torch"]),
            mock.patch("roof_detector.qgis_ui.dialog.DetectDialog") as dialog,
        ):
            plugin.actions[0].trigger()
            dialog.return_value.show.assert_called_once()  # non-modal: shown, not exec_()
        assert deps_dialog._dialog is None
        assert "torch" in dialog.call_args.kwargs["local_problem"]
        warning = qgis_iface.messageBar().get_messages(1)
        assert warning and "torch" in warning[-1] and "Roof Detector server" in warning[-1]
    finally:
        settings.set("run_on", "local")


@pytest.mark.slow
def test_plugin_detects_without_torch_and_asks_for_it_only_to_fine_tune(tmp_path, repo_root):
    """In a fresh QGIS process where ``import torch`` fails: Detect opens its dialog (the CPU path needs
    no torch); Fine-tune opens the dependency dialog naming torch."""
    script = textwrap.dedent(f"""
        import sys
        from unittest import mock
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        sys.path.insert(0, {str(repo_root)!r})
        from qgis.core import QgsApplication, Qgis
        from qgis.PyQt.QtWidgets import QMainWindow
        app = QgsApplication([], True)
        app.initQgis()
        import roof_detector
        from roof_detector.qgis_ui import deps_dialog
        iface = mock.MagicMock()
        iface.mainWindow.return_value = window = QMainWindow()
        plugin = roof_detector.classFactory(iface)
        plugin.initGui()
        with mock.patch("roof_detector.qgis_ui.dialog.DetectDialog") as dialog:
            plugin.actions[0].trigger()
        assert dialog.called and deps_dialog._dialog is None, "Detect must not need torch"
        plugin.menu_actions[0].trigger()     # Fine-tune Model...
        shown = deps_dialog._dialog
        assert shown is not None and shown.purpose == "finetune"
        print("MESSAGE:", shown.summary.toPlainText(), shown.command.text())
        plugin.unload()
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("OK")
    """)
    env = {
        "QT_QPA_PLATFORM": "offscreen",
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path),
    }
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout
    message = proc.stdout.split("MESSAGE:", 1)[1]
    assert "torch" in message and "fine-tuning" in message and "-m pip install" in message
    assert "Traceback" not in proc.stderr


def test_install_command_names_qgis_python_and_packages():
    from roof_detector.qgis_adapter import deps

    cmd = deps.install_command(["torch", "rasterio"])
    assert cmd.startswith(deps.qgis_python_executable() + " -m pip install ")
    assert f"--target {deps.deps_dir()}" in cmd and "--user" not in cmd
    assert "torch rasterio" in cmd and "--extra-index-url https://download.pytorch.org/whl/cpu" in cmd
    assert "download.pytorch.org" not in deps.install_command(["torch"], gpu=True)
    assert "--index-url" not in cmd.replace("--extra-index-url", "")  # pip's own index stays
    assert deps.dependency_problem("detect") is None  # the test venv has everything
