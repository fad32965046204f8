#!/usr/bin/env python3
"""The Detect dialog and the message bar in the real QGIS desktop under Xvfb (issue 17).

    python3 scripts/detect_dialog_desktop.py --zip dist/roof_detector-X.zip [--site-packages DIR] [--work DIR]

Unlike ``first_run_desktop.py`` this one gives QGIS the packages (``--site-packages``,
default: the project's ``.venv``) and checks what a user sees of the dialog:

1. a fresh profile with the zip unpacked and enabled, the embedded demo crop as a layer;
2. *Detect Buildings*: the dialog is shown and not modal (no modal widget blocks the map);
3. *Area: Extent*; the map is zoomed to part of the crop while the dialog is open: the extent
   widget follows the map; a second click on *Detect Buildings* raises the same dialog;
4. *Detect*: the task runs over that extent only; the result layer appears;
5. the success message in QGIS's own message bar: every line's text in the label and the
   label as tall as its wrapped text needs, in the real main window; then a long error the same;
6. screenshots of the main window (``desktop_dialog.png``, ``desktop_message.png``,
   ``desktop_error.png``) and a JSON record; exit 0 only when every check held.
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
import json, os, sys, time, traceback
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QLabel
from qgis.core import QgsProject, QgsRectangle, Qgis
import qgis.utils

OUT = os.environ["ROOF_DESKTOP_OUT"]
RASTER = os.environ["ROOF_DESKTOP_RASTER"]
record = {"steps": [], "checks": {}, "ok": False}
state = {"t0": time.time()}


def save():
    with open(os.path.join(OUT, "desktop_dialog.json"), "w") as f:
        json.dump(record, f, indent=1)


def step(text):
    record["steps"].append(f"{time.time() - state['t0']:.1f}s {text}")
    save()


def check(name, value):
    record["checks"][name] = bool(value)
    save()


def done():
    record["ok"] = bool(record["checks"]) and all(record["checks"].values())
    save()
    QgsProject.instance().setDirty(False)
    os._exit(0)


def later(ms, fn):
    def run():
        try:
            fn()
        except Exception:
            record["error"] = traceback.format_exc()
            done()
    QTimer.singleShot(ms, run)


def grab(name):
    """The whole screen: the main window and the dialog, a window of its own."""
    QApplication.processEvents()
    QApplication.primaryScreen().grabWindow(0).save(os.path.join(OUT, name))


def label_of(item):
    from roof_detector.qgis_ui.message_bar import TEXT_NAME
    return item.findChild(QLabel, TEXT_NAME) if item is not None else None


def whole(label):
    return label is not None and label.isVisible() and label.height() >= label.heightForWidth(label.width())


def start():
    iface = qgis.utils.iface
    plugin = qgis.utils.plugins.get("roof_detector")
    state["plugin"] = plugin
    layer = iface.addRasterLayer(RASTER, "demo crop")
    state["layer"] = layer
    canvas = iface.mapCanvas()
    canvas.setExtent(layer.extent())
    canvas.refresh()
    step(f"plugin {plugin is not None}; raster valid {layer.isValid()}; canvas CRS {canvas.mapSettings().destinationCrs().authid()}")
    plugin.actions[0].trigger()
    dialog = plugin.dialog
    state["dialog"] = dialog
    check("dialog shown", dialog is not None and dialog.isVisible())
    check("dialog not modal", not dialog.isModal() and QApplication.activeModalWidget() is None)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("extent"))
    later(1500, pan)


def pan():
    iface, dialog, layer = qgis.utils.iface, state["dialog"], state["layer"]
    canvas = iface.mapCanvas()
    e = layer.extent()
    part = QgsRectangle(e.xMinimum(), e.yMinimum() + e.height() / 2, e.xMinimum() + e.width() / 3, e.yMaximum())
    canvas.setExtent(part)  # what a pan and zoom with the mouse does, the dialog open
    canvas.refresh()
    QApplication.processEvents()
    shown, out = canvas.extent(), dialog.extent_widget.outputExtent()
    record["canvas_extent"] = shown.toString(2)
    record["extent_widget"] = out.toString(2)
    state["shown"] = shown
    check("extent widget follows the map", max(abs(a - b) for a, b in zip(
        (shown.xMinimum(), shown.yMinimum(), shown.xMaximum(), shown.yMaximum()),
        (out.xMinimum(), out.yMinimum(), out.xMaximum(), out.yMaximum()))) < 0.01)
    state["plugin"].actions[0].trigger()
    check("second click raises the same dialog", state["plugin"].dialog is dialog and dialog.isVisible())
    record["estimate"] = dialog.estimate_label.text()
    later(2000, detect)


def detect():
    dialog = state["dialog"]
    grab("desktop_dialog.png")
    dialog.buttons.button(dialog.buttons.Ok).click()
    check("accepted and closed", state["plugin"].dialog is None and not dialog.isVisible())
    step("Detect clicked")
    later(1000, wait_detection)


def wait_detection():
    plugin = state["plugin"]
    if plugin.tasks and time.time() - state["t0"] < 600:
        return later(1000, wait_detection)
    layer = QgsProject.instance().mapLayer(plugin.last_layer_id) if plugin.last_layer_id else None
    record["result"] = (layer.name(), layer.featureCount()) if layer else None
    check("result layer", layer is not None and layer.featureCount() > 0)
    if layer is not None:
        e, shown = layer.extent(), state["shown"]  # the raster and the map are both in EPSG:3857 here
        record["result_extent"] = e.toString(2)
        record["raster_extent"] = state["layer"].extent().toString(2)
        # nothing found beyond the area (the raster reaches ~100 m further east); a regularised
        # outline may move a wall by up to its 1 m tolerance, so the margin is 1.5 m
        check("buildings only in the chosen extent", shown.buffered(1.5).contains(e))
    later(1500, message)


def message():
    bar = qgis.utils.iface.messageBar()
    label = label_of(bar.currentItem())
    record["message"] = label.text() if label else None
    record["message_label"] = [label.width(), label.height(), label.heightForWidth(label.width())] if label else None
    check("success message: solar line in the bar", label is not None and "kWh/yr" in label.text())
    check("success message: every line visible", whole(label))
    grab("desktop_message.png")
    from roof_detector.qgis_ui.present import notify
    from unittest import mock
    from roof_detector.qgis_adapter import deps
    with mock.patch.object(deps, "missing_modules", return_value=["onnxruntime", "rasterio"]):
        text = deps.dependency_problem("detect")
    notify(qgis.utils.iface, text, Qgis.Critical)
    later(1500, lambda: error(text))


def error(text):
    label = label_of(qgis.utils.iface.messageBar().currentItem())
    record["error_label"] = [label.width(), label.height(), label.heightForWidth(label.width())] if label else None
    check("error: whole text in the bar", label is not None and label.text() == text)
    check("error: every line visible", whole(label))
    grab("desktop_error.png")
    done()


later(4000, start)
'''


def main(argv=None) -> int:
    """Fresh profile, zip unpacked, QGIS under Xvfb with the driver; print the record; 0 when every check held."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", required=True, help="the plugin zip (make package)")
    parser.add_argument(
        "--site-packages", default=str(next((REPO_ROOT / ".venv" / "lib").glob("python3*/site-packages")))
    )
    parser.add_argument("--raster", default=str(REPO_ROOT / "demo" / "catanduanes_oam_z21.tif"))
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--qgis", default=shutil.which("qgis") or "qgis")
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="roof-dialog-desktop-"))
    plugins = work / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    with zipfile.ZipFile(args.zip) as zf:
        zf.extractall(plugins)
    ini = work / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nroof_detector=true\n\n[qgis]\ncheckVersion=false\nshowTips=false\n")
    driver = work / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work / "home"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(Path(args.site_packages).resolve()),
        "ROOF_DESKTOP_OUT": str(work),
        "ROOF_DESKTOP_RASTER": str(Path(args.raster).resolve()),
        "QT_QPA_PLATFORM": "xcb",
    }
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", args.qgis, "--profiles-path", str(work)]
    cmd += ["--nologo", "--noversioncheck", "--code", str(driver)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=str(work))
        tail = (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        tail = "timed out"
    result = work / "desktop_dialog.json"
    record = json.loads(result.read_text()) if result.is_file() else {"ok": False, "error": "no record"}
    record["qgis_output_tail"] = tail
    record["work"] = str(work)
    print(json.dumps(record, indent=1))
    return 0 if record.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
