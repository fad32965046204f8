"""QGIS widgets of Roof Detector: the dialogs, pickers, styling, result presentation, settings.

Everything that is not a widget (request checks, tasks, error messages,
paths, dependency check, output layers) lives in :mod:`roof_detector.qgis_adapter`,
shared with the Processing algorithms. Nothing in this package imports torch
(or the engine) at module level, so the plugin loads in a QGIS whose Python
lacks torch and explains how to install it on first use.
"""

from ..qgis_adapter import LOG_TAG, tr

__all__ = ["LOG_TAG", "tr"]
