"""Processing algorithm ``roofdetector:finetunemodel``: core/training/finetune.py on QGIS layers."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from qgis.core import (
    QgsFeatureRequest,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from .common import RoofDetectorAlgorithm, engine_errors, engine_progress, raster_file, source_as_file
from .parameters import add, values


class FinetuneModelAlgorithm(RoofDetectorAlgorithm):
    """Fine-tunes a model on the user's orthophoto and trusted building polygons."""

    INPUT = "INPUT"
    LABELS = "LABELS"
    AREA = "AREA"
    MODEL = "MODEL"
    OUTPUT = "OUTPUT"
    CURVES = "CURVES"
    IOU_BEFORE = "IOU_BEFORE"
    IOU_AFTER = "IOU_AFTER"
    THRESHOLD = "THRESHOLD"

    NAME = "finetunemodel"
    PURPOSE = "finetune"
    DISPLAY_NAME = "Fine-tune model"
    GROUP = "Building detection"
    GROUP_ID = "detection"
    HELP = (
        "Adapts a Roof Detector model to your imagery with building polygons you trust (the same training as "
        "<i>python -m roof_detector finetune</i>). The new model file can then be used by Detect buildings.<br><br>"
        "<b>Orthophoto</b>: a file-based raster with a CRS. <b>Building polygons</b>: the labels, in any CRS "
        "(selected features only works too). <b>Fully labelled area</b> (optional): polygons inside which "
        "<i>every</i> building is labelled; there, unlabelled pixels count as 'not building', outside it they "
        "are ignored. Without it, the label layer's extent is used.<br>"
        "The area is cut into blocks of one model tile; whole blocks (<b>validation fraction</b> of the "
        "pixels) are held out for validation, so at least two blocks are needed. The base model's IoU on "
        "those blocks is measured before training, for comparison.<br>"
        "<b>Base model</b>: empty = the bundled model. Training stops after <b>epochs</b>, or after "
        "<b>patience</b> epochs without a better validation IoU, or at the <b>time budget</b>; the best "
        "epoch is kept. Crops per epoch default to 40 per model tile of labelled area (96 to 480); the plan "
        "and its time are logged before training starts. Cancelling keeps the best model so far. When the "
        "label layer reaches beyond the labelled area, both models are also compared there (logged).<br><br>"
        "Output: the model file (.pt), its training curves (PNG) and metrics (JSON) beside it, and the "
        "validation IoU before and after (IOU_BEFORE, IOU_AFTER) and the tuned THRESHOLD."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Orthophoto")))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.LABELS, self.tr("Building polygons (labels)"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.AREA, self.tr("Fully labelled area"), [QgsProcessing.TypeVectorPolygon], optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, self.tr("Base model (empty: bundled model)"), extension="pt", optional=True
            )
        )
        add(self, "finetune", advanced=("samples_per_epoch", "compare_outside"))
        add(self, "detect", "device")
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT, self.tr("Fine-tuned model"), self.tr("Roof Detector models (*.pt)")
            )
        )
        self.addOutput(QgsProcessingOutputFile(self.CURVES, self.tr("Training curves (PNG)")))
        self.addOutput(QgsProcessingOutputNumber(self.IOU_BEFORE, self.tr("Validation IoU of the base model")))
        self.addOutput(QgsProcessingOutputNumber(self.IOU_AFTER, self.tr("Validation IoU of the fine-tuned model")))
        self.addOutput(QgsProcessingOutputNumber(self.THRESHOLD, self.tr("Tuned threshold")))

    def _area_wkt(self, parameters, context, raster_crs) -> Optional[str]:
        """The union of the area polygons in the raster CRS, as WKT (None when no area is given)."""
        if not self.optional_value(parameters, self.AREA):
            return None
        source = self.parameterAsSource(parameters, self.AREA, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.AREA))
        request = QgsFeatureRequest().setDestinationCrs(raster_crs, context.transformContext())
        geometries = [f.geometry() for f in source.getFeatures(request) if f.hasGeometry()]
        union = QgsGeometry.unaryUnion(geometries) if geometries else QgsGeometry()
        if union.isNull() or union.isEmpty():
            raise QgsProcessingException(self.tr("The fully labelled area layer holds no polygon"))
        return union.asWkt()

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        self.require_dependencies()
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        raster = raster_file(layer)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not output.lower().endswith(".pt"):
            output += ".pt"
        area_wkt = self._area_wkt(parameters, context, layer.crs())
        with engine_errors(feedback):
            from ..core.training.finetune import FinetuneOptions, finetune
            from ..qgis_adapter.paths import bundled_model_path

            base = self.parameterAsFile(parameters, self.MODEL, context) or bundled_model_path()
            if not base:
                raise QgsProcessingException(
                    self.tr("The bundled model is not installed; give a base model file (parameter MODEL)")
                )
            labels, labels_layer = source_as_file(self, parameters, self.LABELS, context, feedback)
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            options = FinetuneOptions(
                raster_path=raster,
                labels_path=labels,
                labels_layer=labels_layer,
                output_path=output,
                base_model_path=base,
                area_wkt=area_wkt,
                **values(self, parameters, context, "finetune"),
                **values(self, parameters, context, "detect", "device"),
                overwrite=True,
            )  # a Processing destination is replaced (QGIS asks first); never the base model
            feedback.pushInfo(self.tr("Fine-tuning {base} on {raster}").format(base=base, raster=raster))
            result = finetune(
                options, progress=engine_progress(feedback), is_cancelled=feedback.isCanceled, log=feedback.pushInfo
            )
        if result.model_path is None:
            raise QgsProcessingException(self.tr("Cancelled; no model was written"))
        before, after = result.before.get("iou"), result.after.get("iou")
        if result.stopped == "cancelled":
            feedback.pushWarning(self.tr("Cancelled: the best model so far was kept"))
        for note in result.notes:
            if note.startswith("Warning: "):
                feedback.pushWarning(note[len("Warning: ") :])
        feedback.pushInfo(
            self.tr(
                "Validation IoU {before} -> {after}, threshold {thr:.2f}, stopped: {why}, {minutes:.1f} min -> {path}"
            ).format(
                before=_fmt(before),
                after=_fmt(after),
                thr=result.threshold,
                why=result.stopped,
                minutes=result.minutes,
                path=result.model_path,
            )
        )
        return {
            self.OUTPUT: result.model_path,
            self.CURVES: result.curves_path,
            self.IOU_BEFORE: before,
            self.IOU_AFTER: after,
            self.THRESHOLD: result.threshold,
        }


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
