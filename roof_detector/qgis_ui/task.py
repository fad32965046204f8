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

import dataclasses
import threading
import time
import traceback
from typing import Any, Callable, Dict, Optional, Tuple

from qgis.core import Qgis, QgsMessageLog, QgsTask, QgsVectorLayer
from qgis.PyQt.QtCore import QCoreApplication

from . import LOG_TAG, tr
from .output import WriteError, build_memory_layer, crs_from, write_geopackage
from .request import DetectRequest

DETECT_SHARE = 95.0  # percent of the progress bar for the engine, the rest for writing


def make_options(options_class: Any, kwargs: Dict[str, Any]) -> Any:
    """``options_class(**kwargs)`` keeping only the fields it has (engine versions differ)."""
    if dataclasses.is_dataclass(options_class):
        names = {f.name for f in dataclasses.fields(options_class)}
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return options_class(**kwargs)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (torch.cuda.OutOfMemoryError or its message)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in text


class GuardedRun:
    """``run()`` bookkeeping and error handling shared by :class:`DetectTask` and the fine-tune task.

    The task sets ``run_started``/``run_done`` (threading.Event), ``seconds``,
    ``error`` and ``was_cancelled``; errors whose message is meant for the user
    are the engine's and those in ``SHOWN_ERRORS``.
    """

    SHOWN_ERRORS: Tuple[type, ...] = ()

    def out_of_memory_text(self) -> str:
        """Advice for a GPU out of memory, with an ``{error}`` field for the first line of the error."""
        raise NotImplementedError

    def guarded_run(self, work: Callable[[], None]) -> bool:
        """Call ``work()`` (worker thread): True when it returns, else False with ``error`` set (None: cancelled)."""
        start = time.perf_counter()
        self.run_started.set()
        try:
            work()
            return True
        except ImportError as exc:
            from .deps import check_dependencies
            self.error = check_dependencies() or tr("A module could not be imported: {error}").format(error=exc)
        except Exception as exc:  # every failure becomes a message, never a traceback dialog
            self._record_error(exc)
        finally:
            self.seconds = time.perf_counter() - start
            self.run_done.set()
        return False

    def _record_error(self, exc: Exception) -> None:
        from ..core.errors import Cancelled, RoofDetectorError

        if isinstance(exc, Cancelled) or self.isCanceled():
            self.was_cancelled = True
            self.error = None
        elif isinstance(exc, (RoofDetectorError,) + self.SHOWN_ERRORS):
            self.error = str(exc)
        elif is_out_of_memory(exc):
            self.error = self.out_of_memory_text().format(
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        else:
            self.error = tr("Unexpected error: {error} (details in the log panel, tab '{tag}')").format(
                error=str(exc) or type(exc).__name__, tag=LOG_TAG)
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)


class DetectTask(GuardedRun, QgsTask):
    """Detect buildings for one :class:`DetectRequest`; cancellable within a batch."""

    SHOWN_ERRORS = (WriteError,)

    def __init__(self, request: DetectRequest,
                 on_finished: Optional[Callable[["DetectTask", bool], None]] = None):
        super().__init__(tr("Detecting buildings in {name}").format(name=request.raster_name),
                         QgsTask.CanCancel)
        self.request = request
        self.on_finished = on_finished
        self.result: Any = None                    # the engine's DetectionResult
        self.layer: Optional[QgsVectorLayer] = None  # memory layer (temporary output)
        self.output_uri: Optional[str] = None      # GeoPackage layer URI
        self.error: Optional[str] = None
        self.seconds: float = 0.0
        self.was_cancelled = False
        self.run_started = threading.Event()  # set when run() begins, in the worker thread
        self.run_done = threading.Event()     # set when run() returns: plugin unload waits on it

    # -- worker thread -----------------------------------------------------
    def _progress(self, fraction: float, message: str = "") -> None:
        self.setProgress(max(0.0, min(1.0, float(fraction))) * DETECT_SHARE)

    def run(self) -> bool:
        """Run the detection (worker thread); store results or an error message."""
        if self.guarded_run(self._run):
            return True
        self.layer = None
        return False

    def out_of_memory_text(self) -> str:
        return tr("The GPU ran out of memory. Choose CPU as device, close other programs "
                  "using the GPU, or use a smaller batch size. ({error})")

    def _run(self) -> None:
        from ..core.errors import Cancelled
        from ..core.pipeline import DetectOptions, detect_buildings

        options = make_options(DetectOptions, self.request.options_kwargs())
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
        self.setProgress(DETECT_SHARE)
        # The QGIS layer's CRS first (keeps its authid), the engine's as fallback.
        crs = crs_from(self.request.crs, getattr(result, "crs_wkt", "") or "")
        layer = build_memory_layer(result.buildings, crs, self.request.layer_name)
        if self.isCanceled():
            raise Cancelled()
        if self.request.output_mode == "gpkg":
            # The last step: from here on the result is complete, so it is not interrupted.
            self.output_uri = write_geopackage(layer, self.request.gpkg_path,
                                               self.request.gpkg_layer, self.request.replace_layer)
            layer = None
        else:
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
        return open_layer_source(self.request.layer_input(), gsd, self.request.aoi_wkt,
                                 is_cancelled=self.isCanceled)

    def _record_rate(self) -> None:
        """Keep this run's speed for the next work estimate (local files only: no network time in it)."""
        result = getattr(self, "result", None)
        if result is None or self.request.reader != "file":
            return
        try:
            from ..qgis_io.layers import record_measured_rate

            device = "cuda" if str(result.stats.get("device", "")).upper().startswith("CUDA") else "cpu"
            record_measured_rate(device, int(result.stats["tiles"]), int(result.model_metadata["tile_size_px"]),
                                 float(result.seconds))
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
