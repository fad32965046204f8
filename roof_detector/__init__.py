"""Roof Detector: building footprints and rooftop solar sizing from orthophotos."""

__version__ = "0.2.0"


def classFactory(iface):  # noqa: N802 - QGIS plugin entry point name
    """QGIS entry point; imported lazily so the engine works without QGIS."""
    from .plugin import RoofDetectorPlugin

    return RoofDetectorPlugin(iface)
