"""One dependency check, one message, at every entry point.

A package is made really unimportable (taken out of ``sys.modules`` and
refused by a finder at the head of ``sys.meta_path``, so ``import`` raises
ImportError as in a QGIS whose Python lacks it); then each entry point must
stop with exactly :func:`roof_detector.qgis_adapter.deps.dependency_problem`'s
message: the Processing algorithms as a QgsProcessingException (no
traceback), the toolbar action and menu entries by opening the dependency
dialog, the report dialog in the message bar.
"""

import importlib.abc
import sys
from contextlib import contextmanager

import pytest

from .test_processing import box, polygon_layer, processing_ready, run  # noqa: F401 - fixtures

pytestmark = pytest.mark.qgis


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ImportError(f"No module named '{fullname}'")
        return None


@contextmanager
def unimportable(name):
    """``import name`` fails inside the block; the modules already loaded come back afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == name or k.startswith(name + ".")}
    finder = _Refuse(name)
    for k in saved:
        del sys.modules[k]
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(saved)


@pytest.fixture(autouse=True)
def no_dialog_left():
    yield
    from roof_detector.qgis_ui import deps_dialog

    deps_dialog.close_dependency_dialog()


def test_the_message_names_the_package_why_and_the_fix():
    from roof_detector.qgis_adapter.deps import dependency_problem

    assert dependency_problem("detect") is None
    with unimportable("onnxruntime"):
        msg = dependency_problem("detect")
        assert dependency_problem("report") is None  # the report does not run the model
    assert "onnxruntime (runs the bundled model on the CPU (no torch needed))" in msg
    assert "Check dependencies" in msg and "-m pip install" in msg and "--target" in msg
    assert "--user" not in msg and "onnxruntime" in msg.split("-m pip install", 1)[1]


def test_the_geos_mismatch_is_part_of_the_same_check(monkeypatch):
    from roof_detector.qgis_adapter import deps

    monkeypatch.setattr(deps, "geos_mismatch", lambda: "GEOS 3.13.1 vs 3.11.1")
    msg = deps.dependency_problem("report")
    assert "GEOS 3.13.1 vs 3.11.1" in msg and "--no-binary shapely" in msg
    assert deps.dependency_problem("finetune").count("GEOS 3.13.1") == 1


@pytest.mark.parametrize(
    "alg,params,module",
    [
        ("roofdetector:detectbuildings", "detect", "onnxruntime"),
        ("roofdetector:rooftopsolar", "solar", "affine"),
        ("roofdetector:evaluatedetection", "evaluate", "affine"),
        ("roofdetector:finetunemodel", "finetune", "matplotlib"),
    ],
)
def test_processing_algorithms_raise_the_message(run, ortho_path, model_path, alg, params, module):  # noqa: F811
    from qgis.core import QgsApplication, QgsProcessingException

    from roof_detector.qgis_adapter.deps import PURPOSES, dependency_problem

    layer = polygon_layer([box(0, 0, 10, 10)])
    values = {
        "detect": {"INPUT": ortho_path, "MODEL": model_path, "OUTPUT": "memory:"},
        "solar": {"INPUT": layer, "OUTPUT": "memory:"},
        "evaluate": {
            "PREDICTED": layer,
            "REFERENCE": polygon_layer([box(0, 0, 10, 10)]),
            "RASTER": ortho_path,
            "OUTPUT": "memory:",
        },
        "finetune": {
            "INPUT": ortho_path,
            "LABELS": layer,
            "MODEL": model_path,
            "EPOCHS": 1,
            "OUTPUT": "/tmp/never-written.pt",
        },
    }[params]
    purpose = QgsApplication.processingRegistry().algorithmById(alg).PURPOSE
    assert module in PURPOSES[purpose]
    with unimportable(module):
        expected = dependency_problem(purpose)
        with pytest.raises(QgsProcessingException) as info:
            run(alg, values)
    assert expected and str(info.value) == expected and "Traceback" not in str(info.value)


def test_toolbar_action_opens_the_dependency_dialog(plugin):
    from roof_detector.qgis_ui import deps_dialog
    from roof_detector.qgis_adapter.deps import dependency_problem

    with unimportable("onnxruntime"):
        plugin.actions[0].trigger()
        expected = dependency_problem("detect")
    dialog = deps_dialog._dialog
    assert dialog is not None and dialog.isVisible() and dialog.purpose == "detect"
    assert dialog.report.message() == expected
    assert "onnxruntime" in dialog.summary.toPlainText() and "onnxruntime" in dialog.command.text()


@pytest.mark.parametrize(
    "index,purpose,module", [(0, "finetune", "matplotlib"), (1, "detect", "onnxruntime"), (2, "report", "affine")]
)
def test_menu_entries_open_the_dependency_dialog(plugin, index, purpose, module):
    from roof_detector.qgis_ui import deps_dialog

    with unimportable(module):
        plugin.menu_actions[index].trigger()
    dialog = deps_dialog._dialog
    assert dialog is not None and dialog.purpose == purpose and module in dialog.summary.toPlainText()


def test_check_dependencies_entry_opens_the_dialog_when_all_is_there(plugin):
    from roof_detector.qgis_ui import deps_dialog

    plugin.menu_actions[3].trigger()
    dialog = deps_dialog._dialog
    assert dialog is not None and dialog.report.ok
    assert "Everything Roof Detector needs is installed" in dialog.status.text()
    assert not dialog.install_button.isEnabled()
    dialog.torch_box.setChecked(True)  # torch can still be asked for (fine-tuning / GPU)
    assert dialog.install_button.isEnabled() and "torch" in dialog.command.text()


def test_report_dialog_shows_the_message(qgis_iface, ortho_path):
    from roof_detector.qgis_adapter.deps import dependency_problem
    from roof_detector.qgis_ui.report_dialog import show_report

    layer = polygon_layer([box(0, 0, 10, 10)])
    with unimportable("affine"):
        assert show_report(qgis_iface, layer) is None
        expected = dependency_problem("report")
    assert qgis_iface.messageBar().get_messages(2)[-1].endswith(expected)


def test_finetune_dialog_shows_the_message(qgis_iface):
    from roof_detector.qgis_adapter.deps import dependency_problem
    from roof_detector.qgis_ui.finetune_dialog import show_finetune_dialog

    with unimportable("matplotlib"):
        assert show_finetune_dialog(qgis_iface, None, set()) is None
        expected = dependency_problem("finetune")
    assert qgis_iface.messageBar().get_messages(2)[-1].endswith(expected)
