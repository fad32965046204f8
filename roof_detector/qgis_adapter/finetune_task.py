"""Fine-tuning in the background: the request, the layer exports before it, the QgsTask.

Main thread (the dialog): :func:`label_source` and :func:`export_layer` turn a
QGIS vector layer into a file the engine can read: a file-backed OGR layer
is used in place; memory layers, database or web layers, filtered or edited
layers and "selected features only" are written to a temporary GeoPackage
with QGIS's writer. :func:`area_wkt` turns the labelled area (a polygon
layer or its selection) into WKT in the raster's CRS.

Worker thread: :class:`FinetuneTask` runs
:func:`roof_detector.core.training.finetune.finetune` and emits
``epochFinished`` with each epoch's figures; Qt delivers it to the dialog on
the main thread. ``finished`` (main thread) reports, then removes the
temporary files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeatureRequest,
    QgsGeometry,
    QgsMessageLog,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsTask,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import pyqtSignal

from . import LOG_TAG, tr
from .request import RequestError, is_polygon_layer  # noqa: F401 - is_polygon_layer re-exported
from .task import GuardedRun


@dataclass
class FinetuneRequest:
    """Everything a fine-tune task needs, as plain values (safe in a worker thread).

    ``options`` are keyword arguments of the engine's ``FinetuneOptions``
    (its declared parameters checked here, at once; an unknown key is an
    error when the task builds the options, never dropped).
    """

    raster_name: str
    options: Dict[str, Any]
    temp_dir: Optional[str] = None  # exported layers; removed when the task is finished
    notes: List[str] = field(default_factory=list)  # what the dialog found (e.g. CRS reprojection)

    def __post_init__(self) -> None:
        from ..core.params import FINETUNE

        for name, p in FINETUNE.items():
            if name in self.options:
                self.options[name] = p.check(self.options[name])

    @property
    def name(self) -> str:
        """The new model's name."""
        return self.options.get("name", "")

    def finetune_options(self) -> Any:
        """The engine's ``FinetuneOptions``."""
        from ..core.params import ParameterError
        from ..core.training.finetune import FinetuneOptions

        try:
            return FinetuneOptions(**self.options)
        except TypeError as exc:
            raise ParameterError(f"Unknown fine-tuning option ({exc})") from None


# -- main thread: layers to files -------------------------------------------------
def file_source(layer: QgsVectorLayer) -> Optional[Tuple[str, Optional[str]]]:
    """(path, layer name) when the engine can read ``layer`` straight from its file, else None.

    Only an OGR layer on a local file, without a filter and without unsaved
    edits, qualifies: anything else must be exported first.
    """
    if layer.providerType() != "ogr" or layer.subsetString() or layer.isModified():
        return None
    parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
    path = parts.get("path") or ""
    if not path or not os.path.isfile(path):
        return None
    return path, parts.get("layerName") or None


def export_layer(layer: QgsVectorLayer, folder: str, name: str, selected_only: bool = False) -> str:
    """Write ``layer`` (geometries only, in its own CRS) to ``folder/name.gpkg``; return the path."""
    path = os.path.join(folder, name + ".gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = name
    options.fileEncoding = "UTF-8"
    options.onlySelectedFeatures = bool(selected_only)
    options.skipAttributeCreation = True
    result = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), options)
    error, message = result[0], result[1]
    if error != QgsVectorFileWriter.NoError:
        raise RequestError(
            tr("Layer '{name}' could not be written to a temporary GeoPackage: {error}").format(
                name=layer.name(), error=message or error
            )
        )
    return path


def label_source(
    layer: QgsVectorLayer, selected_only: bool, temp_dir: Callable[[], str]
) -> Tuple[str, Optional[str], bool]:
    """(path, layer name, exported) of the labels for the engine; exports when needed.

    ``temp_dir`` is called (once) for the folder of exported files.
    """
    if not selected_only:
        found = file_source(layer)
        if found is not None:
            return found[0], found[1], False
    return export_layer(layer, temp_dir(), "labels", selected_only), "labels", True


def _transform(src_crs, dst_crs) -> Optional[QgsCoordinateTransform]:
    if not src_crs.isValid() or not dst_crs.isValid() or src_crs == dst_crs:
        return None
    return QgsCoordinateTransform(src_crs, dst_crs, QgsProject.instance())


def labels_in_raster(layer: QgsVectorLayer, selected_only: bool, raster: QgsRasterLayer) -> Optional[bool]:
    """Whether at least one (selected) polygon of ``layer`` overlaps the raster; None if unknown."""
    rect = raster.extent()
    transform = _transform(raster.crs(), layer.crs())
    try:
        if transform is not None:
            rect = transform.transformBoundingBox(rect)
    except QgsCsException:
        return None
    request = QgsFeatureRequest().setFilterRect(rect).setFlags(QgsFeatureRequest.ExactIntersect)
    request.setNoAttributes()
    if selected_only:
        request.setFilterFids(layer.selectedFeatureIds())
    for feature in layer.getFeatures(request):
        if feature.hasGeometry() and not feature.geometry().isEmpty():
            return True
    return False


def area_wkt(layer: Any, selected_only: bool, raster: QgsRasterLayer) -> str:
    """The union of the (selected) polygons of ``layer`` as WKT in the raster's CRS."""
    if not is_polygon_layer(layer):
        raise RequestError(tr("Choose a polygon layer for the labelled area."))
    if selected_only:
        features = layer.selectedFeatures()
        if not features:
            raise RequestError(
                tr(
                    "No polygons are selected in layer '{name}'. Select the labelled area "
                    "(Select Features tool) or choose another area option."
                ).format(name=layer.name())
            )
    else:
        features = list(layer.getFeatures())
    geometries = [f.geometry() for f in features if f.hasGeometry() and not f.geometry().isEmpty()]
    if not geometries:
        raise RequestError(tr("Layer '{name}' holds no polygon for the labelled area.").format(name=layer.name()))
    union = QgsGeometry.unaryUnion([g.makeValid() for g in geometries])
    transform = _transform(layer.crs(), raster.crs())
    if transform is not None:
        try:
            union.transform(transform)
        except QgsCsException as exc:
            raise RequestError(
                tr("The labelled area cannot be reprojected to the raster's CRS ({error}).").format(error=exc)
            ) from None
    if union.isNull() or union.isEmpty():
        raise RequestError(tr("The labelled area is empty."))
    if not union.intersects(QgsGeometry.fromRect(raster.extent())):
        raise RequestError(tr("The labelled area does not overlap layer '{name}'.").format(name=raster.name()))
    return union.asWkt()


# -- the task ----------------------------------------------------------------------
class FinetuneTask(GuardedRun, QgsTask):
    """Fine-tune a model for one :class:`FinetuneRequest`; cancellable between batches.

    ``epochFinished`` carries ``{"row": {...}, "improved": bool}`` after each
    epoch (emitted in the worker thread; connect it to a slot of a main-thread
    QObject and Qt queues it).
    """

    epochFinished = pyqtSignal(dict)  # noqa: N815 - Qt signal naming

    def __init__(self, request: FinetuneRequest, on_finished: Optional[Callable[["FinetuneTask", bool], None]] = None):
        super().__init__(tr("Fine-tuning model {name}").format(name=request.name), QgsTask.CanCancel)
        self.request = request
        self.on_finished = on_finished
        self.result: Any = None  # the engine's FinetuneResult
        self.rows: List[Dict[str, Any]] = []
        self.error: Optional[str] = None
        self.was_cancelled = False
        self.seconds = 0.0
        self.status_text = ""
        self._lock = threading.Lock()
        self._options: Any = None
        self.run_started = threading.Event()  # set when run() begins, in the worker thread
        self.run_done = threading.Event()  # set when run() returns: plugin unload waits on it

    def set_keep_best(self, keep: bool) -> None:
        """Whether a cancelled run still writes its best epoch (call before :meth:`cancel`)."""
        with self._lock:
            self.request.options["keep_best_on_cancel"] = bool(keep)
            if self._options is not None:
                self._options.keep_best_on_cancel = bool(keep)

    # -- worker thread -----------------------------------------------------
    def _progress(self, fraction: float, message: str = "") -> None:
        self.status_text = message
        self.setProgress(max(0.0, min(1.0, float(fraction))) * 100.0)

    def _on_epoch(self, info: Dict[str, Any]) -> None:
        row = {k: v for k, v in info["row"].items()}
        self.rows.append(row)
        self.epochFinished.emit({"row": row, "improved": bool(info.get("improved"))})

    @staticmethod
    def _log(message: str) -> None:
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Info)

    def run(self) -> bool:
        return self.guarded_run(self._run)

    def _run(self) -> None:
        from ..core.training.finetune import finetune

        with self._lock:
            self._options = self.request.finetune_options()
        self.result = finetune(
            self._options, progress=self._progress, is_cancelled=self.isCanceled, on_epoch=self._on_epoch, log=self._log
        )
        self.was_cancelled = self.result.stopped == "cancelled"

    def out_of_memory_text(self) -> str:
        return tr("The GPU ran out of memory. Choose a smaller batch size or CPU as device. ({error})")

    # -- main thread -------------------------------------------------------
    def finished(self, ok: bool) -> None:  # noqa: D401 - QgsTask API
        """Hand over to ``on_finished``, then remove the exported layers."""
        if not ok and self.isCanceled():
            self.was_cancelled = True
        try:
            if self.on_finished is not None:
                self.on_finished(self, ok)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Delete the temporary GeoPackages written for this task."""
        folder, self.request.temp_dir = self.request.temp_dir, None
        if folder and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)


def make_temp_dir() -> str:
    """A new folder for the layers exported for one fine-tune run."""
    return tempfile.mkdtemp(prefix="roof_detector_finetune_")
