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
    TTA = "TTA"
    DEVICE = "DEVICE"
    EXTENT = "EXTENT"
    BATCH_SIZE = "BATCH_SIZE"
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
        "their confident cores (or along the seam marked by a model with border and contact outputs), one "
        "polygon per roof (default: yes).<br>"
        "<b>Test-time augmentation</b>: run the model on 4 flips of every tile and average them: fewer "
        "missed roofs, about 4 times the model time (default: no).<br>"
        "<b>Device</b>: 0 automatic (GPU when present), 1 CPU, 2 CUDA GPU.<br>"
        "<b>Extent</b>: optional area to search; only the tiles touching it are run, results are clipped to it.<br>"
        "<b>Batch size</b>: tiles per model call; 0 = automatic (8 on CPU, 32 on GPU).<br><br>"
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
        self.addParameter(QgsProcessingParameterBoolean(
            self.TTA, self.tr("Test-time augmentation (4 flips, slower)"), defaultValue=False))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=[self.tr("Automatic"), self.tr("CPU"), self.tr("CUDA GPU")],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Area to search"), optional=True))
        batch = QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Batch size (0: automatic)"), QgsProcessingParameterNumber.Integer,
            defaultValue=0, minValue=0, maxValue=1024)
        batch.setFlags(batch.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(batch)
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
                tta=self.parameterAsBoolean(parameters, self.TTA, context),
                batch_size=batch_size, aoi_wkt=aoi_wkt))
            # Web layers, VRTs and in-memory rasters are read through QGIS (opened again in the source's threads).
            source = raster_source(layer, model, aoi_wkt, feedback.isCanceled)
            try:
                feedback.pushInfo(self.tr("Detecting buildings in {path} with {model}").format(
                    path=getattr(source, "name", source), model=model))
                result = detect_buildings(source, options, progress=engine_progress(feedback, 0.0, 95.0),
                                          is_cancelled=feedback.isCanceled)
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
