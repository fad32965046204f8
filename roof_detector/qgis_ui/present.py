"""Main-thread reporting: add the result layer, tell the user, log everything.

Every message goes both to the message bar (when an iface is there) and to
the log panel under the tag "Roof Detector".
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from qgis.core import Qgis, QgsMessageLog, QgsProject, QgsVectorLayer
from qgis.PyQt.QtWidgets import QPushButton

from . import LOG_TAG, tr
from ..qgis_adapter.output import summary
from .style import apply_style

TITLE = "Roof Detector"


def notify(iface: Any, text: str, level: int = Qgis.Info, duration: int = 0) -> None:
    """Show ``text`` in the message bar (if any) and write it to the log."""
    QgsMessageLog.logMessage(text, LOG_TAG, level)
    if iface is not None:
        iface.messageBar().pushMessage(TITLE, text, level, duration)


def format_area(m2: float) -> str:
    """'1 234 m²' below a hectare, else hectares with two decimals."""
    if m2 >= 10000:
        return tr("{value:.2f} ha").format(value=m2 / 10000.0)
    return tr("{value:,.0f} m²").format(value=m2).replace(",", " ")


def result_layer(task: Any) -> Optional[QgsVectorLayer]:
    """The layer a successful task made: its memory layer or the GeoPackage layer it wrote."""
    if task.output_uri:
        return QgsVectorLayer(task.output_uri, task.request.layer_name, "ogr")
    return task.layer


def solar_summary(buildings: Sequence[Any]) -> str:
    """'40 panels, 16.0 kWp, 17,600 kWh/yr' from the buildings' solar attributes (core.report totals), or ''."""
    rows = [dict(b.attributes, area_m2=b.area_m2) for b in buildings
            if "kwp" in (getattr(b, "attributes", None) or {})]
    if not rows:
        return ""
    from ..core.report import build_table, totals

    total = totals(build_table(rows))
    return tr("{panels:,} panels, {kwp:,.1f} kWp, {kwh:,.0f} kWh/yr").format(
        panels=total["panels"], kwp=total["kwp"], kwh=total["annual_kwh"])


def _push_summary(iface: Any, layer: QgsVectorLayer, text: str,
                  on_report: Optional[Callable[[str], None]] = None) -> None:
    bar = iface.messageBar()
    widget = bar.createMessage(TITLE, text)
    button = QPushButton(tr("Open attribute table"), widget)
    button.clicked.connect(lambda *_: iface.showAttributeTable(layer))
    widget.layout().addWidget(button)
    if on_report is not None:
        layer_id = layer.id()
        report = QPushButton(tr("Report"), widget)
        report.setObjectName("roofDetectorReportButton")
        report.setToolTip(tr("Rooftop solar report: totals, histogram of building areas, HTML/PDF/CSV export"))
        report.clicked.connect(lambda *_: on_report(layer_id))
        widget.layout().addWidget(report)
    bar.pushWidget(widget, Qgis.Success, 15)


def on_task_finished(iface: Any, task: Any, ok: bool,
                     on_report: Optional[Callable[[str], None]] = None) -> Optional[QgsVectorLayer]:
    """Report a finished :class:`DetectTask`; on success add and style its layer and return it.

    ``on_report(layer_id)``, if given, is called by the message bar's "Report" button.
    """
    if not ok:
        if task.was_cancelled:
            notify(iface, tr("Detection in '{name}' cancelled; nothing was written.")
                   .format(name=task.request.raster_name), Qgis.Info, 5)
        else:
            notify(iface, task.error or tr("Detection failed for an unknown reason."), Qgis.Critical)
        return None
    layer = result_layer(task)
    if layer is None or not layer.isValid():
        notify(iface, tr("The result layer could not be opened ({uri}).").format(uri=task.output_uri),
               Qgis.Critical)
        return None
    apply_style(layer)
    if task.output_uri:  # a replaced GeoPackage layer may already be open: show its new content
        for existing in QgsProject.instance().mapLayers().values():
            if existing.source() == layer.source():
                existing.reload()
                existing.triggerRepaint()
    QgsProject.instance().addMapLayer(layer)
    count, area = summary(task.result.buildings)
    seconds = float(getattr(task.result, "seconds", 0.0) or task.seconds)
    text = tr("{count} buildings, total roof area {area}, in {seconds:.1f} s.").format(
        count=count, area=format_area(area), seconds=seconds)
    solar = solar_summary(task.result.buildings)
    if solar:
        text += " " + tr("Rooftop solar: {summary}.").format(summary=solar)
    if task.output_uri:
        text += " " + tr("Saved to {path}.").format(path=task.request.gpkg_path)
    QgsMessageLog.logMessage(f"{task.request.raster_name}: {text}", LOG_TAG, Qgis.Success)
    if iface is not None:
        _push_summary(iface, layer, text, on_report)
    for warning in getattr(task.result, "warnings", None) or []:
        notify(iface, str(warning), Qgis.Warning, 10)
    return layer
