"""The REST service: ``python -m roof_detector serve`` (FastAPI on uvicorn).

One more front end of the same engine: detections run through
:func:`roof_detector.core.pipeline.detect_buildings` with options built by
the CLI's own ``detect`` parser (:mod:`.options`), and are written by the
CLI's GeoPackage writer. Modules:

* :mod:`.options` — request JSON -> the engine's options, through the CLI's argument parsers;
* :mod:`.jobs` — job records under the data dir (atomic files) and the one-at-a-time job runner;
* :mod:`.engine` — what one job does (detect, write GeoPackage and GeoJSON), and solar sizing;
* :mod:`.uploads` — multipart uploads streamed to the data dir with a size limit, raster check;
* :mod:`.app` — the FastAPI application (routes, auth, request log, metrics).
"""

API_VERSION = "v1"
