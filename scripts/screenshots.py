#!/usr/bin/env python3
"""Screenshots of the plugin for the README and for reviewing the UI: ``make screenshots``.

Writes into ``out/screenshots/`` (or ``--out``):

* ``dialog.png``      the Detect Buildings dialog, pre-filled with the orthophoto
* ``result_map.png``  the styled building layer over the orthophoto
* ``report.png``      the Rooftop Report dialog of the detected buildings
* ``message_bar.png`` the message bar after the detection (every line of the summary shown)
* ``dependencies.png`` the dependency dialog as a fresh QGIS shows it: what the
  system Python (``/usr/bin/python3``, QGIS's own on Debian) lacks, found by
  importing in that interpreter

By default the orthophoto is synthetic (bright roofs on dark ground) and the
model is the deterministic brightness test model, so the script needs
neither the bundled model nor any data and runs in seconds. ``--raster``
and ``--model`` (and ``--aoi-wkt`` in the raster CRS, to keep CPU time low)
render a real detection instead. Runs headless (QT_QPA_PLATFORM=offscreen).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def write_demo_raster(path: str, size=(384, 256), gsd: float = 0.25) -> str:
    """A synthetic 3-band orthophoto in EPSG:32631: textured ground, a road, bright roofs."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    width, height = size
    rng = np.random.default_rng(7)
    img = np.empty((3, height, width), dtype=np.float32)
    img[0], img[1], img[2] = 70, 95, 60  # grass
    img += rng.normal(0, 8, img.shape)
    img[:, 118:138, :] = np.array([85, 85, 90])[:, None, None]  # road
    roofs = [
        (20, 20, 60, 80, (225, 200, 190)),
        (25, 130, 50, 50, (235, 235, 230)),
        (30, 220, 70, 60, (210, 160, 150)),
        (160, 30, 70, 100, (240, 235, 215)),
        (165, 170, 40, 40, (220, 220, 225)),
        (155, 250, 80, 110, (230, 210, 200)),
        (40, 305, 45, 60, (225, 225, 225)),
    ]
    for row, col, rows, cols, colour in roofs:
        img[:, row : row + rows, col : col + cols] = np.array(colour)[:, None, None]
        img[:, row : row + rows, col + cols // 2] -= 25  # ridge line
    data = np.clip(img, 0, 255).astype(np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000, gsd, gsd),
    ) as dst:
        dst.write(data)
    return path


class _Iface:
    """Just enough of QgisInterface for the dialog (active layer, canvas)."""

    def __init__(self, layer, canvas=None):
        self._layer, self._canvas = layer, canvas

    def activeLayer(self):  # noqa: N802 - QGIS API
        return self._layer

    def mapCanvas(self):  # noqa: N802 - QGIS API
        return self._canvas


def _canvas_on(layer, size=(800, 500)):
    """A map canvas showing ``layer`` (the Detect dialog takes the map extent from it)."""
    from qgis.gui import QgsMapCanvas

    canvas = QgsMapCanvas()
    canvas.resize(*size)
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(layer.extent())
    return canvas


def dialog_screenshot(raster_layer, model_path: str, out_png: str) -> str:
    """Grab the dialog pre-filled with ``raster_layer`` and ``model_path``, the area being the map extent."""
    from roof_detector.qgis_ui.dialog import DetectDialog

    canvas = _canvas_on(raster_layer)
    dialog = DetectDialog(_Iface(raster_layer, canvas))
    from roof_detector.qgis_adapter.paths import bundled_model_path

    bundled = bundled_model_path()
    if not (bundled and os.path.samefile(bundled, model_path)):  # the bundled model shows as such
        dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("file"))
        dialog.model_file.setFilePath(model_path)
    dialog.area_combo.setCurrentIndex(dialog.area_combo.findData("extent"))  # QGIS's extent widget
    dialog.solar_box.setCollapsed(False)  # show the outline and solar choices too
    dialog.resize(600, dialog.sizeHint().height())
    dialog.show()  # styles the collapsible group's title
    dialog.grab().save(out_png)
    dialog.hide()
    dialog.deleteLater()
    canvas.deleteLater()
    return out_png


def message_bar_screenshot(task, out_png: str, width: int = 900) -> str:
    """Grab QGIS's message bar with the success message of the detection ``task`` (every line shown)."""
    from types import SimpleNamespace

    from qgis.gui import QgsMessageBar
    from qgis.PyQt.QtWidgets import QApplication, QVBoxLayout, QWidget

    from roof_detector.qgis_ui import present

    window = QWidget()
    box = QVBoxLayout(window)
    bar = QgsMessageBar(window)
    box.addWidget(bar)
    iface = SimpleNamespace(messageBar=lambda: bar, showAttributeTable=lambda *_: None)
    text = present.summary_text(task.result.buildings, task.result.seconds)
    present._push_summary(iface, task.layer, text, on_report=lambda *_: None)
    window.resize(width, 10)
    window.show()
    for _ in range(5):
        QApplication.processEvents()
    window.resize(width, window.sizeHint().height())
    QApplication.processEvents()
    window.grab().save(out_png)
    window.deleteLater()
    return out_png


def detect_task(raster_path: str, raster_name: str, crs: str, model_path: str, aoi_wkt=None):
    """Run the plugin's task synchronously; return it, its result layer styled."""
    from roof_detector.qgis_adapter.request import DetectRequest
    from roof_detector.qgis_adapter.task import DetectTask
    from roof_detector.qgis_ui.style import apply_style

    task = DetectTask(
        DetectRequest(
            raster_path=raster_path,
            raster_name=raster_name,
            crs=crs,
            options=dict(model_path=model_path, device="auto", aoi_wkt=aoi_wkt),
        )
    )
    if not task.run():
        raise SystemExit(f"detection failed: {task.error}")
    apply_style(task.layer)
    return task


def report_screenshot(layer, out_png: str) -> str:
    """Grab the Rooftop Report dialog of ``layer`` (scrolled to show totals and histogram)."""
    from roof_detector.qgis_ui.report_dialog import ReportDialog

    dialog = ReportDialog(layer, {})
    dialog.resize(780, 900)
    dialog.show()
    dialog.grab().save(out_png)
    dialog.close()
    dialog.deleteLater()
    return out_png


FIRST_RUN_PYTHON = "/usr/bin/python3"


def missing_in(python: str, purpose: str = "detect") -> list:
    """Import names ``purpose`` needs that ``python`` cannot import (each tried in that interpreter)."""
    import subprocess

    from roof_detector.qgis_adapter.deps import PURPOSES

    gone = []
    for name in PURPOSES[purpose]:
        proc = subprocess.run([python, "-I", "-c", f"import {name}"], capture_output=True, timeout=60)
        if proc.returncode != 0:
            gone.append(name)
    return gone


def dependencies_screenshot(out_png: str, python: str = FIRST_RUN_PYTHON) -> str:
    """Grab the dependency dialog listing what ``python`` lacks (the first click in a fresh QGIS)."""
    from roof_detector.qgis_adapter.deps import ALL, DependencyReport, Missing
    from roof_detector.qgis_ui.deps_dialog import DependencyDialog

    names = missing_in(python) if os.path.exists(python) else []
    report = DependencyReport("detect", [Missing(n, *ALL[n], error=f"No module named '{n}'") for n in names])
    dialog = DependencyDialog("detect", report=report)
    dialog.resize(780, 720)
    dialog.show()
    dialog.grab().save(out_png)
    dialog.close()
    dialog.deleteLater()
    return out_png


def render_map(layers, extent, crs, out_png: str, width: int = 900) -> str:
    """Render ``layers`` (top first) over ``extent`` to a PNG with QgsMapRendererParallelJob."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setBackgroundColor(QColor(255, 255, 255))
    height = max(1, int(round(width * extent.height() / extent.width())))
    settings.setOutputSize(QSize(width, height))
    settings.setExtent(extent)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    if not image.save(out_png):
        raise SystemExit(f"could not write {out_png}")
    return out_png


def make_screenshots(
    out_dir: str, raster: str | None = None, model: str | None = None, aoi_wkt: str | None = None
) -> list:
    """Write dialog.png, result_map.png, report.png and dependencies.png to ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="roof_detector-shots-")
    try:
        return _make_screenshots(out_dir, tmp, raster, model, aoi_wkt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_screenshots(out_dir, tmp, raster, model, aoi_wkt) -> list:
    from qgis.core import QgsGeometry, QgsProject, QgsRasterLayer

    if raster is None:
        raster = write_demo_raster(os.path.join(tmp, "demo_ortho.tif"))
    if model is None:
        from devtools.test_model import make_test_model

        model = make_test_model(os.path.join(tmp, "brightness.pt"), gsd_m=0.25, tile_size_px=128, overlap_px=16)
    layer = QgsRasterLayer(raster, Path(raster).stem)
    if not layer.isValid():
        raise SystemExit(f"cannot open {raster}")
    QgsProject.instance().addMapLayer(layer)
    shots = [dialog_screenshot(layer, model, os.path.join(out_dir, "dialog.png"))]
    crs = layer.crs()
    task = detect_task(raster, layer.name(), crs.authid() or crs.toWkt(), model, aoi_wkt)
    buildings = task.layer
    extent = QgsGeometry.fromWkt(aoi_wkt).boundingBox() if aoi_wkt else layer.extent()
    shots.append(render_map([buildings, layer], extent, crs, os.path.join(out_dir, "result_map.png")))
    shots.append(report_screenshot(buildings, os.path.join(out_dir, "report.png")))
    shots.append(dependencies_screenshot(os.path.join(out_dir, "dependencies.png")))
    shots.append(message_bar_screenshot(task, os.path.join(out_dir, "message_bar.png")))
    QgsProject.instance().removeMapLayer(layer.id())
    return shots


def main(argv=None) -> int:
    """Command line entry point (starts a headless QGIS if none is running)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "out" / "screenshots"))
    parser.add_argument("--raster", help="orthophoto (default: a synthetic one)")
    parser.add_argument("--model", help="model file (default: the brightness test model)")
    parser.add_argument("--aoi-wkt", help="area to detect and show, in the raster CRS")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication.instance()
    own = app is None
    if own:
        app = QgsApplication([], True)
        app.initQgis()
    try:
        for path in make_screenshots(args.out, args.raster, args.model, args.aoi_wkt):
            print(path)
    finally:
        if own:
            app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
