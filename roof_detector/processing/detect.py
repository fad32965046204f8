"""Processing algorithm ``roofdetector:detectbuildings``: the same detection as the toolbar button."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
)

from ..core.params import SOLAR
from .common import (
    RoofDetectorAlgorithm,
    add_features,
    check_raster_layer,
    close_source,
    engine_errors,
    engine_progress,
    raise_if_cancelled,
    raster_source,
)
from .parameters import add, detect_options, help_lines


class DetectBuildingsAlgorithm(RoofDetectorAlgorithm):
    """Building footprints of an orthophoto with the U-Net, as a polygon layer."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"
    BUILDINGS = "BUILDINGS"
    TOTAL_AREA = "TOTAL_AREA_M2"

    NAME = "detectbuildings"
    DISPLAY_NAME = "Detect buildings"
    GROUP = "Building detection"
    GROUP_ID = "detection"
    HELP = (
        "Finds building footprints in an RGB orthophoto with the Roof Detector U-Net, the same engine and the "
        "same parameters as the plugin's Detect Buildings button and <i>python -m roof_detector detect</i>.<br><br>"
        "<b>Orthophoto</b>: a raster with 1, 2 (grey + alpha), 3 or 4 bands of any integer or real type and a "
        "CRS (files, web layers, VRTs...); any pixel size is resampled to the model's.<br>"
        "<b>Model file</b>: a Roof Detector .pt model; empty = the bundled model.<br>"
        "<b>Area to search</b>: optional; only the tiles touching it are run, results are clipped to it.<br>"
        + help_lines("detect")
        + help_lines("outlines")
        + help_lines("solar")
        + "<br>Output: polygons in the raster's CRS with <i>area_m2</i> and <i>perimeter_m</i> (true ground "
        "measures), <i>confidence</i> (mean model probability) and the rooftop solar fields (usable_area_m2, "
        "panels, kwp, specific_yield, annual_kwh, orientation_deg). Also returns the number of buildings "
        "(BUILDINGS) and their total area (TOTAL_AREA_M2)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Orthophoto")))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, self.tr("Model file (empty: bundled model)"), extension="pt", optional=True
            )
        )
        add(self, "detect", advanced=("batch_size", "confirm_large_run"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Area to search"), optional=True))
        add(self, "outlines")
        add(self, "solar", advanced=tuple(SOLAR))
        self.addParameter(
            QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Buildings"), QgsProcessing.TypeVectorPolygon)
        )
        self.addOutput(QgsProcessingOutputNumber(self.BUILDINGS, self.tr("Number of buildings")))
        self.addOutput(QgsProcessingOutputNumber(self.TOTAL_AREA, self.tr("Total building area (m²)")))

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        self.require_dependencies()
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        check_raster_layer(layer)
        aoi_wkt = self._area_to_search(parameters, context, layer)
        model = self.parameterAsFile(parameters, self.MODEL, context) or None
        with engine_errors(feedback):
            from ..qgis_adapter.output import ResultFeatures, crs_from

            options = detect_options(self, parameters, context, model, aoi_wkt=aoi_wkt)
            result = self._detect(layer, options, feedback)
            # The layer's own CRS first (keeps its authid), the engine's as fallback: as the dialog does.
            crs = crs_from(layer.crs().authid() or layer.crs().toWkt(), result.crs_wkt)
            buildings = ResultFeatures(result.buildings)  # the fields of the plugin's layers and GeoPackages
        raise_if_cancelled(feedback)  # a cancel during sizing: no output is created at all
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, buildings.fields, buildings.wkb_type, crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        add_features(buildings.features(), sink)
        count, area = self._report(result, options, feedback)
        return {self.OUTPUT: dest_id, self.BUILDINGS: count, self.TOTAL_AREA: area}

    def _area_to_search(self, parameters, context, layer) -> Optional[str]:
        """The EXTENT parameter as WKT in the raster's CRS (None: the whole raster)."""
        if not self.optional_value(parameters, self.EXTENT):
            return None
        aoi = self.parameterAsExtentGeometry(parameters, self.EXTENT, context, layer.crs())
        if aoi.isNull() or aoi.isEmpty():
            raise QgsProcessingException(self.tr("The area to search is empty"))
        return aoi.asWkt()

    def _detect(self, layer, options, feedback) -> Any:
        """Run the engine on ``layer`` (its warnings go to the log); the ``DetectionResult``."""
        from ..core.errors import LargeRunError
        from ..core.params import DETECT
        from ..core.pipeline import detect_buildings

        # Web layers, VRTs and in-memory rasters are read through QGIS (opened again in the source's threads).
        source = raster_source(layer, options.model_path, options.aoi_wkt, feedback.isCanceled)
        try:
            feedback.pushInfo(
                self.tr("Detecting buildings in {path} with {model}").format(
                    path=getattr(source, "name", source), model=options.model_path
                )
            )
            try:
                result = detect_buildings(
                    source, options, progress=engine_progress(feedback, 0.0, 95.0), is_cancelled=feedback.isCanceled
                )
            except LargeRunError as exc:
                key = DETECT["confirm_large_run"].key
                raise QgsProcessingException(
                    str(exc) + (self.tr(" (parameter {key})").format(key=key) if exc.confirmable else "")
                ) from None
        finally:
            source_warnings = close_source(source)
        for warning in list(result.warnings) + source_warnings:
            feedback.reportError(warning, False)
        return result

    def _report(self, result, options, feedback) -> Tuple[int, float]:
        """Say what was found; (number of buildings, total area m²)."""
        from ..qgis_adapter.output import summary

        count, area = summary(result.buildings)
        stats = result.stats
        feedback.pushInfo(
            self.tr("{n} buildings, {area:,.1f} m² in {s:.1f} s ({tiles} tiles on {device}, threshold {thr:g})").format(
                n=count,
                area=area,
                s=result.seconds,
                tiles=stats.get("tiles", "?"),
                device=stats.get("device", options.device),
                thr=stats.get("threshold", 0),
            )
        )
        feedback.setProgress(100)
        return count, area
