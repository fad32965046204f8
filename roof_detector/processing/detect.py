"""Processing algorithm ``roofdetector:detectbuildings``: the same detection as the toolbar button."""

from __future__ import annotations

from typing import Any, Dict

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from .common import (DEVICES, RoofDetectorAlgorithm, check_raster_layer, close_source, copy_features, engine_errors,
                     engine_progress, raise_if_cancelled, raster_source)


class DetectBuildingsAlgorithm(RoofDetectorAlgorithm):
    """Building footprints of an orthophoto with the U-Net, as a polygon layer."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    THRESHOLD = "THRESHOLD"
    MIN_AREA = "MIN_AREA"
    SEPARATE_TOUCHING = "SEPARATE_TOUCHING"
    DEVICE = "DEVICE"
    EXTENT = "EXTENT"
    BATCH_SIZE = "BATCH_SIZE"
    CONFIRM_LARGE = "CONFIRM_LARGE"
    OUTPUT = "OUTPUT"
    BUILDINGS = "BUILDINGS"
    TOTAL_AREA = "TOTAL_AREA_M2"

    NAME = "detectbuildings"
    DISPLAY_NAME = "Detect buildings"
    GROUP = "Building detection"
    GROUP_ID = "detection"
    HELP = (
        "Finds building footprints in an RGB orthophoto with the Roof Detector U-Net, the same engine as the "
        "plugin's Detect Buildings button and <i>python -m roof_detector detect</i>.<br><br>"
        "<b>Orthophoto</b>: a file-based raster (GeoTIFF, JPEG 2000, VRT...) with 1, 2 (grey + alpha), 3 or 4 bands "
        "of any integer or real type and a CRS; "
        "any pixel size is resampled to the model's.<br>"
        "<b>Model file</b>: a Roof Detector .pt model; empty = the bundled model.<br>"
        "<b>Threshold</b>: probability above which a pixel is building (0-1); empty = the model's tuned value.<br>"
        "<b>Minimum building area</b>: smaller polygons are dropped (m² on the ground).<br>"
        "<b>Separate touching buildings</b>: split roofs that touch along the probability valley between "
        "their confident cores, one polygon per roof (default: yes).<br>"
        "<b>Device</b>: 0 automatic (GPU when present), 1 CPU, 2 CUDA GPU.<br>"
        "<b>Extent</b>: optional area to search; only the tiles touching it are run, results are clipped to it.<br>"
        "<b>Batch size</b>: tiles per model call; 0 = automatic (8 on CPU, 32 on GPU).<br>"
        "<b>Run even when very large</b> (CONFIRM_LARGE): a run of more than 100,000 tiles, or needing more "
        "memory than is free, is refused before it starts unless this is set; one needing more memory than "
        "the machine has is always refused.<br><br>"
        "Output: polygons in the raster's CRS with <i>area_m2</i> and <i>perimeter_m</i> (true ground "
        "measures), <i>confidence</i> (mean model probability) and any attribute the engine adds. Also "
        "returns the number of buildings (BUILDINGS) and their total area (TOTAL_AREA_M2)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Orthophoto")))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Model file (empty: bundled model)"), extension="pt", optional=True))
        threshold = QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Threshold (empty: the model's)"), QgsProcessingParameterNumber.Double,
            optional=True, minValue=0.0, maxValue=1.0)
        self.addParameter(threshold)
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, self.tr("Minimum building area (m²)"), QgsProcessingParameterNumber.Double,
            defaultValue=10.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.SEPARATE_TOUCHING, self.tr("Separate touching buildings"), defaultValue=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=[self.tr("Automatic"), self.tr("CPU"), self.tr("CUDA GPU")],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Area to search"), optional=True))
        batch = QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Batch size (0: automatic)"), QgsProcessingParameterNumber.Integer,
            defaultValue=0, minValue=0, maxValue=1024)
        batch.setFlags(batch.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(batch)
        large = QgsProcessingParameterBoolean(
            self.CONFIRM_LARGE, self.tr("Run even when very large (over 100,000 tiles or the free memory)"),
            defaultValue=False)
        large.setFlags(large.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(large)
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Buildings"), QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber(self.BUILDINGS, self.tr("Number of buildings")))
        self.addOutput(QgsProcessingOutputNumber(self.TOTAL_AREA, self.tr("Total building area (m²)")))

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        check_raster_layer(layer)
        aoi_wkt = None
        if self.optional_value(parameters, self.EXTENT):
            aoi = self.parameterAsExtentGeometry(parameters, self.EXTENT, context, layer.crs())
            if aoi.isNull() or aoi.isEmpty():
                raise QgsProcessingException(self.tr("The area to search is empty"))
            aoi_wkt = aoi.asWkt()
        model = self.parameterAsFile(parameters, self.MODEL, context) or None
        threshold = (self.parameterAsDouble(parameters, self.THRESHOLD, context)
                     if self.optional_value(parameters, self.THRESHOLD) else None)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context) or None
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]

        with engine_errors(feedback):
            from ..core.errors import LargeRunError
            from ..core.pipeline import DetectOptions, detect_buildings
            from ..qgis_ui.output import build_memory_layer, crs_from, summary
            from ..qgis_ui.paths import bundled_model_path
            from ..qgis_ui.task import make_options

            model = model or bundled_model_path()
            if model is None:
                raise QgsProcessingException(self.tr("The bundled model is not installed; give a model file "
                                                     "(parameter MODEL)"))
            options = make_options(DetectOptions, dict(
                model_path=model, device=device, threshold=threshold,
                min_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
                separate_touching=self.parameterAsBoolean(parameters, self.SEPARATE_TOUCHING, context),
                batch_size=batch_size, aoi_wkt=aoi_wkt,
                confirm_large_run=self.parameterAsBoolean(parameters, self.CONFIRM_LARGE, context)))
            # Web layers, VRTs and in-memory rasters are read through QGIS (opened again in the source's threads).
            source = raster_source(layer, model, aoi_wkt, feedback.isCanceled)
            try:
                feedback.pushInfo(self.tr("Detecting buildings in {path} with {model}").format(
                    path=getattr(source, "name", source), model=model))
                try:
                    result = detect_buildings(source, options, progress=engine_progress(feedback, 0.0, 95.0),
                                              is_cancelled=feedback.isCanceled)
                except LargeRunError as exc:
                    raise QgsProcessingException(str(exc) + (self.tr(" (parameter CONFIRM_LARGE)")
                                                             if exc.confirmable else "")) from None
            finally:
                source_warnings = close_source(source)
            for warning in list(result.warnings) + source_warnings:
                feedback.reportError(warning, False)
            # The layer's own CRS first (keeps its authid), the engine's as fallback: as the dialog does.
            crs = crs_from(layer.crs().authid() or layer.crs().toWkt(), result.crs_wkt)
            buildings = build_memory_layer(result.buildings, crs, layer.name())
        raise_if_cancelled(feedback)  # a cancel during sizing: no output is created at all
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, buildings.fields(),
                                             buildings.wkbType(), crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        copy_features(buildings, sink, feedback)
        count, area = summary(result.buildings)
        stats = result.stats
        feedback.pushInfo(self.tr("{n} buildings, {area:,.1f} m² in {s:.1f} s ({tiles} tiles on {device}, "
                                  "threshold {thr:g})").format(
            n=count, area=area, s=result.seconds, tiles=stats.get("tiles", "?"),
            device=stats.get("device", device), thr=stats.get("threshold", threshold or 0)))
        feedback.setProgress(100)
        return {self.OUTPUT: dest_id, self.BUILDINGS: count, self.TOTAL_AREA: area}
