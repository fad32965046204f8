"""The real ``qgis_process`` (Debian's ``qgis`` package; skipped where it is absent): the dependency
message instead of a traceback, help without HTML tags."""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"

pytestmark = pytest.mark.skipif(not os.path.exists(QGIS_PROCESS), reason="qgis_process is not installed")

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class _Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime" or name.startswith("onnxruntime."):
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, _Refuse())
""")


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory, repo_root):
    """Run qgis_process with the plugin (from this checkout) enabled in a fresh settings folder;
    onnxruntime made unimportable by a sitecustomize."""
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process"), repo_root, BLOCKER)


def qgis_process_runner(tmp_path, repo_root, sitecustomize="", path_first=None):
    """A function running qgis_process with the plugin (built and installed from this checkout
    as Install from ZIP does) enabled in a fresh settings folder under ``tmp_path`` (``path_first``:
    a folder put first on PATH)."""
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    spec = importlib.util.spec_from_file_location("package", repo_root / "scripts" / "package.py")
    package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)
    package.deploy(package.build_zip(repo_root, tmp_path / "dist"), plugins)  # as Install from ZIP
    ini = config / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nroof_detector=true\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    venv_site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(config),
        PYTHONPATH=f"{site}:{venv_site}",
        HOME=str(tmp_path),
    )
    if path_first:  # a folder searched before the usual PATH
        env["PATH"] = f"{path_first}:{env.get('PATH', '/usr/bin:/bin')}"

    def run(*args):
        return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=300)

    return run


def test_qgis_process_prints_the_dependency_message(qgis_process, ortho_path, tmp_path):
    proc = qgis_process(
        "run", "roofdetector:detectbuildings", "--", f"INPUT={ortho_path}", f"OUTPUT={tmp_path / 'b.gpkg'}"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "onnxruntime (runs the bundled model on the CPU" in out and "Check dependencies" in out, out
    assert "Traceback" not in out and not (tmp_path / "b.gpkg").exists()


def test_qgis_process_help_is_plain_text(qgis_process):
    proc = qgis_process("help", "roofdetector:detectbuildings")
    assert proc.returncode == 0, proc.stderr
    assert "Orthophoto" in proc.stdout and "<b>" not in proc.stdout and "<br>" not in proc.stdout
