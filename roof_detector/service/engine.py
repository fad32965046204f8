"""What the service does with the engine: one detection job, and solar sizing of posted polygons.

The same functions as the CLI: ``detect_buildings`` with options from the
parameter declarations (:mod:`.options`), the one GeoPackage writer with the
result's provenance (same fields and metadata as ``detect -o``), ``cli.solar.size_layer`` for
``POST /v1/solar``. GeoJSON is translated from that GeoPackage by GDAL with
RFC 7946 on (EPSG:4326, right-hand winding), so both formats hold the same
features and fields.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable, Dict, Optional

from ..core.errors import OutputError, RoofDetectorError
from .jobs import Job
from .options import aoi_wkt, detect_options
from .uploads import open_checked

RESULT_GPKG = "buildings.gpkg"
RESULT_GEOJSON = "buildings.geojson"
RESULT_LAYER = "buildings"


def gpkg_to_geojson(gpkg_path: str, geojson_path: str, layer: Optional[str] = None) -> None:
    """Translate a GeoPackage layer to an RFC 7946 GeoJSON file (EPSG:4326), atomically."""
    from ..core.osgeo_exc import gdal

    tmp = f"{geojson_path}.{uuid.uuid4().hex}.tmp"
    try:
        ds = gdal.VectorTranslate(
            tmp,
            gpkg_path,
            format="GeoJSON",
            layers=[layer] if layer else None,
            layerCreationOptions=["RFC7946=YES", "WRITE_NAME=NO"],
        )
        if ds is None:
            raise OutputError(f"Could not write GeoJSON from {os.path.basename(gpkg_path)}")
        ds = None
        os.replace(tmp, geojson_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def raster_crs_wkt(path: str) -> str:
    """The CRS of a raster as WKT (the engine's own reader does the checks)."""
    with open_checked(path) as source:
        return source.crs_wkt


def raster_footprint(path: str):
    """(CRS as WKT, the raster's extent as a shapely polygon in that CRS)."""
    import shapely

    with open_checked(path) as source:
        t, w, h = source.transform, source.width, source.height
        corners = [t * (0, 0), t * (w, 0), t * (w, h), t * (0, h)]
        return source.crs_wkt, shapely.Polygon(corners)


def run_detection(
    job: Job,
    job_dir: str,
    model: Any,
    batch_size: Optional[int],
    progress: Callable[[float, str], None],
    is_cancelled: Callable[[], bool],
) -> Dict[str, Any]:
    """Detect buildings for ``job`` and write its results; return the fields to record on the job."""
    from ..core.gpkg_writer import write_buildings
    from ..core.pipeline import detect_buildings

    options = detect_options(job.options)
    options.batch_size = batch_size
    try:
        if job.aoi is not None:
            options.aoi_wkt = aoi_wkt(job.aoi, raster_crs_wkt(job.raster_path))
        with open_checked(job.raster_path) as source:  # a file, or an allowed URL read by /vsicurl/
            result = detect_buildings(source, options, progress=progress, is_cancelled=is_cancelled, model=model)
    except RoofDetectorError as exc:  # e.g. a URL gone since the check: name what the client sent
        if job.raster_path and job.raster_path in str(exc):
            exc.args = (str(exc).replace(job.raster_path, job.input_name),)
        raise
    result.raster_path = job.input_name  # the metadata names what the client sent, not a server path
    gpkg = os.path.join(job_dir, RESULT_GPKG)
    write_buildings(result.buildings, gpkg, result.crs_wkt, layer=RESULT_LAYER, metadata=result.provenance(options))
    gpkg_to_geojson(gpkg, os.path.join(job_dir, RESULT_GEOJSON), RESULT_LAYER)
    return {
        "buildings": len(result.buildings),
        "total_area_m2": round(result.total_area_m2, 3),
        "warnings": list(result.warnings),
        "timings_s": dict(result.stats.get("timings_s", {})),
        "message": f"{len(result.buildings)} buildings",
    }


def size_geojson(collection: Any, options: Optional[Dict[str, Any]], work_dir: str) -> Dict[str, Any]:
    """``POST /v1/solar``: a GeoJSON FeatureCollection (EPSG:4326) with the solar fields added.

    Read, sized and written by the same functions as ``python -m roof_detector
    solar``; the answer is that GeoPackage translated back to RFC 7946 GeoJSON.
    """
    from ..cli.solar import require_polygons, size_layer
    from ..core.gpkg_writer import write_buildings
    from ..core.vector_io import read_polygons
    from .options import solar_options

    params, regularize, tolerance = solar_options(options)
    stem = os.path.join(work_dir, f"solar-{uuid.uuid4().hex}")
    paths = [stem + ".in.geojson", stem + ".gpkg", stem + ".out.geojson"]
    try:
        with open(paths[0], "w", encoding="utf-8") as f:
            json.dump(collection, f)
        try:
            layer = read_polygons(paths[0], with_attributes=True, require_crs=True)
            require_polygons(layer, paths[0])
            buildings, _, _ = size_layer(layer, params, regularize, tolerance)
        except RoofDetectorError as exc:  # name the posted document, not a server path
            raise type(exc)(str(exc).replace(paths[0], "the posted GeoJSON")) from None
        write_buildings(
            buildings,
            paths[1],
            layer.crs_wkt,
            layer="rooftops",
            metadata={"solar_params": json.dumps(params.as_dict())},
        )
        gpkg_to_geojson(paths[1], paths[2], "rooftops")
        with open(paths[2], encoding="utf-8") as f:
            return json.load(f)
    finally:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
