#!/usr/bin/env python3
"""The first run of a new user, in the real QGIS desktop under Xvfb (the issue's "Done when").

    python3 scripts/first_run_desktop.py --zip dist/roof_detector-X.zip --wheelhouse DIR [--work DIR]

What it does, as a newcomer would:

1. a fresh HOME and QGIS profile folder; the plugin zip unpacked into the
   profile's plugins folder (what *Install from ZIP* does) and enabled;
2. QGIS's own Python as it is (``/usr/bin/python3`` on Debian: no rasterio,
   shapely, affine, onnxruntime, torch; this script's environment passes no
   PYTHONPATH); pip configured only through a ``PIP_CONFIG_FILE`` that says
   ``no-index`` + ``find-links = <wheelhouse>`` (a local wheel folder);
3. starts ``qgis`` under ``xvfb-run`` with a driver (``--code``) that adds the
   embedded demo crop as a layer, clicks *Detect Buildings* (the dependency
   dialog must appear), clicks *Install* (pip runs, output live, verified in
   a separate process), clicks *Detect Buildings* again and *Detect* in the
   dialog, and waits for the result layer, in the same QGIS session;
4. prints the driver's JSON record (steps, missing packages, pip's tail,
   buildings found, whether torch was imported) and exits 0 only when a
   result layer with buildings appeared without torch.

The wheelhouse needs, for Debian 12's Python 3.11: affine, rasterio and its
dependencies, onnxruntime and its dependencies, numpy==<QGIS's numpy>, the
shapely sdist (built against the system GEOS: libgeos-dev, python3-dev and a
compiler must be installed) and its build requirements (Cython, numpy>=1.25,
setuptools, wheel). ``pip download`` fills it (see the README, "First run").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import importlib.util, json, os, sys, time, traceback
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication
from qgis.core import QgsProject
import qgis.utils

RESULT = os.environ["ROOF_FIRST_RUN_RESULT"]
RASTER = os.environ["ROOF_FIRST_RUN_RASTER"]
record = {"steps": [], "ok": False}
state = {"t0": time.time()}


def save():
    with open(RESULT, "w") as f:
        json.dump(record, f, indent=1)


def step(text):
    record["steps"].append(f"{time.time() - state['t0']:.1f}s {text}")
    save()


def done(ok):
    record["ok"] = ok
    record["torch_imported"] = "torch" in sys.modules and sys.modules["torch"] is not None
    save()
    QgsProject.instance().setDirty(False)
    os._exit(0)


def guarded(fn):
    def run():
        try:
            fn()
        except Exception:
            record["error"] = traceback.format_exc()
            done(False)
    return run


def later(ms, fn):
    QTimer.singleShot(ms, guarded(fn))


def on_log(text, tag, level):
    if tag == "Roof Detector":
        record.setdefault("plugin_log", []).append(text[:2000])


def start():
    from qgis.core import QgsApplication
    QgsApplication.messageLog().messageReceived.connect(on_log)
    step(f"QGIS started; python {sys.executable}; torch importable: {importlib.util.find_spec('torch') is not None}")
    plugin = qgis.utils.plugins.get("roof_detector")
    if plugin is None:
        step("plugin not started by QGIS; loading it")
        qgis.utils.loadPlugin("roof_detector")
        qgis.utils.startPlugin("roof_detector")
        plugin = qgis.utils.plugins["roof_detector"]
    state["plugin"] = plugin
    layer = qgis.utils.iface.addRasterLayer(RASTER, "demo crop")
    step(f"raster layer added: valid={layer is not None and layer.isValid()}")
    plugin.actions[0].trigger()  # the first click on Detect Buildings
    from roof_detector.qgis_ui import deps_dialog
    dialog = deps_dialog._dialog
    record["dependency_dialog_at_first_click"] = dialog is not None and dialog.isVisible()
    if dialog is None:
        step("no dependency dialog at the first click")
        return done(False)
    record["missing"] = [m.module for m in dialog.report.missing]
    record["geos_problem"] = dialog.report.geos
    record["command"] = dialog.command.text()
    step(f"dependency dialog shown; missing {record['missing']}")
    dialog.grab().save(os.path.join(os.path.dirname(RESULT), "first_click.png"))
    state["dialog"] = dialog
    dialog.install()
    step("Install clicked")
    later(1000, wait_install)


def wait_install():
    dialog = state["dialog"]
    if dialog.stage in ("pip", "verify") and time.time() - state["t0"] < 1500:
        return later(1000, wait_install)
    record["pip_tail"] = dialog.output.toPlainText()[-3000:]
    record["install_status"] = dialog.status.text()
    dialog.grab().save(os.path.join(os.path.dirname(RESULT), "after_install.png"))
    step(f"install finished: {dialog.stage}: {dialog.status.text()[:300]}")
    if dialog.stage != "done":
        return done(False)
    state["plugin"].actions[0].trigger()  # the (non-modal) Detect dialog opens
    later(2500, accept_detect_dialog)


def accept_detect_dialog():
    w = state["plugin"].dialog
    step(f"Detect dialog: {type(w).__name__ if w else None}, modal: {w.isModal() if w else None}")
    if w is None or not w.isVisible():
        return done(False)
    w.buttons.button(w.buttons.Ok).click()
    step("Detect clicked")
    later(1000, wait_detection)


def wait_detection():
    plugin = state["plugin"]
    if plugin.tasks and time.time() - state["t0"] < 1500:
        return later(1000, wait_detection)
    layer = QgsProject.instance().mapLayer(plugin.last_layer_id) if plugin.last_layer_id else None
    record["result_layer"] = layer.name() if layer else None
    record["buildings"] = layer.featureCount() if layer else 0
    from roof_detector.qgis_adapter import deps
    record["deps_dir"] = deps.deps_dir()
    step(f"detection finished: layer {record['result_layer']!r} with {record['buildings']} buildings")
    qgis.utils.iface.mapCanvas().refreshAllLayers()
    done(bool(layer) and record["buildings"] > 0)


def watchdog():
    """Record what modal window (if any) is up: a modal dialog blocks the driver's call, not its timers."""
    w = QApplication.activeModalWidget()
    if w is not None:
        from qgis.PyQt.QtWidgets import QLabel, QTextEdit
        texts = [l.text() for l in w.findChildren(QLabel) if l.text()]
        texts += [t.toPlainText() for t in w.findChildren(QTextEdit) if t.toPlainText()]
        text = getattr(w, "text", lambda: "")() if hasattr(w, "text") else ""
        record.setdefault("modal_seen", []).append({"class": type(w).__name__, "title": w.windowTitle(),
                                                    "text": (text or " | ".join(texts))[:4000]})
        save()
    if time.time() - state["t0"] > 1700:
        return done(False)
    QTimer.singleShot(5000, watchdog)


QTimer.singleShot(5000, watchdog)
later(3000, start)
'''


def main(argv=None) -> int:
    """Set up the fresh profile, run QGIS under Xvfb, print the record; 0 when the result layer appeared."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", required=True, help="the plugin zip (make package)")
    parser.add_argument("--wheelhouse", required=True, help="local wheel folder pip installs from")
    parser.add_argument("--raster", default=str(REPO_ROOT / "demo" / "catanduanes_oam_z21.tif"))
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--qgis", default=shutil.which("qgis") or "qgis")
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="roof-first-run-"))
    home, profiles = work / "home", work / "profiles"
    plugins = profiles / "default" / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    home.mkdir(exist_ok=True)
    with zipfile.ZipFile(args.zip) as zf:  # what Install from ZIP does
        zf.extractall(plugins)
    ini = profiles / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nroof_detector=true\n\n[qgis]\ncheckVersion=false\nshowTips=false\n")
    pip_conf = work / "pip.conf"
    pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {Path(args.wheelhouse).resolve()}\n")
    driver = work / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    result = work / "first_run.json"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": str(pip_conf),
        "ROOF_FIRST_RUN_RESULT": str(result),
        "ROOF_FIRST_RUN_RASTER": str(Path(args.raster).resolve()),
        "QT_QPA_PLATFORM": "xcb",
    }
    # --profiles-path DIR holds DIR/profiles/<name>/
    cmd = [
        "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1600x1000x24",
        args.qgis,
        "--profiles-path",
        str(work),
        "--nologo",
        "--noversioncheck",
        "--code",
        str(driver),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=str(work))
        tail = (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        tail = "timed out"
    record = json.loads(result.read_text()) if result.is_file() else {"ok": False, "error": "no record"}
    record["qgis_output_tail"] = tail
    record["work"] = str(work)
    print(json.dumps(record, indent=1))
    return 0 if record.get("ok") and not record.get("torch_imported") else 1


if __name__ == "__main__":
    sys.exit(main())
