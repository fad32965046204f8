"""The dependency dialog installs for real: pip run by a subprocess, from a local wheel folder given
through pip's own configuration, into the plugin folder; verified in a separate process before loading."""

import base64
import hashlib
import os
import sys
import time
import zipfile

import pytest

pytestmark = pytest.mark.qgis


def write_wheel(folder, name, code):
    """A minimal pure-Python wheel ``name-1.0`` whose module runs ``code`` on import; return its path."""
    dist = f"{name}-1.0"
    files = {
        f"{name}/__init__.py": code + "\n__version__ = '1.0'\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = os.path.join(folder, f"{dist}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for name_in_zip, text in files.items():
            zf.writestr(name_in_zip, text)
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip configured (PIP_CONFIG_FILE) to install only from a local wheel folder; a fresh deps folder."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nno-index = true\nfind-links = {wheels}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)  # the environment's pip settings would add theirs
    monkeypatch.setenv("ROOF_DETECTOR_DEPS_DIR", str(tmp_path / "deps"))
    yield wheels
    for k in [m for m in sys.modules if m.startswith("rdprobe")]:
        del sys.modules[k]
    while str(tmp_path / "deps") in sys.path:
        sys.path.remove(str(tmp_path / "deps"))


def wait(dialog, qgis_app, timeout_s=180):
    t0 = time.time()
    while dialog.stage in ("pip", "verify") and time.time() - t0 < timeout_s:
        qgis_app.processEvents()
        time.sleep(0.05)
    assert dialog.stage in ("done", "failed"), dialog.stage


def missing(name):
    from roof_detector.qgis_adapter.deps import DependencyReport, Missing

    return DependencyReport("report", [Missing(name, name, "a test package")])


def test_install_runs_pip_from_the_configured_wheel_folder_and_loads_after_verifying(local_index, qgis_app):
    from roof_detector.qgis_adapter.deps import deps_dir
    from roof_detector.qgis_ui.deps_dialog import DependencyDialog

    write_wheel(str(local_index), "rdprobe", "VALUE = 42")
    ready = []
    dialog = DependencyDialog("report", report=missing("rdprobe"), on_ready=lambda: ready.append(True))
    dialog.show()
    assert "rdprobe" in dialog.summary.toPlainText() and dialog.install_button.isEnabled()
    assert f"--target {deps_dir()}" in dialog.command.text()
    dialog.install()
    assert dialog.stage == "pip" and not dialog.install_button.isEnabled()
    wait(dialog, qgis_app)
    log = dialog.output.toPlainText()
    assert dialog.stage == "done", dialog.status.text() + "\n" + log
    assert "Successfully installed rdprobe-1.0" in log  # pip's own output, shown live
    assert os.path.isfile(os.path.join(deps_dir(), "rdprobe", "__init__.py"))
    assert dialog.verified["versions"]["rdprobe"] == "1.0"  # imported in the separate process first
    assert sys.path[-1] == deps_dir()  # then appended: QGIS's own packages win
    import rdprobe

    assert rdprobe.VALUE == 42 and ready == [True]
    assert "ready" in dialog.status.text()
    dialog.close()


def test_a_package_that_crashes_python_on_import_is_not_loaded(local_index, qgis_app):
    from roof_detector.qgis_adapter.deps import deps_dir
    from roof_detector.qgis_ui.deps_dialog import DependencyDialog

    write_wheel(str(local_index), "rdprobe", "import os\nos.abort()")  # like a broken native library
    dialog = DependencyDialog("report", report=missing("rdprobe"))
    dialog.install()
    wait(dialog, qgis_app)
    assert dialog.stage == "failed" and "NOT loaded" in dialog.status.text()
    assert "rdprobe" not in sys.modules and deps_dir() not in sys.path
    assert dialog.install_button.isEnabled()  # the user may try again
    dialog.close()


def test_pip_failure_says_what_to_check(local_index, qgis_app):
    from roof_detector.qgis_ui.deps_dialog import DependencyDialog

    dialog = DependencyDialog("report", report=missing("rdprobe"))  # the wheel folder is empty
    dialog.install()
    wait(dialog, qgis_app)
    assert dialog.stage == "failed" and "pip failed" in dialog.status.text()
    assert "find-links" in dialog.status.text() or "index" in dialog.status.text()
    assert "No matching distribution" in dialog.output.toPlainText()
    dialog.close()


def test_torch_is_the_cpu_build_unless_gpu_is_asked(qgis_app):
    from roof_detector.qgis_ui.deps_dialog import DependencyDialog

    dialog = DependencyDialog("finetune", report=missing("torch"))
    assert dialog.torch_box.isChecked()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dialog.command.text()
    dialog.gpu_box.setChecked(True)
    assert "download.pytorch.org" not in dialog.command.text() and " torch" in dialog.command.text()
    dialog.close()
