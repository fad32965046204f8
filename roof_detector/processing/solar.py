"""Processing algorithm ``roofdetector:rooftopsolar``: solar sizing of any polygon layer (core/solar.py)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .common import RoofDetectorAlgorithm, engine_errors
from .parameters import add, help_lines, values

_VARIANT = {"real": QVariant.Double, "integer": QVariant.Int, "string": QVariant.String}


class RooftopSolarAlgorithm(RoofDetectorAlgorithm):
    """Adds rooftop solar attributes to building polygons from any source."""

    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    REPORT_HTML = "REPORT_HTML"
    BUILDINGS = "BUILDINGS"
    TOTAL_PANELS = "TOTAL_PANELS"
    TOTAL_KWP = "TOTAL_KWP"
    TOTAL_ANNUAL_KWH = "TOTAL_ANNUAL_KWH"

    NAME = "rooftopsolar"
    PURPOSE = "report"
    DISPLAY_NAME = "Rooftop solar potential"
    GROUP = "Rooftop solar"
    GROUP_ID = "solar"
    HELP = (
        "Sizes the rooftops of building polygons for solar panels: a detection result, a cadastre, "
        "OpenStreetMap... (the same sizing as <i>python -m roof_detector solar</i>). Measures are true "
        "metres whatever the layer's CRS.<br><br>"
        "Added fields: <i>area_m2</i>, <i>perimeter_m</i>, <i>usable_area_m2</i> = area of the roof inset by "
        "the <b>setback</b> × the <b>usable fraction</b>, <i>panels</i> = ⌊usable area / <b>panel area</b>⌋, "
        "<i>kwp</i> = panels × <b>panel power</b> / 1000, <i>specific_yield</i> (kWh/kWp/yr), "
        "<i>annual_kwh</i> = kwp × specific yield, <i>orientation_deg</i> (long axis, degrees clockwise from "
        "north, 0-180).<br>"
        + help_lines("solar")
        + "The latitude estimate is a coarse curve (±25 %); give a PVGIS / Global Solar Atlas value for your site "
        "when it matters.<br>"
        + help_lines("outlines")
        + "Regularisation is off by default here, as cadastre outlines are already clean.<br><br>"
        "Input fields are kept; one whose name clashes (ignoring case) with an added field or an earlier input "
        "field is renamed src_&lt;name&gt; (or src_&lt;name&gt;_2, _3... when that is taken too). "
        "Features without a geometry are skipped. The optional <b>report folder</b> receives summary.html, "
        "buildings.csv and areas.png. Totals are returned as BUILDINGS, TOTAL_PANELS, TOTAL_KWP and "
        "TOTAL_ANNUAL_KWH."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.INPUT, self.tr("Building polygons"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        add(self, "solar")
        add(self, "outlines", defaults={"regularize": False})
        self.addParameter(
            QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Rooftops"), QgsProcessing.TypeVectorPolygon)
        )
        self.addParameter(
            QgsProcessingParameterFolderDestination(
                self.REPORT,
                self.tr("Report folder (summary.html, buildings.csv, areas.png)"),
                optional=True,
                createByDefault=False,
            )
        )
        self.addOutput(QgsProcessingOutputHtml(self.REPORT_HTML, self.tr("Solar report")))
        for key, label in (
            (self.BUILDINGS, "Number of buildings"),
            (self.TOTAL_PANELS, "Total panels"),
            (self.TOTAL_KWP, "Total power (kWp)"),
            (self.TOTAL_ANNUAL_KWH, "Total energy (kWh/yr)"),
        ):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        self.require_dependencies()
        source = self.parameterAsSource(parameters, self.INPUT, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.INPUT))
        crs = source.sourceCrs()
        if not crs.isValid():
            raise QgsProcessingException(
                self.tr("The polygon layer has no CRS; set one (Layer Properties > Source) so areas can be measured")
            )
        report_dir = (
            self.parameterAsString(parameters, self.REPORT, context)
            if self.optional_value(parameters, self.REPORT)
            else ""
        )

        with engine_errors(feedback):
            from ..core.footprints import measure_polygons
            from ..core.report import build_table, totals
            from ..core.solar import SolarParams
            from ..qgis_adapter.output import to_shapely

            params = SolarParams(**values(self, parameters, context, "solar")).validate()
            outlines = values(self, parameters, context, "outlines")
            regularize = outlines["regularize"]
            if report_dir:
                from ..core.report import check_report_dir

                check_report_dir(report_dir)  # before the work
            sink, dest_id, fields, wkb_type = self._sink(parameters, context, source, regularize)
            pairs = [(f, to_shapely(f.geometry())) for f in source.getFeatures()]
            features = [f for f, g in pairs if g is not None]
            originals = [g for _, g in pairs if g is not None]
            feedback.setProgress(10)
            # All polygons at once: the batched sizing of the CLI and of detection.
            geoms, sized = measure_polygons(
                originals, crs.toWkt(), params, regularize, outlines["regularize_tolerance_m"]
            )
            feedback.setProgress(60)
            rows, regularized = self._write(
                sink, fields, wkb_type, features, originals, geoms, sized, regularize, feedback
            )
            summed = totals(build_table(rows))
            self._report(summed, len(pairs) - len(features), regularized if regularize else None, len(rows), feedback)
            results: Dict[str, Any] = {
                self.OUTPUT: dest_id,
                self.BUILDINGS: summed["buildings"],
                self.TOTAL_PANELS: summed["panels"],
                self.TOTAL_KWP: summed["kwp"],
                self.TOTAL_ANNUAL_KWH: summed["annual_kwh"],
            }
            if report_dir:
                results.update(self._write_report(rows, report_dir, params, source.sourceName(), feedback))
            feedback.pushDebugInfo(json.dumps(params.as_dict()))
        return results

    def _sink(self, parameters, context, source, regularize: bool) -> Tuple[Any, str, QgsFields, int]:
        """The output sink with the input's fields and the solar ones: (sink, id, fields, geometry type)."""
        fields = _output_fields(source.fields(), regularize)
        if fields is None:  # QgsFields dropped a duplicate: values would shift between columns
            raise QgsProcessingException(
                self.tr("Cannot name the output fields of {names}").format(names=", ".join(source.fields().names()))
            )
        wkb_type = QgsWkbTypes.flatType(source.wkbType()) if regularize else source.wkbType()
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, wkb_type, source.sourceCrs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        return sink, dest_id, fields, wkb_type

    def _report(
        self, summed: Dict[str, Any], skipped: int, regularized: Optional[int], total: int, feedback: Any
    ) -> None:
        """The totals in the log; features skipped; outlines regularised (``regularized`` None: not asked)."""
        feedback.pushInfo(
            self.tr(
                "{n} buildings: footprint {area:,.1f} m², usable {usable:,.1f} m², {panels:,} panels, "
                "{kwp:,.1f} kWp, {kwh:,.0f} kWh/yr"
            ).format(
                n=summed["buildings"],
                area=summed["area_m2"],
                usable=summed["usable_area_m2"],
                panels=summed["panels"],
                kwp=summed["kwp"],
                kwh=summed["annual_kwh"],
            )
        )
        if skipped:
            feedback.pushWarning(self.tr("Skipped {n} features without a geometry").format(n=skipped))
        if regularized is not None:
            feedback.pushInfo(
                self.tr("Regularized {n} of {total} outlines (the others kept as they were)").format(
                    n=regularized, total=total
                )
            )

    def _write_report(self, rows, report_dir: str, params: Any, source_name: str, feedback: Any) -> Dict[str, str]:
        """Write the Rooftop Report into ``report_dir``; the REPORT and REPORT_HTML outputs."""
        from ..core.report import write_report

        paths = write_report(rows, report_dir, params=params.as_dict(), source=source_name)
        feedback.pushInfo(self.tr("Report: {path}").format(path=paths["html"]))
        return {self.REPORT: report_dir, self.REPORT_HTML: paths["html"]}

    def _write(
        self,
        sink: Any,
        fields: QgsFields,
        wkb_type: int,
        features: List[QgsFeature],
        originals: List[Any],
        geoms: Any,
        sized: List[Dict[str, Any]],
        regularize: bool,
        feedback: Any,
    ) -> Tuple[List[Dict[str, Any]], int]:
        """Add each input feature with its solar fields (and squared outline) to ``sink``; (rows, regularised).
        Values rounded as every output stores them (:func:`~..core.output_fields.written_value`)."""
        from ..core.footprints import sized_fields
        from ..core.output_fields import written_value
        from ..qgis_adapter.output import to_qgs_geometry

        written = sized_fields(regularize)
        rows: List[Dict[str, Any]] = []
        regularized = 0
        for i, (feature, original, geom, attrs) in enumerate(zip(features, originals, geoms, sized)):
            if feedback.isCanceled():
                break
            qgs_geometry = feature.geometry()
            if geom is not original:
                regularized += 1
                qgs_geometry = to_qgs_geometry(geom)
                if QgsWkbTypes.isMultiType(wkb_type):
                    qgs_geometry.convertToMultiType()
            rows.append({"id": feature.id(), **attrs})
            out = QgsFeature(fields)
            out.setGeometry(qgs_geometry)
            out.setAttributes(
                list(feature.attributes()) + [written_value(name, kind, attrs[name]) for name, kind in written]
            )
            if not sink.addFeature(out, QgsFeatureSink.FastInsert):
                raise QgsProcessingException(self.tr("Could not write a feature to the output"))
            feedback.setProgress(60 + 40.0 * (i + 1) / max(1, len(features)))
        return rows, regularized


def _output_fields(source_fields: QgsFields, regularize: bool) -> Optional[QgsFields]:
    """The input's fields and the solar fields, and ``shape`` when outlines are regularised (None if
    QgsFields would not take them all).

    As the CLI: a source field keeps its value under a free name (src_<name>, src_<name>_2...,
    ignoring case), never dropped: QgsFields.append drops a duplicate silently, and values are
    written by position.
    """
    from ..core.field_names import free_names
    from ..core.footprints import sized_fields

    fields = QgsFields()
    written = sized_fields(regularize)
    written_names = [name for name, _ in written]
    new_names = free_names(source_fields.names(), written_names)
    for field, new_name in zip(source_fields, new_names):
        field = QgsField(field)
        field.setName(new_name)
        fields.append(field)
    for name, kind in written:
        fields.append(QgsField(name, _VARIANT.get(kind, QVariant.Double)))
    return fields if fields.count() == len(new_names) + len(written_names) else None
