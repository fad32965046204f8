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
from .message_bar import push
from .style import apply_style

TITLE = "Roof Detector"


def notify(iface: Any, text: str, level: int = Qgis.Info, duration: int = 0) -> None:
    """Show the whole ``text`` in the message bar (if any; 0 = until closed) and write it to the log."""
    QgsMessageLog.logMessage(text, LOG_TAG, level)
    if iface is not None:
        push(iface.messageBar(), TITLE, text, level, duration)


def format_number(value: float, decimals: int = 0) -> str:
    """``value`` in QGIS's locale (its decimal and group separators), e.g. '1,400,433' or '1.400.433'."""
    from qgis.PyQt.QtCore import QLocale

    return QLocale().toString(float(value), "f", int(decimals))


def format_area(m2: float) -> str:
    """'1,234 m²' below a hectare, else hectares with two decimals (QGIS's locale)."""
    if m2 >= 10000:
        return tr("{value}\u00a0ha").format(value=format_number(m2 / 10000.0, 2))
    # a no-break space: a wrapped message line never leaves the unit apart from its number
    return tr("{value}\u00a0m²").format(value=format_number(m2, 0))


def unique_layer_name(name: str) -> str:
    """``name``, or ``name (2)``, ``name (3)``... when the project has a layer of that name already."""
    taken = {lyr.name() for lyr in QgsProject.instance().mapLayers().values()}
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


def result_layer(task: Any) -> Optional[QgsVectorLayer]:
    """The layer a successful task made: its memory layer or the GeoPackage layer it wrote."""
    if task.output_uri:  # named as in the GeoPackage, so two outputs are told apart
        name = getattr(task.request, "gpkg_layer", None) or task.request.layer_name
        return QgsVectorLayer(task.output_uri, name, "ogr")
    return task.layer


def solar_summary(buildings: Sequence[Any]) -> str:
    """'40 panels, 16.0 kWp, 17,600 kWh/yr' from the buildings' solar attributes (core.report totals), or ''."""
    rows = [dict(b.attributes, area_m2=b.area_m2) for b in buildings if "kwp" in (getattr(b, "attributes", None) or {})]
    if not rows:
        return ""
    from ..core.report import build_table, totals

    total = totals(build_table(rows))
    return tr("{panels}\u00a0panels, {kwp}\u00a0kWp, {kwh}\u00a0kWh/yr").format(
        panels=format_number(total["panels"]),
        kwp=format_number(total["kwp"], 1),
        kwh=format_number(total["annual_kwh"]),
    )


def summary_text(buildings: Sequence[Any], seconds: float, saved_to: str = "") -> str:
    """The success message: count, area and time; the solar totals; where it was saved (one line each)."""
    count, area = summary(buildings)
    text = tr("{count} buildings, total roof area {area}, in {seconds:.1f} s.").format(
        count=count, area=format_area(area), seconds=seconds
    )
    solar = solar_summary(buildings)
    if solar:  # one line each: the bar shows them all (message_bar)
        text += "\n" + tr("Rooftop solar: {summary}.").format(summary=solar)
    if saved_to:
        text += "\n" + tr("Saved to {path}.").format(path=saved_to)
    return text


def _push_summary(
    iface: Any, layer: QgsVectorLayer, text: str, on_report: Optional[Callable[[str], None]] = None
) -> None:
    """The success message, every line of it visible, with its attribute table and report buttons."""
    table = QPushButton(tr("Open attribute table"))
    table.clicked.connect(lambda *_: iface.showAttributeTable(layer))
    buttons = [table]
    if on_report is not None:
        layer_id = layer.id()
        report = QPushButton(tr("Report"))
        report.setObjectName("roofDetectorReportButton")
        report.setToolTip(tr("Rooftop solar report: totals, histogram of building areas, HTML/PDF/CSV export"))
        report.clicked.connect(lambda *_: on_report(layer_id))
        buttons.append(report)
    push(iface.messageBar(), TITLE, text, Qgis.Success, 15, buttons)


def on_task_finished(
    iface: Any, task: Any, ok: bool, on_report: Optional[Callable[[str], None]] = None
) -> Optional[QgsVectorLayer]:
    """Report a finished :class:`DetectTask`; on success add and style its layer and return it.

    ``on_report(layer_id)``, if given, is called by the message bar's "Report" button.
    """
    if not ok:
        if task.was_cancelled:
            notify(
                iface,
                tr("Detection in '{name}' cancelled; nothing was written.").format(name=task.request.raster_name),
                Qgis.Info,
                5,
            )
        else:
            notify(iface, task.error or tr("Detection failed for an unknown reason."), Qgis.Critical)
        return None
    layer = result_layer(task)
    if layer is None or not layer.isValid():
        notify(iface, tr("The result layer could not be opened ({uri}).").format(uri=task.output_uri), Qgis.Critical)
        return None
    apply_style(layer)
    reused = None
    if task.output_uri:  # a replaced GeoPackage layer already open: reload it, do not add a second one
        for existing in QgsProject.instance().mapLayers().values():
            if existing.source() == layer.source():
                existing.reload()
                existing.updateExtents()
                existing.triggerRepaint()
                reused = reused or existing
    if reused is not None:
        layer = reused
    else:
        layer.setName(unique_layer_name(layer.name()))
        QgsProject.instance().addMapLayer(layer)
    seconds = float(getattr(task.result, "seconds", 0.0) or task.seconds)
    text = summary_text(task.result.buildings, seconds, task.request.gpkg_path if task.output_uri else "")
    QgsMessageLog.logMessage(f"{task.request.raster_name}: {text}", LOG_TAG, Qgis.Success)
    if iface is not None:
        _push_summary(iface, layer, text, on_report)
    for warning in getattr(task.result, "warnings", None) or []:
        notify(iface, str(warning), Qgis.Warning, 10)
    return layer


def budget_text(budget_min: float, samples_per_epoch: int, epochs: int) -> str:
    """The fine-tune dialog's line on how long training may take (0 = no budget / automatic crops)."""
    from ..core.training.finetune_plan import SECONDS_PER_SAMPLE

    per_epoch = (
        tr("{n} crops per epoch, about {s:.0f} s each on 2 CPU cores").format(
            n=samples_per_epoch, s=samples_per_epoch * SECONDS_PER_SAMPLE["cpu"]
        )
        if samples_per_epoch
        else tr("crops per epoch scaled to the labelled area (96 to 480: about 10 to 50 s each on 2 CPU cores)")
    )
    return (
        (
            tr("Time budget: at most {m:g} min, then the best epoch is kept").format(m=budget_min)
            if budget_min
            else tr("No time budget: up to {e} epochs").format(e=epochs)
        )
        + "; "
        + per_epoch
        + tr(". The plan for your area is shown when training starts.")
    )
