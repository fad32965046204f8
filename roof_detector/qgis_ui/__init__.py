"""QGIS front end of Roof Detector: dialog, background task, styling, settings.

Everything here is a thin layer over :mod:`roof_detector.core`; it never
tiles, predicts or polygonises by itself. Nothing in this package imports
torch (or the engine, which imports torch) at module level, so the plugin
loads in a QGIS whose Python lacks torch and explains how to install it on
first use (see :mod:`.deps`).
"""

from qgis.PyQt.QtCore import QCoreApplication

LOG_TAG = "Roof Detector"


def tr(message: str) -> str:
    """Translate ``message`` in the plugin's context (QCoreApplication.translate)."""
    return QCoreApplication.translate("RoofDetector", message)
