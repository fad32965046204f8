"""The background task: detection and writing in a worker thread, results on the main thread.

``run()`` (worker thread) calls the engine, builds the result layer and, for
GeoPackage output, writes it; it stores what it made on the task and never
touches the project or a widget. ``finished(ok)`` (main thread) hands the
task to a callback that adds the layer and reports (see :mod:`.present`).

Errors never escape as tracebacks: engine errors keep their message, an
out-of-memory GPU gets advice, anything else is logged with its traceback
and shown as one line.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, Optional

from qgis.core import QgsTask, QgsVectorLayer
from qgis.PyQt.QtCore import QCoreApplication

from . import tr
from .errors import OUT_OF_MEMORY_TEXT, is_out_of_memory, user_message  # noqa: F401 - is_out_of_memory re-exported
from .output import build_memory_layer, crs_from
from .request import DetectRequest

DETECT_SHARE = 95.0  # percent of the progress bar for the engine, the rest for writing


class GuardedRun:
    """``run()`` bookkeeping and error handling: the one lifecycle of every plugin task.

    The task sets ``run_started``/``run_done`` (threading.Event), ``seconds``,
    ``error`` and ``was_cancelled``; errors become messages through
    :func:`.errors.user_message`, the one mapper (Processing uses it too).
    """

    def out_of_memory_text(self) -> str:
        """Advice for a GPU out of memory, with an ``{error}`` field for the first line of the error."""
        return OUT_OF_MEMORY_TEXT

    def guarded_run(self, work: Callable[[], None]) -> bool:
        """Call ``work()`` (worker thread): True when it returns, else False with ``error`` set (None: cancelled)."""
        start = time.perf_counter()
        self.run_started.set()
        try:
            work()
            return True
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message, never a traceback dialog
            self.error = user_message(exc, self.isCanceled(), self.out_of_memory_text())
            self.was_cancelled = self.error is None
        finally:
            self.seconds = time.perf_counter() - start
            self.run_done.set()
        return False


class DetectTask(GuardedRun, QgsTask):
    """Detect buildings for one :class:`DetectRequest`; cancellable within a batch."""

    def __init__(self, request: DetectRequest, on_finished: Optional[Callable[["DetectTask", bool], None]] = None):
        super().__init__(tr("Detecting buildings in {name}").format(name=request.raster_name), QgsTask.CanCancel)
        self.request = request
        self.on_finished = on_finished
        self.result: Any = None  # the engine's DetectionResult
        self.layer: Optional[QgsVectorLayer] = None  # memory layer (temporary output)
        self.output_uri: Optional[str] = None  # GeoPackage layer URI
        self.error: Optional[str] = None
        self.seconds: float = 0.0
        self.was_cancelled = False
        self.run_started = threading.Event()  # set when run() begins, in the worker thread
        self.run_done = threading.Event()  # set when run() returns: plugin unload waits on it

    # -- worker thread -----------------------------------------------------
    def _progress(self, fraction: float, message: str = "") -> None:
        self.setProgress(max(0.0, min(1.0, float(fraction))) * DETECT_SHARE)

    def run(self) -> bool:
        """Run the detection (worker thread); store results or an error message."""
        if self.guarded_run(self._run):
            return True
        self.layer = None
        return False

    def _run(self) -> None:
        from ..core.errors import Cancelled
        from ..core.pipeline import detect_buildings

        options = self.request.detect_options()
        if self.request.output_mode == "gpkg":
            # Before minutes of detection: a missing/read-only folder, a file that is not a
            # GeoPackage or one locked by another program fails now (as the CLI does).
            from ..core.gpkg_writer import check_writable

            check_writable(self.request.gpkg_path)
        source = self._open_source()
        try:
            result = detect_buildings(source, options, progress=self._progress, is_cancelled=self.isCanceled)
        finally:
            if not isinstance(source, str):
                source.close()
        if not isinstance(source, str):
            result.warnings.extend(getattr(source, "warnings", []))
        if self.isCanceled():
            raise Cancelled()
        self.deliver(result, result.provenance(options))

    def deliver(self, result: Any, metadata: Dict[str, Any]) -> None:
        """Turn a finished detection into the result layer (and GeoPackage): shared by local and server runs.

        ``result`` has ``buildings`` (``geometry`` with ``wkb`` and ``geom_type``,
        ``area_m2``, ``perimeter_m``, ``confidence``, ``attributes``), ``crs_wkt``
        and ``warnings``; ``metadata`` is what a GeoPackage layer records about its making.
        """
        from ..core.errors import Cancelled

        self.setProgress(DETECT_SHARE)
        if self.request.output_mode == "gpkg":
            # The last step, through the one GeoPackage writer (as the CLI): from here on the
            # result is complete, so it is not interrupted. The layer's CRS first (keeps its authid).
            from ..core import gpkg_writer

            path = os.path.abspath(self.request.gpkg_path)
            gpkg_writer.write_buildings(
                result.buildings,
                path,
                self.request.crs or result.crs_wkt,
                layer=self.request.gpkg_layer,
                overwrite=self.request.replace_layer,
                metadata=metadata,
            )
            self.output_uri = f"{path}|layername={self.request.gpkg_layer}"
            layer = None
        else:
            # The QGIS layer's CRS first (keeps its authid), the engine's as fallback.
            crs = crs_from(self.request.crs, getattr(result, "crs_wkt", "") or "")
            layer = build_memory_layer(result.buildings, crs, self.request.layer_name)
            if self.isCanceled():
                raise Cancelled()
            app = QCoreApplication.instance()
            if app is not None:
                layer.moveToThread(app.thread())
        self.result = result
        self.layer = layer
        self.setProgress(100.0)

    def _open_source(self) -> Any:
        """The engine input: the file path, or a reader for any other layer (web, VRT, in-memory...).

        The layer is opened again from its URI inside the reader's own threads
        (see :mod:`roof_detector.qgis_io`); the project's layer is never used here.
        """
        if self.request.reader == "file":
            return self.request.raster_path
        from ..qgis_io import model_gsd_m, open_layer_source

        gsd = model_gsd_m(self.request.model_path) if self.request.reader in ("xyz", "render") else 0.0
        return open_layer_source(self.request.layer_input(), gsd, self.request.aoi_wkt, is_cancelled=self.isCanceled)

    def _record_rate(self) -> None:
        """Keep this run's speed for the next work estimate (local files only: no network time in it)."""
        result = getattr(self, "result", None)
        if result is None or self.request.reader != "file":
            return
        try:
            from ..qgis_io.layers import record_measured_rate

            device = "cuda" if str(result.stats.get("device", "")).upper().startswith("CUDA") else "cpu"
            record_measured_rate(
                device, int(result.stats["tiles"]), int(result.model_metadata["tile_size_px"]), float(result.seconds)
            )
        except Exception:  # noqa: BLE001 - an estimate must never fail a finished run
            pass

    # -- main thread -------------------------------------------------------
    def finished(self, ok: bool) -> None:  # noqa: D401 - QgsTask API
        """Called by the task manager on the main thread; delegates to ``on_finished``."""
        if not ok and self.isCanceled():
            self.was_cancelled = True
        if ok:
            self._record_rate()
        if self.on_finished is not None:
            self.on_finished(self, ok)
