"""Processing algorithm ``roofdetector:detectbuildingsmany``: *Detect buildings in many rasters*.

The same :func:`~roof_detector.core.detect_many.detect_many` as
``python -m roof_detector detect-many``, on local Dask workers.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any, Dict

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
)

from ..core.params import SOLAR
from .common import RoofDetectorAlgorithm, engine_errors
from .parameters import add, detect_options, help_lines, values


class DetectBuildingsManyAlgorithm(RoofDetectorAlgorithm):
    """Building footprints of many orthophoto tiles, seamless across their borders, into one GeoPackage."""

    INPUTS = "INPUTS"
    MORE_INPUTS = "MORE_INPUTS"
    MODEL = "MODEL"
    OUTPUT = "OUTPUT"
    BUILDINGS = "BUILDINGS"
    TOTAL_AREA = "TOTAL_AREA_M2"

    NAME = "detectbuildingsmany"
    DISPLAY_NAME = "Detect buildings in many rasters"
    GROUP = "Building detection"
    GROUP_ID = "detection"
    HELP = (
        "Finds building footprints in many orthophoto tiles at once, the same engine as "
        "<i>python -m roof_detector detect-many</i>, run on local Dask workers (one: threads of QGIS's own process; more: worker processes).<br><br>"
        "<b>Orthophoto tiles</b>: raster files or layers (files on disk, any GDAL format, one CRS).<br>"
        "<b>More inputs</b>: optional, separated by <i>;</i>: folders (searched for .tif/.jp2/.img/.vrt), glob "
        "patterns, a VRT (its rasters), a text file of paths or URLs (/vsicurl/, /vsis3/, https://, s3://).<br>"
        "<b>Model file</b>: a Roof Detector .pt model; empty = the bundled model.<br>"
        + help_lines("many")
        + "A building cut by a tile border comes out once and whole: each tile keeps the buildings whose "
        "representative point lies in it.<br>"
        + help_lines("detect")
        + help_lines("outlines")
        + help_lines("solar")
        + "<br>Output: one GeoPackage layer <i>buildings</i> (replaced if the file has one; other layers are kept) "
        "with <i>area_m2</i>, <i>perimeter_m</i>, <i>confidence</i> and the solar fields, as <i>Detect "
        "buildings</i>. An interrupted run goes on where it stopped when run again with the same inputs and "
        "output (finished tiles are kept beside the output in OUTPUT.parts until the end)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.INPUTS, self.tr("Orthophoto tiles"), QgsProcessing.TypeRaster, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.MORE_INPUTS,
                self.tr("More inputs: folders, patterns, VRT, list files, URLs (separated by ;)"),
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, self.tr("Model file (empty: bundled model)"), extension="pt", optional=True
            )
        )
        add(self, "many", advanced=("threads_per_worker", "group_tiles", "block_px"))
        add(self, "detect", advanced=("batch_size",))
        add(self, "outlines")
        add(self, "solar", advanced=tuple(SOLAR))
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Buildings (GeoPackage)"), "GeoPackage (*.gpkg)")
        )
        self.addOutput(QgsProcessingOutputNumber(self.BUILDINGS, self.tr("Number of buildings")))
        self.addOutput(QgsProcessingOutputNumber(self.TOTAL_AREA, self.tr("Total building area (m²)")))

    def processAlgorithm(self, parameters, context, feedback) -> Dict[str, Any]:  # noqa: N802
        inputs = [layer.source().split("|")[0] for layer in self.parameterAsLayerList(parameters, self.INPUTS, context)]
        more = self.parameterAsString(parameters, self.MORE_INPUTS, context) or ""
        inputs += [s.strip() for s in more.split(";") if s.strip()]
        if not inputs:
            raise QgsProcessingException(self.tr("No input: choose orthophoto tiles or give folders/files"))
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        model = self.parameterAsFile(parameters, self.MODEL, context) or None

        with engine_errors(feedback):
            from ..core.detect_many import detect_many

            options = detect_options(self, parameters, context, model)
            _python_for_workers()
            progress = self._progress_reporter(feedback)
            result = detect_many(
                inputs,
                output,
                options,
                overwrite=True,
                **values(self, parameters, context, "many"),
                progress=progress,
                is_cancelled=feedback.isCanceled,
            )
        for warning in result.warnings:
            feedback.reportError(warning, False)
        feedback.pushInfo(
            self.tr("{n} buildings, {area:,.1f} m² in {tiles} jobs ({km2:.3f} km²), {s:.1f} s").format(
                n=result.buildings,
                area=result.building_area_m2,
                tiles=result.jobs,
                km2=result.area_km2,
                s=result.seconds,
            )
        )
        context.addLayerToLoadOnCompletion(
            f"{output}|layername={result.layer}",
            context.LayerDetails(self.tr("Buildings"), context.project(), self.OUTPUT),
        )
        return {self.OUTPUT: output, self.BUILDINGS: result.buildings, self.TOTAL_AREA: result.building_area_m2}

    def _progress_reporter(self, feedback):
        """The engine's progress callback: tiles, km² and buildings so far (and the Dask dashboard once)."""

        def progress(state) -> None:
            if state.dashboard and state.done == state.skipped:
                feedback.pushInfo(self.tr("Dask dashboard: {url}").format(url=state.dashboard))
            feedback.setProgress(100.0 * state.done / max(1, state.total))
            feedback.setProgressText(
                self.tr("{done}/{total} jobs, {km2:.3f} km², {n} buildings").format(
                    done=state.done, total=state.total, km2=state.area_km2, n=state.buildings
                )
            )

        return progress


def _python_for_workers() -> None:
    """Worker processes are started from this Python interpreter: not from the QGIS binary that runs
    us, nor from the first ``python3`` on PATH, which embedded Python reports as ``sys.executable``."""
    from ..qgis_adapter.deps import qgis_python_executable

    exe = qgis_python_executable()
    if exe != sys.executable:
        multiprocessing.set_executable(exe)
