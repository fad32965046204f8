"""The REST service: ``python -m roof_detector serve`` (FastAPI on uvicorn).

One more front end of the same engine: detections run through
:func:`roof_detector.core.pipeline.detect_buildings` with options checked by
the parameter declarations of :mod:`roof_detector.core.params` (:mod:`.options`),
and are written by the one GeoPackage writer. Modules:

* :mod:`.options` — request JSON -> the engine's options, from the parameter declarations;
* :mod:`.jobs` — job records under the data dir (atomic files) and the one-at-a-time job runner;
* :mod:`.engine` — what one job does (detect, write GeoPackage and GeoJSON), and solar sizing;
* :mod:`.uploads` — multipart uploads streamed to the data dir with a size limit, raster check;
* :mod:`.url_rasters` — rasters by URL: the operator's allow-list, a first look, GDAL's HTTP limits;
* :mod:`.app` — the FastAPI application (routes, auth, request log, metrics).
"""

API_VERSION = "v1"
