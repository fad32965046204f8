"""What every Roof Detector algorithm shares: the base class, layer -> engine input, errors, progress."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from qgis.core import (
    QgsFeatureSink,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterNumber,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..qgis_adapter.paths import resource_path

#: Vector formats the engine reads directly; other layers are exported to a temporary GeoPackage.
ENGINE_VECTOR_FORMATS = ["gpkg", "shp", "geojson", "json", "fgb", "sqlite", "gml", "kml"]


HELP_URL = "https://github.com/roof-detector/roof-detector#processing-and-qgis_process"


def html_to_text(html: str) -> str:
    """The help's few tags as plain text: line breaks kept, other tags dropped, entities decoded."""
    import html as html_lib
    import re

    text = re.sub(r"<br\s*/?>", "\n", html, flags=re.I)
    text = re.sub(r"</?(p|li|ul|ol)\b[^>]*>", "\n", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"\n{3,}", "\n\n", html_lib.unescape(text)).strip()


def tr(text: str) -> str:
    return QCoreApplication.translate("RoofDetectorProcessing", text)


def icon() -> QIcon:
    path = resource_path("icon.png")
    return QIcon(path) if path else QIcon()


class RoofDetectorAlgorithm(QgsProcessingAlgorithm):
    """Base class: provider-wide icon, translation and instance creation.

    Subclasses set ``NAME``, ``DISPLAY_NAME``, ``GROUP``/``GROUP_ID``, ``HELP``
    and implement ``initAlgorithm``/``processAlgorithm``.
    """

    NAME = ""
    DISPLAY_NAME = ""
    GROUP = ""
    GROUP_ID = ""
    HELP = ""

    def tr(self, text: str) -> str:
        return tr(text)

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.tr(self.DISPLAY_NAME)

    def group(self) -> str:
        return self.tr(self.GROUP)

    def groupId(self) -> str:  # noqa: N802
        return self.GROUP_ID

    def shortHelpString(self) -> str:  # noqa: N802
        """The help as HTML in QGIS; as plain text in ``qgis_process help``, which prints it raw."""
        text = self.tr(self.HELP)
        from qgis.core import QgsApplication

        return html_to_text(text) if QgsApplication.platform() == "qgis_process" else text

    def helpUrl(self) -> str:  # noqa: N802
        """The README's Processing section on the repository page (the zip carries no README)."""
        return HELP_URL

    def addParameter(self, parameter, createOutput=True):  # noqa: N802, N803 - QGIS API
        """Real-number parameters show at most 2 decimals (Qt's default is 6: "10.000000")."""
        if (
            isinstance(parameter, QgsProcessingParameterNumber)
            and parameter.dataType() == QgsProcessingParameterNumber.Double
        ):
            meta = dict(parameter.metadata() or {})
            wrapper = dict(meta.get("widget_wrapper") or {})
            wrapper.setdefault("decimals", 2)
            meta["widget_wrapper"] = wrapper
            parameter.setMetadata(meta)
        return super().addParameter(parameter, createOutput)

    def icon(self) -> QIcon:
        return icon()

    #: what the algorithm needs, for the plugin's one dependency check (qgis_adapter.deps.PURPOSES)
    PURPOSE = "detect"

    def require_dependencies(self) -> None:
        """The plugin's one dependency check, as a QgsProcessingException (``qgis_process`` prints it)."""
        from ..qgis_adapter.deps import dependency_problem

        problem = dependency_problem(self.PURPOSE)
        if problem:
            raise QgsProcessingException(problem)

    def optional_value(self, parameters: Dict[str, Any], name: str) -> bool:
        """True when the optional parameter ``name`` was given a value."""
        value = parameters.get(name)
        return value is not None and value != ""


def raster_source(
    layer: Optional[QgsRasterLayer],
    model_path: Optional[str] = None,
    aoi_wkt: Optional[str] = None,
    is_cancelled: Optional[Callable[[], bool]] = None,
) -> Any:
    """What :func:`roof_detector.core.pipeline.detect_buildings` reads for ``layer``.

    The local file of a plain raster file; for any other layer (WMS/WMTS/XYZ,
    a VRT or format only QGIS's GDAL reads, an in-memory raster...) a
    ``RasterSource`` reading it through QGIS (see :mod:`roof_detector.qgis_io`):
    web layers over ``aoi_wkt`` (layer CRS) at ``model_path``'s resolution.
    Pass the result to :func:`close_source` when done.
    """
    from ..qgis_io import source_for_layer

    check_raster_layer(layer)
    return source_for_layer(layer, model_path, aoi_wkt, is_cancelled)


def check_raster_layer(layer: Optional[QgsRasterLayer]) -> None:
    """The dialog's checks (a valid raster layer with a CRS), as a :class:`QgsProcessingException`."""
    from ..qgis_adapter.request import RequestError, raster_input

    try:
        raster_input(layer)
    except RequestError as exc:
        raise QgsProcessingException(str(exc)) from None


def close_source(source: Any) -> List[str]:
    """Close what :func:`raster_source` returned; return its warnings (missing tiles...)."""
    if isinstance(source, str):
        return []
    warnings = list(getattr(source, "warnings", []))
    source.close()
    return warnings


def raster_file(layer: Optional[QgsRasterLayer]) -> str:
    """The local file behind a raster layer (for the engine parts that read files: grids, training)."""
    from ..qgis_adapter.request import RequestError, raster_file_path

    try:
        return raster_file_path(layer)
    except RequestError as exc:
        raise QgsProcessingException(str(exc)) from None


def engine_progress(
    feedback: QgsProcessingFeedback, start: float = 0.0, end: float = 100.0
) -> Callable[[float, str], None]:
    """An engine ``progress(fraction, message)`` mapped onto ``feedback`` between ``start`` and ``end`` %."""
    last = {"message": None}

    def progress(fraction: float, message: str = "") -> None:
        feedback.setProgress(start + (end - start) * max(0.0, min(1.0, float(fraction))))
        if message and message != last["message"]:
            last["message"] = message
            feedback.setProgressText(message)

    return progress


@contextmanager
def engine_errors(feedback: QgsProcessingFeedback) -> Iterator[None]:
    """Turn any error into a :class:`QgsProcessingException` with the one message the plugin's tasks show too."""
    from ..qgis_adapter.errors import OUT_OF_MEMORY_TEXT, user_message

    try:
        yield
    except QgsProcessingException as exc:
        release_frames(exc)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line message (qgis_adapter.errors)
        from ..core.errors import Cancelled

        message = user_message(exc, feedback.isCanceled(), OUT_OF_MEMORY_TEXT)
        release_frames(exc)
        raise QgsProcessingException(message if message is not None else Cancelled().args[0]) from None


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback and its chain.

    QGIS 3.22's bindings never release the exception a Python ``processAlgorithm``
    raises: without this, a failed run kept the engine's frames (the loaded model,
    rasters, tiles) in memory until QGIS exits, and the caller's frames too when
    it was run from Python (processing.run), its context and layers among them.
    """
    import traceback

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # frames still running (ours) are skipped
        exc = exc.__cause__ or exc.__context__


def source_as_file(
    alg: QgsProcessingAlgorithm,
    parameters: Dict[str, Any],
    name: str,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
) -> Tuple[str, Optional[str]]:
    """(path, layer name or None) of a vector input the engine can read with OGR.

    File layers are used in place; memory/database layers, selections and
    filtered sources are exported to a temporary GeoPackage first.
    """
    path, layer_name = alg.parameterAsCompatibleSourceLayerPathAndLayerName(
        parameters, name, context, ENGINE_VECTOR_FORMATS, "gpkg", feedback
    )
    if not path:
        raise QgsProcessingException(tr("Cannot read the layer of parameter {name}").format(name=name))
    return path, (layer_name or None)


def add_features(features: Iterable[Any], sink: QgsFeatureSink) -> int:
    """Add every feature to ``sink``; return how many.

    Not interrupted by a cancel: the features are in memory already, and
    stopping half-way would leave a partial output behind as if it were the
    result (callers check for a cancel before they create the sink).
    """
    count = 0
    for feature in features:
        if not sink.addFeature(feature, QgsFeatureSink.FastInsert):
            raise QgsProcessingException(tr("Could not write a feature to the output"))
        count += 1
    return count


def raise_if_cancelled(feedback: QgsProcessingFeedback) -> None:
    """Stop with the engine's "nothing was written" message when the user cancelled."""
    if feedback is not None and feedback.isCanceled():
        from ..core.errors import Cancelled

        raise QgsProcessingException(Cancelled().args[0])
