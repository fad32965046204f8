"""Fixtures for the plugin tests: a small orthophoto with known buildings, the test model.

The raster is 160 x 128 pixels at 0.5 m in EPSG:32631, dark ground (value 30)
with four bright rectangles (value 220); the brightness test model marks
exactly the bright pixels, so the buildings and their areas are known.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

GSD = 0.5
ORIGIN = (500000.0, 5000000.0)  # top-left corner, EPSG:32631
WIDTH, HEIGHT = 160, 128
# (row0, col0, rows, cols) in pixels -> areas (rows*cols*0.25 m²)
RECTANGLES = [(10, 10, 20, 30), (50, 60, 24, 16), (90, 20, 12, 40), (20, 110, 40, 30)]
EXPECTED_AREAS = sorted(r * c * GSD * GSD for _, _, r, c in RECTANGLES)


def write_test_raster(path: Path, crs: str | None = "EPSG:32631") -> Path:
    """Write the test orthophoto (3-band uint8 GeoTIFF) to ``path``."""
    import rasterio
    from rasterio.transform import from_origin

    data = np.full((3, HEIGHT, WIDTH), 30, dtype=np.uint8)
    for row, col, rows, cols in RECTANGLES:
        data[:, row : row + rows, col : col + cols] = 220
    profile = dict(
        driver="GTiff",
        width=WIDTH,
        height=HEIGHT,
        count=3,
        dtype="uint8",
        transform=from_origin(ORIGIN[0], ORIGIN[1], GSD, GSD),
    )
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qgis_data")


@pytest.fixture(scope="session")
def ortho_path(data_dir) -> str:
    return str(write_test_raster(data_dir / "ortho.tif"))


@pytest.fixture(scope="session")
def model_path(data_dir) -> str:
    from devtools.test_model import make_test_model

    return make_test_model(str(data_dir / "bright.pt"), gsd_m=GSD, tile_size_px=64, overlap_px=8)


@pytest.fixture
def project(qgis_iface, qgis_new_project):
    """A fresh, empty project (pytest-qgis) and the stub iface."""
    from qgis.core import QgsProject

    yield QgsProject.instance()
    QgsProject.instance().removeAllMapLayers()


@pytest.fixture
def ortho_layer(project, ortho_path, qgis_iface):
    """The test orthophoto added to the project and made the active layer."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(ortho_path, "ortho")
    assert layer.isValid()
    project.addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    return layer


@pytest.fixture(autouse=True)
def clean_settings(qgis_app):
    """Each test starts without remembered dialog choices (settings, and this session's output paths)."""
    from roof_detector.qgis_ui import settings
    from roof_detector.qgis_ui.output_box import SESSION_PATHS

    settings.clear()
    SESSION_PATHS.clear()
    yield
    settings.clear()
    SESSION_PATHS.clear()


@pytest.fixture
def plugin(qgis_iface):
    """The plugin, loaded into the stub iface, unloaded afterwards."""
    from roof_detector.plugin import RoofDetectorPlugin

    instance = RoofDetectorPlugin(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


def wait_for(task, qgis_app, timeout_s: float = 60.0) -> None:
    """Process events until ``task`` is finished (ok or not) and its finished() ran."""
    import time

    from qgis.core import QgsTask

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        qgis_app.processEvents()
        try:
            status = task.status()
        except RuntimeError:  # the task manager deleted it: finished() has run
            return
        if status in (QgsTask.Complete, QgsTask.Terminated):
            for _ in range(20):
                qgis_app.processEvents()
            return
        time.sleep(0.02)
    raise TimeoutError("task did not finish")


def make_request(raster_path: str, model: str, **kwargs):
    """A DetectRequest for the test raster in EPSG:32631."""
    from roof_detector.qgis_adapter.request import DetectRequest

    import dataclasses

    fields = {f.name for f in dataclasses.fields(DetectRequest)}
    options = dict(model_path=model, device="cpu", min_area_m2=5.0, **kwargs.pop("extra_options", {}))
    options.update({k: kwargs.pop(k) for k in list(kwargs) if k not in fields})
    base = dict(
        raster_path=raster_path,
        raster_name=os.path.splitext(os.path.basename(raster_path))[0],
        crs="EPSG:32631",
        options=options,
    )
    base.update(kwargs)
    return DetectRequest(**base)


@pytest.fixture(autouse=True)
def no_measured_rate():
    """Work estimates in tests use the built-in rate, never one a previous run measured (QgsSettings)."""
    from qgis.core import QgsSettings

    from roof_detector.qgis_io.layers import MEASURED_RATE_KEY

    for device in ("cpu", "cuda"):
        QgsSettings().remove(MEASURED_RATE_KEY.format(device=device))
    yield


def existing_gpkg(path: str, layer: str) -> None:
    """A GeoPackage at ``path`` holding an empty layer ``layer`` (written by the one writer, core.gpkg_writer)."""
    from roof_detector.core.gpkg_writer import write_buildings

    write_buildings([], path, "EPSG:32631", layer=layer, overwrite=True)


@pytest.fixture(autouse=True)
def bar_items_are_recorded(qgis_iface):
    """pytest-qgis records the texts given to its message bar's ``pushMessage``; the plugin pushes
    whole-text items (``qgis_ui.message_bar``) through ``pushItem``, recorded here the same way
    ("title:text" under the item's level) so ``get_messages`` sees every message. The item still
    reaches the real QgsMessageBar."""
    from qgis.gui import QgsMessageBar

    from roof_detector.qgis_ui.message_bar import TEXT_PROPERTY, TITLE_PROPERTY

    bar = qgis_iface.messageBar()

    def push_item(item):
        text = item.property(TEXT_PROPERTY)
        if text is not None:
            bar.messages[item.level()].append(f"{item.property(TITLE_PROPERTY) or 'no-title'}:{text}")
        QgsMessageBar.pushItem(bar, item)

    bar.pushItem = push_item
    yield
    del bar.pushItem
