"""Processing algorithm ``roofdetector:evaluatedetection``: core/evaluate.py on two polygon layers."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .common import RoofDetectorAlgorithm, engine_errors, raster_file, source_as_file

#: (output key, table field, where in EvaluationResult.as_dict(), label).
METRICS: Tuple[Tuple[str, str, Tuple[str, ...], str], ...] = (
    ("PIXEL_IOU", "pixel_iou", ("pixel", "iou"), "Pixel IoU"),
    ("PIXEL_ACCURACY", "pixel_accuracy", ("pixel", "accuracy"), "Pixel accuracy"),
    ("PIXEL_PRECISION", "pixel_precision", ("pixel", "precision"), "Pixel precision"),
    ("PIXEL_RECALL", "pixel_recall", ("pixel", "recall"), "Pixel recall"),
    ("PIXEL_F1", "pixel_f1", ("pixel", "f1"), "Pixel F1"),
    ("OBJECT_PRECISION", "object_precision", ("object", "precision"), "Object precision"),
    ("OBJECT_RECALL", "object_recall", ("object", "recall"), "Object recall"),
    ("OBJECT_F1", "object_f1", ("object", "f1"), "Object F1"),
    ("PREDICTED_COUNT", "predicted", ("object", "predicted"), "Predicted buildings"),
    ("REFERENCE_COUNT", "reference", ("object", "reference"), "Reference buildings"),
    ("MATCHED_COUNT", "matched", ("object", "matched"), "Matched buildings"),
    ("VALID_PIXELS_COUNT", "valid_pixels", ("pixel", "valid_pixels"), "Valid pixels"),
    ("MEAN_MATCHED_IOU", "mean_matched_iou", ("object", "mean_matched_iou"), "Mean IoU of matched buildings"),
    (
        "PREDICTED_MEDIAN_VERTICES",
        "predicted_median_vertices",
        ("shape", "predicted", "median_vertices"),
        "Median vertices of predicted buildings",
    ),
    (
        "REFERENCE_MEDIAN_VERTICES",
        "reference_median_vertices",
        ("shape", "reference", "median_vertices"),
        "Median vertices of reference buildings",
    ),
    (
        "PREDICTED_REGULAR_SHARE",
        "predicted_regular_share",
        ("shape", "predicted", "regular_share"),
        "Share of regular predicted buildings",
    ),
    (
        "REFERENCE_REGULAR_SHARE",
        "reference_regular_share",
        ("shape", "reference", "regular_share"),
        "Share of regular reference buildings",
    ),
)
#: Table-only columns.
EXTRA_COLUMNS = (
    ("tp", ("pixel", "tp")),
    ("fp", ("pixel", "fp")),
    ("fn", ("pixel", "fn")),
    ("tn", ("pixel", "tn")),
    ("iou_threshold", ("object", "iou_threshold")),
)


class EvaluateDetectionAlgorithm(RoofDetectorAlgorithm):
    """Pixel and object metrics of predicted against reference building polygons."""

    PREDICTED = "PREDICTED"
    REFERENCE = "REFERENCE"
    RASTER = "RASTER"
    EXTENT = "EXTENT"
    PIXEL_SIZE = "PIXEL_SIZE"
    IOU_THRESHOLD = "IOU_THRESHOLD"
    OUTPUT = "OUTPUT"
    OUTPUT_JSON = "OUTPUT_JSON"

    NAME = "evaluatedetection"
    PURPOSE = "report"
    DISPLAY_NAME = "Evaluate building detection"
    GROUP = "Building detection"
    GROUP_ID = "detection"
    HELP = (
        "Compares predicted building polygons with reference polygons (e.g. OpenStreetMap or a cadastre), as "
        "<i>python -m roof_detector evaluate</i> does.<br><br>"
        "<b>Pixel level</b>: both layers are burnt onto one pixel grid (a pixel is building when its centre "
        "lies inside a polygon) and compared: IoU, accuracy, precision, recall, F1. The grid is the "
        "<b>raster</b>'s (its nodata pixels are left out) or else the <b>extent</b> cut into pixels of "
        "<b>pixel size</b> (in the units of the extent's CRS, else the reference layer's). Give one of the two.<br>"
        "<b>Object level</b>: buildings are matched one-to-one, greedily by decreasing IoU, when their IoU is at "
        "least the <b>IoU threshold</b> (0.5); object precision = matched / predicted, recall = matched / "
        "reference, F1.<br><br>"
        "The figures go to the log, to a one-row table (OUTPUT, no geometry), optionally to a JSON file, and "
        "come back as numeric outputs for models and scripts: PIXEL_IOU, PIXEL_ACCURACY, PIXEL_PRECISION, "
        "PIXEL_RECALL, PIXEL_F1, OBJECT_PRECISION, OBJECT_RECALL, OBJECT_F1, PREDICTED_COUNT, REFERENCE_COUNT, "
        "MATCHED_COUNT, VALID_PIXELS_COUNT. Layers in other CRSs are reprojected to the grid's."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        polygons = [QgsProcessing.TypeVectorPolygon]
        self.addParameter(QgsProcessingParameterFeatureSource(self.PREDICTED, self.tr("Predicted buildings"), polygons))
        self.addParameter(QgsProcessingParameterFeatureSource(self.REFERENCE, self.tr("Reference buildings"), polygons))
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.RASTER, self.tr("Raster giving the pixel grid"), optional=True)
        )
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, self.tr("Or: extent of the pixel grid"), optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PIXEL_SIZE,
                self.tr("Pixel size with an extent (CRS units)"),
                QgsProcessingParameterNumber.Double,
                defaultValue=0.5,
                minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.IOU_THRESHOLD,
                self.tr("IoU threshold for matching buildings"),
                QgsProcessingParameterNumber.Double,
                defaultValue=0.5,
                minValue=0.01,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT, self.tr("Metrics table"), QgsProcessing.TypeVector, optional=True, createByDefault=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_JSON,
                self.tr("Metrics as JSON"),
                self.tr("JSON files (*.json)"),
                optional=True,
                createByDefault=False,
            )
        )
        for key, _, _, label in METRICS:
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        has_raster = self.optional_value(parameters, self.RASTER)
        has_extent = self.optional_value(parameters, self.EXTENT)
        if has_raster == has_extent:
            return False, self.tr("Give either a raster or an extent (with a pixel size) for the pixel grid")
        if has_extent and not self.parameterAsDouble(parameters, self.PIXEL_SIZE, context) > 0:
            return False, self.tr("The pixel size must be greater than 0")
        return True, ""

    def _grid(self, parameters, context) -> Dict[str, Any]:
        """The ``evaluate_files`` grid keywords: a raster path, or extent + pixel size + CRS."""
        ok, message = self.checkParameterValues(parameters, context)
        if not ok:
            raise QgsProcessingException(message)
        if self.optional_value(parameters, self.RASTER):
            return {"raster_path": raster_file(self.parameterAsRasterLayer(parameters, self.RASTER, context))}
        crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
        if not crs.isValid():
            reference = self.parameterAsSource(parameters, self.REFERENCE, context)
            crs = reference.sourceCrs() if reference is not None else QgsCoordinateReferenceSystem()
        if not crs.isValid():
            raise QgsProcessingException(
                self.tr(
                    "The extent and the reference layer have no CRS: give the extent "
                    "with its CRS, e.g. 'xmin,xmax,ymin,ymax [EPSG:32631]'"
                )
            )
        rect = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        return {
            "extent": (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
            "pixel_size": self.parameterAsDouble(parameters, self.PIXEL_SIZE, context),
            "crs": crs.authid() or crs.toWkt(),
        }

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        self.require_dependencies()
        grid = self._grid(parameters, context)
        threshold = self.parameterAsDouble(parameters, self.IOU_THRESHOLD, context)
        json_path = (
            self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context)
            if self.optional_value(parameters, self.OUTPUT_JSON)
            else ""
        )
        with engine_errors(feedback):
            from ..core.evaluate import evaluate_files

            predicted, predicted_layer = source_as_file(self, parameters, self.PREDICTED, context, feedback)
            reference, reference_layer = source_as_file(self, parameters, self.REFERENCE, context, feedback)
            feedback.setProgress(10)
            result = evaluate_files(
                predicted,
                reference,
                predicted_layer=predicted_layer,
                reference_layer=reference_layer,
                iou_threshold=threshold,
                **grid,
            )
            figures = result.as_dict()
        feedback.setProgress(90)
        self._log(figures, feedback)

        results: Dict[str, Any] = {key: _get(figures, where) for key, _, where, _ in METRICS}
        columns: List[Tuple[str, Any]] = [(field, _get(figures, where)) for _, field, where, _ in METRICS]
        columns += [(field, _get(figures, where)) for field, where in EXTRA_COLUMNS]
        fields = QgsFields()
        for name, value in columns:
            kind = (
                QVariant.Double
                if name not in _COUNTS
                else QVariant.Int
                if name in ("predicted", "reference", "matched")
                else QVariant.LongLong
            )
            fields.append(QgsField(name, kind))
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, QgsWkbTypes.NoGeometry, QgsCoordinateReferenceSystem()
        )
        if sink is not None:
            row = QgsFeature(fields)
            row.setAttributes([value for _, value in columns])
            sink.addFeature(row, QgsFeatureSink.FastInsert)
            results[self.OUTPUT] = dest_id
        if json_path:
            folder = os.path.dirname(os.path.abspath(json_path))
            os.makedirs(folder, exist_ok=True)
            with open(json_path, "w", encoding="utf-8") as fh:
                json.dump(figures, fh, indent=2, sort_keys=True)
            results[self.OUTPUT_JSON] = json_path
        feedback.setProgress(100)
        return results

    def _log(self, figures: Dict[str, Any], feedback) -> None:
        pixel, objects = figures["pixel"], figures["object"]
        pixel_f = {k: _fmt(pixel[k]) for k in ("iou", "accuracy", "precision", "recall", "f1")}
        object_f = {k: _fmt(objects[k]) for k in ("precision", "recall", "f1")}
        feedback.pushInfo(
            self.tr("Pixels ({n:,} valid): IoU {iou}, accuracy {acc}, precision {p}, recall {r}, F1 {f1}").format(
                n=pixel["valid_pixels"],
                iou=pixel_f["iou"],
                acc=pixel_f["accuracy"],
                p=pixel_f["precision"],
                r=pixel_f["recall"],
                f1=pixel_f["f1"],
            )
        )
        feedback.pushInfo(
            self.tr(
                "Objects matched one-to-one at IoU >= {t:g}: {m} of {np} predicted and {nr} "
                "reference; precision {p}, recall {r}, F1 {f1}"
            ).format(
                t=objects["iou_threshold"],
                m=objects["matched"],
                np=objects["predicted"],
                nr=objects["reference"],
                p=object_f["precision"],
                r=object_f["recall"],
                f1=object_f["f1"],
            )
        )
        shape = figures["shape"]
        feedback.pushInfo(
            self.tr(
                "Shape: median vertices {pv} predicted, {rv} reference; regular polygons {pr} "
                "predicted, {rr} reference; mean IoU of matched buildings {miou}"
            ).format(
                pv=_fmt(shape["predicted"]["median_vertices"], "g"),
                rv=_fmt(shape["reference"]["median_vertices"], "g"),
                pr=_fmt(shape["predicted"]["regular_share"], ".1%"),
                rr=_fmt(shape["reference"]["regular_share"], ".1%"),
                miou=_fmt(objects["mean_matched_iou"]),
            )
        )
        if pixel["iou"] is None or objects["f1"] is None:
            feedback.pushWarning(
                self.tr(
                    "No building in either layer on the grid: the ratios that need one have "
                    "no value (nothing measured is not a perfect score)"
                )
            )


def _fmt(value: Optional[float], spec: str = ".4f") -> str:
    """A figure, or "n/a" where nothing was measured."""
    return "n/a" if value is None else format(value, spec)


_COUNTS = {"tp", "fp", "fn", "tn", "valid_pixels", "predicted", "reference", "matched"}


def _get(figures: Dict[str, Any], where: Tuple[str, ...]) -> Any:
    """A figure of ``EvaluationResult.as_dict()`` as a plain int (counts) or float (None stays None)."""
    value: Any = figures
    for key in where:
        value = value[key]
    if value is None:
        return None
    return int(value) if where[-1] in _COUNTS else float(value)
