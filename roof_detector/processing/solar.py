"""Processing algorithm ``roofdetector:rooftopsolar``: solar sizing of any polygon layer (core/solar.py)."""

from __future__ import annotations

import json
from typing import Any, Dict, List

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .common import RoofDetectorAlgorithm, engine_errors, to_shapely

_VARIANT = {"real": QVariant.Double, "integer": QVariant.Int}


class RooftopSolarAlgorithm(RoofDetectorAlgorithm):
    """Adds rooftop solar attributes to building polygons from any source."""

    INPUT = "INPUT"
    SETBACK = "SETBACK"
    USABLE_FRACTION = "USABLE_FRACTION"
    PANEL_AREA = "PANEL_AREA"
    PANEL_WP = "PANEL_WP"
    SPECIFIC_YIELD = "SPECIFIC_YIELD"
    REGULARIZE = "REGULARIZE"
    TOLERANCE = "TOLERANCE"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    REPORT_HTML = "REPORT_HTML"
    BUILDINGS = "BUILDINGS"
    TOTAL_PANELS = "TOTAL_PANELS"
    TOTAL_KWP = "TOTAL_KWP"
    TOTAL_ANNUAL_KWH = "TOTAL_ANNUAL_KWH"

    NAME = "rooftopsolar"
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
        "<b>Specific yield</b>: 0 = estimated from each building's latitude (a coarse curve, ±25 %; give a "
        "PVGIS / Global Solar Atlas value for your site when it matters).<br>"
        "<b>Regularize outlines</b> squares the outlines first (within the <b>tolerance</b>, metres); off by "
        "default, as cadastre outlines are already clean.<br><br>"
        "Input fields are kept; one whose name clashes (ignoring case) with an added field or an earlier input "
        "field is renamed src_&lt;name&gt; (or src_&lt;name&gt;_2, _3... when that is taken too). "
        "Features without a geometry are skipped. The optional <b>report folder</b> receives summary.html, "
        "buildings.csv and areas.png. Totals are returned as BUILDINGS, TOTAL_PANELS, TOTAL_KWP and "
        "TOTAL_ANNUAL_KWH."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.INPUT, self.tr("Building polygons"), [QgsProcessing.TypeVectorPolygon]))
        double = QgsProcessingParameterNumber.Double
        self.addParameter(QgsProcessingParameterNumber(
            self.SETBACK, self.tr("Roof edge setback (m)"), double, defaultValue=0.5, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.USABLE_FRACTION, self.tr("Usable fraction of the inset roof"), double, defaultValue=0.6,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.PANEL_AREA, self.tr("Panel area (m²)"), double, defaultValue=1.96, minValue=0.01))
        self.addParameter(QgsProcessingParameterNumber(
            self.PANEL_WP, self.tr("Panel power (Wp)"), double, defaultValue=400.0, minValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SPECIFIC_YIELD, self.tr("Specific yield (kWh/kWp/yr; 0: estimate from latitude)"), double,
            defaultValue=0.0, minValue=0.0, maxValue=4999.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.REGULARIZE, self.tr("Regularize outlines (right angles) first"), defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber(
            self.TOLERANCE, self.tr("Regularization tolerance (m)"), double, defaultValue=1.0, minValue=0.01))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Rooftops"), QgsProcessing.TypeVectorPolygon))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.REPORT, self.tr("Report folder (summary.html, buildings.csv, areas.png)"), optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputHtml(self.REPORT_HTML, self.tr("Solar report")))
        for key, label in ((self.BUILDINGS, "Number of buildings"), (self.TOTAL_PANELS, "Total panels"),
                           (self.TOTAL_KWP, "Total power (kWp)"), (self.TOTAL_ANNUAL_KWH, "Total energy (kWh/yr)")):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        source = self.parameterAsSource(parameters, self.INPUT, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.INPUT))
        crs = source.sourceCrs()
        if not crs.isValid():
            raise QgsProcessingException(self.tr("The polygon layer has no CRS; set one (Layer Properties > "
                                                 "Source) so areas can be measured"))
        crs_wkt = crs.toWkt()
        regularize = self.parameterAsBoolean(parameters, self.REGULARIZE, context)
        tolerance = self.parameterAsDouble(parameters, self.TOLERANCE, context)
        specific_yield = self.parameterAsDouble(parameters, self.SPECIFIC_YIELD, context)
        report_dir = self.parameterAsString(parameters, self.REPORT, context) if \
            self.optional_value(parameters, self.REPORT) else ""

        with engine_errors(feedback):
            from ..core.field_names import free_names
            from ..core.regularize import regularize_outline
            from ..core.report import build_table, totals, write_report
            from ..core.solar import SOLAR_FIELDS, SolarParams, rooftop_attributes
            from ..qgis_ui.output import to_qgs_geometry

            params = SolarParams(
                setback_m=self.parameterAsDouble(parameters, self.SETBACK, context),
                usable_fraction=self.parameterAsDouble(parameters, self.USABLE_FRACTION, context),
                panel_area_m2=self.parameterAsDouble(parameters, self.PANEL_AREA, context),
                panel_wp=self.parameterAsDouble(parameters, self.PANEL_WP, context),
                specific_yield_kwh_per_kwp=specific_yield if specific_yield > 0 else None).validate()
            if report_dir:
                from ..core.report import check_report_dir

                check_report_dir(report_dir)  # before the work
            solar_names = [name for name, _ in SOLAR_FIELDS]
            # As the CLI: a source field keeps its value under a free name (src_<name>, src_<name>_2...),
            # never dropped: QgsFields.append drops a duplicate silently, and values are written by position.
            fields = QgsFields()
            new_names = free_names(source.fields().names(), solar_names)
            for field, new_name in zip(source.fields(), new_names):
                field = QgsField(field)
                field.setName(new_name)
                fields.append(field)
            for name, kind in SOLAR_FIELDS:
                fields.append(QgsField(name, _VARIANT.get(kind, QVariant.Double)))
            if fields.count() != len(new_names) + len(solar_names):  # would shift values between columns
                raise QgsProcessingException(self.tr("Cannot name the output fields of {names}").format(
                    names=", ".join(source.fields().names())))
            wkb_type = QgsWkbTypes.flatType(source.wkbType()) if regularize else source.wkbType()
            sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, wkb_type, crs)
            if sink is None:
                raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))

            total = source.featureCount() or 1
            rows: List[Dict[str, Any]] = []
            skipped = regularized = 0
            for i, feature in enumerate(source.getFeatures()):
                if feedback.isCanceled():
                    break
                geom = to_shapely(feature.geometry())
                if geom is None:
                    skipped += 1
                    continue
                qgs_geometry = feature.geometry()
                if regularize:
                    squared = regularize_outline(geom, crs_wkt, tolerance)
                    if squared is not geom:
                        regularized += 1
                        geom = squared
                        qgs_geometry = to_qgs_geometry(geom)
                        if QgsWkbTypes.isMultiType(wkb_type):
                            qgs_geometry.convertToMultiType()
                attrs = rooftop_attributes(geom, crs_wkt, params)
                rows.append({"id": feature.id(), **attrs})
                out = QgsFeature(fields)
                out.setGeometry(qgs_geometry)
                out.setAttributes(list(feature.attributes()) + [attrs[name] for name in solar_names])
                if not sink.addFeature(out, QgsFeatureSink.FastInsert):
                    raise QgsProcessingException(self.tr("Could not write a feature to the output"))
                feedback.setProgress(100.0 * (i + 1) / total)

            summed = totals(build_table(rows))
            results: Dict[str, Any] = {self.OUTPUT: dest_id, self.BUILDINGS: summed["buildings"],
                                       self.TOTAL_PANELS: summed["panels"], self.TOTAL_KWP: summed["kwp"],
                                       self.TOTAL_ANNUAL_KWH: summed["annual_kwh"]}
            feedback.pushInfo(self.tr(
                "{n} buildings: footprint {area:,.1f} m², usable {usable:,.1f} m², {panels:,} panels, "
                "{kwp:,.1f} kWp, {kwh:,.0f} kWh/yr").format(
                n=summed["buildings"], area=summed["area_m2"], usable=summed["usable_area_m2"],
                panels=summed["panels"], kwp=summed["kwp"], kwh=summed["annual_kwh"]))
            if skipped:
                feedback.pushWarning(self.tr("Skipped {n} features without a geometry").format(n=skipped))
            if regularize:
                feedback.pushInfo(self.tr("Regularized {n} of {total} outlines (the others kept as they were)")
                                  .format(n=regularized, total=len(rows)))
            if report_dir:
                paths = write_report(rows, report_dir, params=params.as_dict(),
                                     source=source.sourceName())
                feedback.pushInfo(self.tr("Report: {path}").format(path=paths["html"]))
                results[self.REPORT] = report_dir
                results[self.REPORT_HTML] = paths["html"]
            feedback.pushDebugInfo(json.dumps(params.as_dict()))
        return results
