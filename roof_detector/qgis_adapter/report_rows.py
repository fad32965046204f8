"""The Rooftop Report's rows: a layer's solar fields, or its polygons sized with the batched function.

Not a widget: :class:`RowsTask` gathers the rows of a big layer in a worker
thread with the plugin's one task lifecycle (:class:`.task.GuardedRun`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from qgis.core import QgsFeatureRequest, QgsTask, QgsVectorLayer, QgsVectorLayerFeatureSource
from qgis.PyQt.QtCore import QVariant

from . import tr
from .output import linear_wkb
from .task import GuardedRun

#: The layer fields read into a report row (those of core.solar.SOLAR_FIELDS the report uses).
ROW_FIELDS = (
    "area_m2",
    "perimeter_m",
    "usable_area_m2",
    "panels",
    "kwp",
    "specific_yield",
    "annual_kwh",
    "orientation_deg",
)


def _plain(value: Any) -> Any:
    """A QGIS attribute value as None / int / float (a NULL field comes as an empty QVariant)."""
    if value is None or isinstance(value, QVariant):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Rows:
    """One report row per feature (dicts of core.footprints.measure_polygons with an ``id``)."""

    rows: List[Dict[str, Any]] = field(default_factory=list)
    computed: bool = False  # True: sized here with the current parameters; False: read from the fields
    skipped: int = 0  # features without a polygon (sized layers only)


def read_rows(
    source: Any,
    fields: Any,
    solar_kwargs: Optional[Dict[str, Any]],
    crs_wkt: str,
    count: int = 0,
    is_cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[float], None] = lambda _: None,
) -> Rows:
    """The report rows of a feature source (a layer, or a QgsVectorLayerFeatureSource in a task).

    ``fields`` are the layer's QgsFields. With ``solar_kwargs`` None the rows
    are the features' solar fields; otherwise each polygon is sized with those
    ``SolarParams`` keyword arguments.
    """
    out = Rows(computed=solar_kwargs is not None)
    request = QgsFeatureRequest()
    present = [name for name in ROW_FIELDS if name in fields.names()]
    if out.computed:
        request.setNoAttributes()
    else:
        request.setFlags(QgsFeatureRequest.NoGeometry)
        request.setSubsetOfAttributes(present, fields)
    step = max(1, count // 100)
    ids, polygons = [], []
    for i, feature in enumerate(source.getFeatures(request)):
        if i % 50 == 0 and is_cancelled():
            from ..core.errors import Cancelled

            raise Cancelled()
        if out.computed:
            geometry = feature.geometry()
            if geometry is None or geometry.isNull() or geometry.isEmpty():
                out.skipped += 1
                continue
            ids.append(feature.id())
            polygons.append(linear_wkb(geometry))  # curves linearised, as everywhere
        else:
            row = {name: _plain(feature[name]) for name in present}
            row["id"] = feature.id()
            out.rows.append(row)
        if count and i % step == 0:
            progress((50.0 if out.computed else 100.0) * i / count)
    if out.computed:
        # All polygons at once: the batched sizing of detection, the CLI and Processing.
        import shapely

        from ..core.footprints import measure_polygons
        from ..core.solar import SolarParams

        _, sized = measure_polygons(shapely.from_wkb(polygons), crs_wkt, SolarParams(**solar_kwargs))
        out.rows = [dict(row, id=fid) for fid, row in zip(ids, sized)]
    return out


class RowsTask(GuardedRun, QgsTask):
    """Gathers the report rows of a big layer in a worker thread; ``on_finished(task, ok)`` on the main thread."""

    def __init__(
        self,
        layer: QgsVectorLayer,
        solar_kwargs: Optional[Dict[str, Any]],
        on_finished: Optional[Callable[["RowsTask", bool], None]] = None,
    ):
        text = tr("Reading rooftops of {name}") if solar_kwargs is None else tr("Sizing rooftops of {name}")
        super().__init__(text.format(name=layer.name()), QgsTask.CanCancel)
        self.source = QgsVectorLayerFeatureSource(layer)  # created here, on the main thread
        self.fields = layer.fields()
        self.count = layer.featureCount()
        self.crs_wkt = layer.crs().toWkt()
        self.solar_kwargs = solar_kwargs
        self.on_finished = on_finished
        self.result: Optional[Rows] = None
        self.error: Optional[str] = None
        self.was_cancelled = False
        self.seconds = 0.0
        self.run_started = threading.Event()  # as DetectTask: unloading the plugin waits on run_done
        self.run_done = threading.Event()

    def run(self) -> bool:
        return self.guarded_run(self._run)

    def _run(self) -> None:
        self.result = read_rows(
            self.source, self.fields, self.solar_kwargs, self.crs_wkt, self.count, self.isCanceled, self.setProgress
        )

    def finished(self, ok: bool) -> None:  # noqa: D401 - QgsTask API
        if self.on_finished is not None:
            self.on_finished(self, ok)
