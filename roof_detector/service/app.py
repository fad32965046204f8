"""The FastAPI application of ``python -m roof_detector serve`` (routes, auth, request log, metrics).

Routes (all JSON, OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):
``POST /v1/detections``, ``GET /v1/detections``, ``GET|DELETE /v1/detections/{id}``,
``GET /v1/detections/{id}/buildings?format=geojson|gpkg``, ``POST /v1/solar``,
``GET /v1/models``, ``GET /health`` (no token), ``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__
from . import API_VERSION
from .engine import RESULT_GEOJSON, RESULT_GPKG, run_detection, size_geojson
from .jobs import FINAL_STATES, JobRunner, JobStore, QueueFull
from .options import OptionsError, aoi_wkt, detect_option_names, detect_options, solar_option_names
from .uploads import UploadError, check_raster, receive_multipart
from .url_rasters import UrlPrefix, is_url, vsicurl_path

log = logging.getLogger("roof_detector.service")


@dataclass
class ServiceConfig:
    """How the service runs (the ``serve`` command's options)."""

    data_dir: str
    model: Any  # the engine's LoadedModel, loaded once
    model_path: str = ""
    batch_size: Optional[int] = None
    max_upload_mb: float = 512.0
    max_queued: int = 16
    tokens: Optional[List[str]] = None  # None: no token needed
    url_prefixes: List[UrlPrefix] = field(default_factory=list)  # empty: no raster is read by URL
    url_timeout_s: float = 30.0


def read_token_file(path: str) -> List[str]:
    """The bearer tokens of ``path``: one per line, blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as f:
        tokens = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not tokens:
        raise ValueError(f"{path} holds no token (one per line)")
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ValueError(f"{path}: tokens must be at least 16 characters (e.g. `openssl rand -hex 24`)")
    return tokens


def owner_of(token: str) -> str:
    """The owner key stored with a job: a hash, so the data dir holds no token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24] if token else ""


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class RequestLog:
    """ASGI middleware: one log line per request (method, path, status, milliseconds) and counters."""

    def __init__(self, app, counts: Dict[tuple, int]):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d %.0f ms", client[0], scope["method"], scope["path"], status[0], ms)
            key = (scope["method"], _route_label(scope["path"]), status[0])
            self.counts[key] = self.counts.get(key, 0) + 1


def _route_label(path: str) -> str:
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == API_VERSION and parts[2] == "detections":
        parts[3] = "{id}"
    return "/".join(parts)


_DETECTION_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["raster"],
                "properties": {
                    "raster": {"type": "string", "format": "binary", "description": "the orthophoto (GeoTIFF...)"},
                    "options": {"type": "string", "description": "JSON object of detect options"},
                    "aoi": {"type": "string", "description": "area of interest, GeoJSON in EPSG:4326"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["raster"],
                "properties": {
                    "raster": {
                        "type": "string",
                        "description": "path of a raster under the server's --data-dir, or an http(s) URL "
                        "under a prefix the operator allows (serve --allow-url-prefix)",
                    },
                    "options": {"type": "object"},
                    "aoi": {"type": "object"},
                },
            }
        },
    },
}


def create_app(config: ServiceConfig) -> FastAPI:
    """The service for ``config`` (the job runner starts with it and stops at shutdown)."""
    svc = _Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        svc.runner.stop()

    app = FastAPI(
        title="Roof Detector",
        version=__version__,
        lifespan=lifespan,
        description="Building footprints and rooftop solar sizing from orthophotos. Detection options "
        f"(key: the `detect` command's long option): {', '.join(detect_option_names())}.",
        # With tokens every call but /health needs one, the API description too: FastAPI's own
        # /openapi.json, /docs and /redoc take no dependency, so they are replaced (below) or off.
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} if svc.tokens else {}),
    )
    app.state.store, app.state.runner = svc.store, svc.runner
    if svc.tokens:

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_with_token(owner: str = Depends(svc.caller)) -> Dict[str, Any]:
            return app.openapi()

    # In this order: the OpenAPI document lists the routes as they are added.
    _add_model_routes(app, svc)
    _add_create_detection(app, svc)
    _add_detection_routes(app, svc)
    _add_solar_and_metrics(app, svc)
    app.add_middleware(RequestLog, counts=svc.request_counts)
    return app


class _Service:
    """What the routes share: the configuration, the job store and runner, the tokens, the request counts."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.store = store = JobStore(config.data_dir)
        self.model = model = config.model
        self.runner = JobRunner(
            store,
            lambda job, progress, cancelled: run_detection(
                job, store.job_dir(job.id), model, config.batch_size, progress, cancelled
            ),
            config.max_queued,
        )
        self.max_bytes = int(config.max_upload_mb * 2**20)
        self.tokens = list(config.tokens or [])
        self.request_counts: Dict[tuple, int] = {}

    async def caller(self, request: Request) -> str:
        """The caller's owner key; 401 without a valid token when tokens are configured."""
        if not self.tokens:
            return ""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), t.encode()) for t in self.tokens):
            raise HTTPException(
                401,
                "Missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return owner_of(token)

    def own_job(self, job_id: str, owner: str):
        job = self.store.get(job_id, owner)
        if job is None:
            raise HTTPException(404, f"No detection {job_id!r}")
        return job

    async def receive_input(self, request: Request) -> Tuple[Any, Any, str, str, Any]:
        """(options, aoi, input name, raster path, upload or None) of a detection request."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > self.max_bytes + (1 << 20):
                raise UploadError(
                    413,
                    f"The request is larger than this server's limit of "
                    f"{self.config.max_upload_mb:g} MiB (--max-upload-mb)",
                )
            upload = await receive_multipart(request.stream(), content_type, self.store.uploads_dir, self.max_bytes)
            try:
                options = _json_field(upload.fields.get("options"), "options")
                aoi = _json_field(upload.fields.get("aoi"), "aoi")
            except BaseException:
                upload.discard()  # the caller never holds it: nothing of a refused request stays
                raise
            return options, aoi, upload.filename, upload.path, upload
        if content_type.startswith("application/json"):
            body = await _json_body(request, 4 << 20)
            input_name = str(body.get("raster") or "")
            # off the event loop: a URL is asked for its first byte
            raster_path = await run_in_threadpool(_named_raster, self.store, self.config, input_name)
            return body.get("options"), body.get("aoi"), input_name, raster_path, None
        raise UploadError(
            415,
            "Send the raster as multipart/form-data (field 'raster') or a JSON body "
            '{"raster": "path under the data dir, or an allowed URL"}',
        )


def _add_model_routes(app: FastAPI, svc: _Service) -> None:
    model, runner = svc.model, svc.runner

    # Status calls are cheap (a dict lookup): answered on the event loop itself, no thread hop.
    @app.get("/health")
    async def health() -> Dict[str, Any]:
        """Liveness: model, device, queue; needs no token."""
        return {
            "status": "ok",
            "version": __version__,
            "api": API_VERSION,
            "model_loaded": model is not None,
            "model": f"{model.metadata.get('name', '?')} {model.metadata.get('version', '')}".strip(),
            "device": str(model.device),
            "queue_length": runner.queue_length,
            "running": runner.running is not None,
            "max_queued": runner.max_queued,
        }

    @app.get(f"/{API_VERSION}/models")
    def models(owner: str = Depends(svc.caller)) -> Dict[str, Any]:
        """The model this server detects with."""
        meta = model.metadata
        keys = ("name", "version", "gsd_m", "tile_size_px", "overlap_px", "threshold", "bands")
        return {
            "models": [
                {
                    **{k: meta.get(k) for k in keys},
                    "file": os.path.basename(svc.config.model_path),
                    "device": str(model.device),
                    "default": True,
                }
            ]
        }


def _add_create_detection(app: FastAPI, svc: _Service) -> None:
    store, runner = svc.store, svc.runner

    @app.post(
        f"/{API_VERSION}/detections",
        status_code=202,
        openapi_extra={"requestBody": _DETECTION_BODY},
        responses={202: {"description": "queued; Location names the job"}, 413: {}, 422: {}, 429: {}},
    )
    async def create_detection(request: Request, owner: str = Depends(svc.caller)):
        """Queue a detection of an uploaded raster (multipart), or of a raster under the data dir or at an
        allowed URL (JSON)."""
        try:
            runner.check_room()
        except QueueFull as exc:
            return _error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
        upload = None
        try:
            options, aoi, input_name, raster_path, upload = await svc.receive_input(request)
            # Off the event loop (GDAL reads, fsync), so status calls are answered meanwhile.
            self_contained = upload is not None or raster_path.startswith("/vsicurl/")
            await run_in_threadpool(_check_input, raster_path, input_name, options, aoi, self_contained)
            job = await run_in_threadpool(
                store.create,
                owner,
                input_name,
                options or {},
                aoi,
                upload.path if upload else None,
                None if upload else raster_path,
            )
        except (UploadError, OptionsError) as exc:
            if upload is not None:
                upload.discard()
            status = exc.status if isinstance(exc, UploadError) else 422
            return _error(status, str(exc))
        except BaseException:
            if upload is not None:
                upload.discard()
            raise
        try:
            runner.submit(job)
        except QueueFull as exc:
            store.delete(job.id)
            return _error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
        location = f"/{API_VERSION}/detections/{job.id}"
        return JSONResponse(job.public(), status_code=202, headers={"Location": location})


def _add_detection_routes(app: FastAPI, svc: _Service) -> None:
    store, runner, caller, own_job = svc.store, svc.runner, svc.caller, svc.own_job

    @app.get(f"/{API_VERSION}/detections")
    async def list_detections(owner: str = Depends(caller)) -> Dict[str, Any]:
        """The caller's detections (another token's are never listed)."""
        return {"detections": [j.public() for j in store.list(owner)]}

    @app.get(f"/{API_VERSION}/detections/{{job_id}}")
    async def get_detection(job_id: str, owner: str = Depends(caller)) -> Dict[str, Any]:
        """State (queued/running/done/failed/cancelled), progress 0-1, tiles, timings, error."""
        return own_job(job_id, owner).public()

    @app.get(f"/{API_VERSION}/detections/{{job_id}}/buildings")
    def get_buildings(
        job_id: str,
        format: str = Query("geojson", pattern="^(geojson|gpkg)$"),  # noqa: A002 - the API's name
        owner: str = Depends(caller),
    ):
        """The buildings: GeoJSON (EPSG:4326, RFC 7946) or GeoPackage (the raster's CRS), fields as `detect`."""
        job = own_job(job_id, owner)
        if job.state != "done":
            return _error(
                409,
                f"Detection {job_id} is {job.state}; buildings exist only once it is done"
                + (f" ({job.error})" if job.error else ""),
            )
        if format == "gpkg":
            return FileResponse(
                os.path.join(store.job_dir(job.id), RESULT_GPKG),
                media_type="application/geopackage+sqlite3",
                filename=f"buildings-{job.id}.gpkg",
            )
        return FileResponse(os.path.join(store.job_dir(job.id), RESULT_GEOJSON), media_type="application/geo+json")

    @app.delete(f"/{API_VERSION}/detections/{{job_id}}", responses={202: {}, 204: {}})
    def delete_detection(job_id: str, owner: str = Depends(caller)):
        """Cancel a queued or running detection (202), or delete a finished one and its files (204)."""
        job = own_job(job_id, owner)
        if job.state in FINAL_STATES:
            store.delete(job.id)
            return Response(status_code=204)
        runner.cancel(job)
        return JSONResponse(job.public(), status_code=202)


def _add_solar_and_metrics(app: FastAPI, svc: _Service) -> None:
    store, runner = svc.store, svc.runner

    @app.post(
        f"/{API_VERSION}/solar",
        description=(
            "GeoJSON polygons in (EPSG:4326), the same polygons with the solar fields out (synchronous). Body: a "
            'FeatureCollection, or {"buildings": FeatureCollection, "options": {...}} with the `solar` command\'s '
            "options: " + ", ".join(solar_option_names())
        ),
    )
    async def solar(request: Request, owner: str = Depends(svc.caller)):
        """Solar sizing of posted polygons (see the route's description)."""
        body = await _json_body(request, svc.max_bytes)
        collection, options = (body.get("buildings"), body.get("options")) if "buildings" in body else (body, None)
        if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
            return _error(422, 'The body must be a GeoJSON FeatureCollection (or {"buildings": ..., "options": ...})')
        try:
            return await run_in_threadpool(size_geojson, collection, options, store.uploads_dir)
        except OptionsError as exc:
            return _error(422, str(exc))
        except Exception as exc:  # noqa: BLE001 - LabelError and friends: the posted data is wrong
            from ..core.errors import RoofDetectorError

            if isinstance(exc, RoofDetectorError):
                return _error(422, str(exc))
            raise

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(owner: str = Depends(svc.caller)) -> str:
        """Prometheus text format: requests, jobs by state, queue length."""
        lines = ["# TYPE roof_detector_requests_total counter"]
        for (method, path, status), n in sorted(svc.request_counts.items()):
            lines.append(f'roof_detector_requests_total{{method="{method}",path="{path}",status="{status}"}} {n}')
        lines.append("# TYPE roof_detector_jobs gauge")
        for state, n in sorted(store.counts().items()):
            lines.append(f'roof_detector_jobs{{state="{state}"}} {n}')
        lines += [
            "# TYPE roof_detector_queue_length gauge",
            f"roof_detector_queue_length {runner.queue_length}",
            "# TYPE roof_detector_job_running gauge",
            f"roof_detector_job_running {int(runner.running is not None)}",
        ]
        return "\n".join(lines) + "\n"


def _check_input(raster_path: str, input_name: str, options: Any, aoi: Any, self_contained: bool) -> None:
    detect_options(options)  # refuse bad options now, not after the queue
    check_raster(raster_path, input_name, self_contained)
    if aoi is not None:
        import shapely

        from .engine import raster_footprint

        crs_wkt, footprint = raster_footprint(raster_path)
        if not shapely.from_wkt(aoi_wkt(aoi, crs_wkt)).intersects(footprint):
            raise OptionsError(f"the area of interest (lon/lat) does not overlap {input_name}; draw it over the raster")


def _json_field(text: Optional[str], name: str) -> Any:
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OptionsError(f"form field '{name}' is not JSON ({exc})") from None


async def _json_body(request: Request, limit: int) -> Dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"The JSON body is larger than {limit / 2**20:g} MiB")
    try:
        data = json.loads(bytes(body))
    except ValueError as exc:
        raise HTTPException(422, f"The body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HTTPException(422, "The body must be a JSON object")
    return data


def _named_raster(store: JobStore, config: ServiceConfig, name: str) -> str:
    """What the engine reads for a JSON ``raster``: an allowed URL's /vsicurl/ path, or a data-dir file."""
    if is_url(name):
        return vsicurl_path(name, config.url_prefixes, int(config.max_upload_mb * 2**20), config.url_timeout_s)
    return _data_dir_path(store, name)


def _data_dir_path(store: JobStore, name: str) -> str:
    """The real path of a raster named relative to the data dir; 403 when it leads outside it."""
    if not name:
        raise UploadError(422, 'The JSON body needs "raster": a path relative to the server\'s data dir')
    root = store.data_dir
    path = os.path.realpath(os.path.join(root, name))  # symlinks resolved before the check
    private = (store.jobs_dir, store.uploads_dir)
    if os.path.commonpath([root, path]) != root or any(os.path.commonpath([p, path]) == p for p in private):
        raise UploadError(403, f"{name!r} is outside the server's data dir; name a raster under it")
    if not os.path.isfile(path):
        raise UploadError(422, f"No raster {name!r} under the server's data dir")
    return path
