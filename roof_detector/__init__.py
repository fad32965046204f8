"""Roof Detector: building footprints and rooftop solar sizing from orthophotos."""

__version__ = "0.2.0"


def classFactory(iface):  # noqa: N802 - QGIS plugin entry point name
    """QGIS entry point; imported lazily so the engine works without QGIS."""
    from .qgis_adapter.deps import activate_deps_dir
    from .plugin import RoofDetectorPlugin

    activate_deps_dir()  # packages the dependency dialog installed (end of sys.path: QGIS's own win)

    return RoofDetectorPlugin(iface)
