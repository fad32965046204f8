"""The result layer's look: a clear outline with a semi-transparent fill.

``resources/buildings.qml`` is used when present (users and the team can
restyle without code); otherwise the same style is built in code.
"""

from __future__ import annotations

from qgis.core import QgsFillSymbol, QgsSingleSymbolRenderer, QgsVectorLayer

from ..qgis_adapter.paths import resource_path

QML_NAME = "buildings.qml"
FILL_RGBA = "255,140,0,80"  # orange, ~30 % opaque: the roof stays visible
OUTLINE_RGBA = "255,90,0,255"
OUTLINE_WIDTH_MM = "0.6"


def default_symbol() -> QgsFillSymbol:
    """The built-in building symbol."""
    return QgsFillSymbol.createSimple(
        {
            "color": FILL_RGBA,
            "style": "solid",
            "outline_color": OUTLINE_RGBA,
            "outline_width": OUTLINE_WIDTH_MM,
            "outline_width_unit": "MM",
            "joinstyle": "miter",
        }
    )


def apply_style(layer: QgsVectorLayer) -> None:
    """Style ``layer`` from resources/buildings.qml if shipped, else with :func:`default_symbol`."""
    qml = resource_path(QML_NAME)
    if qml:
        _, ok = layer.loadNamedStyle(qml)
        if ok:
            layer.triggerRepaint()
            return
    layer.setRenderer(QgsSingleSymbolRenderer(default_symbol()))
    layer.triggerRepaint()
