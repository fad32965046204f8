"""Detection on a Roof Detector server (``python -m roof_detector serve``) instead of this computer.

:class:`RemoteDetectTask` is a :class:`~.task.DetectTask` whose detection
step talks HTTP: it uploads the raster (only the chosen area's part when
there is one), polls the job's progress into the task manager, sends
``DELETE`` when cancelled, downloads the buildings as GeoPackage and hands
them to the same layer building, writing and styling as a local run, so the
layer has the same fields. Every call goes through QGIS's network access
manager: the user's proxy and SSL settings apply.

Nothing here imports torch, onnxruntime, rasterio or shapely: a desktop
without them can still run detections on a server. The server's bearer
token is kept in QGIS's authentication database (:func:`store_token`),
never in plain settings.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsApplication,
    QgsAuthMethodConfig,
    QgsBlockingNetworkRequest,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeedback,
    QgsGeometry,
    QgsNetworkAccessManager,
    QgsProject,
)
from qgis.PyQt.QtCore import QFile, QIODevice, QUrl
from qgis.PyQt.QtNetwork import QNetworkRequest

from ..core.errors import RoofDetectorError
from . import tr
from .http_reply import ReplyParts, read_reply
from .task import DETECT_SHARE, DetectTask

AUTH_CONFIG_NAME = "Roof Detector server"
_GEOM_TYPES = {"POLYGON": "Polygon", "MULTIPOLYGON": "MultiPolygon"}  # OGR name -> shapely geom_type
POLL_INTERVAL_S = 0.5


class ServerError(RoofDetectorError):
    """The server could not be reached or refused the request; the message says what to do.

    A :class:`RoofDetectorError`, so the one error mapper (:mod:`.errors`) shows its message as is.
    """


def store_token(token: str, authcfg: str = "") -> str:
    """Keep ``token`` in QGIS's authentication database (updating ``authcfg`` if given); return the config id.

    QGIS asks for its master password if it is not set yet.
    """
    manager = QgsApplication.authManager()
    config = QgsAuthMethodConfig("Basic")
    if authcfg and manager.loadAuthenticationConfig(authcfg, config, True):
        config.setConfig("password", token)
        if not manager.updateAuthenticationConfig(config):
            raise ServerError(tr("Could not update the token in QGIS's authentication database."))
        return authcfg
    config = QgsAuthMethodConfig("Basic")
    config.setName(AUTH_CONFIG_NAME)
    config.setConfig("username", "roof-detector")
    config.setConfig("password", token)
    result = manager.storeAuthenticationConfig(config)
    ok = result[0] if isinstance(result, tuple) else result
    if not ok:
        raise ServerError(
            tr("Could not store the token in QGIS's authentication database (is its master password set?).")
        )
    return (result[1] if isinstance(result, tuple) else config).id()


def load_token(authcfg: str) -> str:
    """The token kept under ``authcfg`` ("" when none)."""
    if not authcfg:
        return ""
    config = QgsAuthMethodConfig()
    if not QgsApplication.authManager().loadAuthenticationConfig(authcfg, config, True):
        return ""
    return config.config("password", "")


def server_options(request: Any) -> Dict[str, Any]:
    """The request's choices (engine keyword arguments) as the service's options, by the declarations' names."""
    from ..service.options import request_options

    return request_options(request.options, request.solar)


class ServerClient:
    """Blocking JSON calls to one server (worker thread); errors become :class:`ServerError`."""

    def __init__(self, url: str, token: str = "", feedback: Optional[QgsFeedback] = None):
        self.url = url.rstrip("/")
        self.token = token
        self.feedback = feedback

    def _request(self, path: str, content_type: str = "") -> QNetworkRequest:
        request = QNetworkRequest(QUrl(self.url + path))
        if self.token:
            request.setRawHeader(b"Authorization", f"Bearer {self.token}".encode())
        if content_type:
            request.setHeader(QNetworkRequest.ContentTypeHeader, content_type)
        request.setAttribute(QNetworkRequest.CacheLoadControlAttribute, QNetworkRequest.AlwaysNetwork)
        return request

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "", expect: Tuple[int, ...] = (200,)
    ) -> Tuple[int, bytes]:
        """``method`` ``path``; return (status, body) or raise :class:`ServerError` with the server's reason."""
        request = self._request(path, content_type)
        if method == "GET":
            # GETs (the polls, many per run; the result) go through the static call,
            # whose request object is made in C++, without the Python feedback: a
            # QObject made in Python needs the GIL when Qt disconnects it, under a Qt
            # lock, and a GUI thread holding the GIL while waiting for that lock froze
            # QGIS (see qgis_io/workers.http_get). Cancel is checked between calls.
            reply = QgsNetworkAccessManager.blockingGet(request, "", True)
            error = ""
        else:  # the upload (streamed from a file) and DELETE: once per run, abortable
            blocking = QgsBlockingNetworkRequest()
            if method == "POST":
                blocking.post(request, body, True, self.feedback)
            elif method == "DELETE":
                blocking.deleteResource(request, self.feedback)
            else:
                raise ValueError(method)
            reply = blocking.reply()
            error = blocking.errorMessage()
        parts = read_reply(reply)
        if parts.status is None:
            if self.feedback is not None and self.feedback.isCanceled():
                from ..core.errors import Cancelled

                raise Cancelled()
            raise ServerError(
                tr(
                    "Cannot reach the Roof Detector server at {url}: {error}. Check the server URL "
                    "in Detect Buildings and that the server runs."
                ).format(url=self.url, error=error or parts.error)
            )
        if parts.status not in expect:
            raise ServerError(self._refusal(parts))
        return parts.status, parts.body

    def _refusal(self, parts: ReplyParts) -> str:
        try:
            detail = json.loads(parts.body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        detail = detail if isinstance(detail, str) else parts.body.decode("utf-8", "replace")[:300]
        if parts.status == 401:
            return tr(
                "The Roof Detector server refused the token (401). Enter the token its operator gave you "
                "in Detect Buildings > Run on."
            )
        if parts.status == 429:
            retry = parts.retry_after or "?"
            return tr("The Roof Detector server is busy (its queue is full); try again in {s} s.").format(s=retry)
        return tr("The Roof Detector server answered {status}: {detail}").format(status=parts.status, detail=detail)

    def json(self, method: str, path: str, expect: Tuple[int, ...] = (200,)) -> Any:
        return json.loads(self.call(method, path, expect=expect)[1] or b"null")


def _multipart_file(raster_path: str, fields: Dict[str, str], folder: str) -> Tuple[str, str]:
    """A multipart/form-data body on disk (fields, then the raster as 'raster'); (path, content type)."""
    boundary = uuid.uuid4().hex
    path = os.path.join(folder, f"upload-{boundary}.multipart")
    with open(path, "wb") as out:
        for name, value in fields.items():
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        name = os.path.basename(raster_path).replace('"', "")
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="raster"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        with open(raster_path, "rb") as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return path, f"multipart/form-data; boundary={boundary}"


def aoi_geojson(aoi_wkt: str, crs: QgsCoordinateReferenceSystem) -> Dict[str, Any]:
    """The area of interest (WKT in the raster's CRS) as GeoJSON in EPSG:4326 (lon/lat, RFC 7946)."""
    geometry = QgsGeometry.fromWkt(aoi_wkt)
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    geometry.transform(QgsCoordinateTransform(crs, wgs84, QgsProject.instance()))
    return json.loads(geometry.asJson(7))


def clip_to_aoi(raster_path: str, aoi_wkt: str, folder: str) -> str:
    """The part of the raster under the area's bounding box, as a GeoTIFF in ``folder`` (GDAL, no resampling)."""
    from osgeo import gdal

    box = QgsGeometry.fromWkt(aoi_wkt).boundingBox()
    out = os.path.join(folder, "area.tif")
    ds = gdal.Translate(
        out,
        raster_path,
        projWin=[box.xMinimum(), box.yMaximum(), box.xMaximum(), box.yMinimum()],
        format="GTiff",
        creationOptions=["COMPRESS=DEFLATE", "TILED=YES", "BIGTIFF=IF_SAFER"],
    )
    if ds is None:
        raise ServerError(
            tr("Could not cut the area of interest out of {path}: {error}").format(
                path=raster_path, error=gdal.GetLastErrorMsg()
            )
        )
    ds = None
    return out


def read_buildings(gpkg_path: str, layer: str = "buildings") -> Tuple[List[Any], str, Dict[str, str]]:
    """The buildings of a downloaded GeoPackage as the engine's Building-like records (geometry with ``wkb``
    and ``geom_type``, read by OGR: no shapely needed), the layer's CRS WKT and its metadata items."""
    from osgeo import ogr

    ds = ogr.Open(gpkg_path)
    if ds is None or ds.GetLayerByName(layer) is None:
        raise ServerError(tr("The server's result is not a GeoPackage with a '{layer}' layer.").format(layer=layer))
    lyr = ds.GetLayerByName(layer)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    buildings = []
    for feature in lyr:
        values = {name: feature.GetField(name) for name in names}
        geometry = feature.GetGeometryRef()
        buildings.append(
            SimpleNamespace(
                geometry=SimpleNamespace(
                    wkb=bytes(geometry.ExportToWkb()), geom_type=_GEOM_TYPES.get(geometry.GetGeometryName(), "Polygon")
                )
                if geometry is not None
                else None,
                area_m2=values.pop("area_m2"),
                perimeter_m=values.pop("perimeter_m"),
                confidence=values.pop("confidence"),
                attributes=values,
            )
        )
    srs = lyr.GetSpatialRef()
    crs_wkt = srs.ExportToWkt() if srs is not None else ""
    metadata = dict(lyr.GetMetadata() or {})
    ds = None
    return buildings, crs_wkt, metadata


class RemoteDetectTask(DetectTask):
    """A :class:`DetectTask` whose detection runs on a Roof Detector server."""

    def __init__(self, request: Any, on_finished: Any = None):
        super().__init__(request, on_finished)
        self.setDescription(
            tr("Detecting buildings in {name} on {url}").format(name=request.raster_name, url=request.server_url)
        )
        self.feedback = QgsFeedback()
        self.job_id: Optional[str] = None

    def cancel(self) -> None:  # noqa: D401 - QgsTask API
        """Stop the running network call too (the job itself is cancelled with DELETE in run())."""
        self.feedback.cancel()
        super().cancel()

    def _run(self) -> None:
        from ..core.errors import Cancelled

        if self.request.reader != "file" or not self.request.raster_path:
            raise ServerError(
                tr(
                    "Running on a server needs a raster stored in a file (GeoTIFF...); save the "
                    "layer to a file first (right click > Export > Save As...)."
                )
            )
        if self.request.output_mode == "gpkg":  # before the upload (the writer checks the rest)
            folder = os.path.dirname(os.path.abspath(self.request.gpkg_path))
            if not os.path.isdir(folder):
                raise ServerError(tr("Folder {folder} does not exist.").format(folder=folder))
        client = ServerClient(self.request.server_url, load_token(self.request.server_authcfg), self.feedback)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="roof_detector_remote_") as folder:
            raster = self.request.raster_path
            fields = {"options": json.dumps(server_options(self.request))}
            if self.request.aoi_wkt:
                crs = (
                    QgsCoordinateReferenceSystem(self.request.crs)
                    if ":" in self.request.crs and "[" not in self.request.crs
                    else QgsCoordinateReferenceSystem.fromWkt(self.request.crs)
                )
                fields["aoi"] = json.dumps(aoi_geojson(self.request.aoi_wkt, crs))
                raster = clip_to_aoi(raster, self.request.aoi_wkt, folder)
            body_path, content_type = _multipart_file(raster, fields, folder)
            body = QFile(body_path)
            body.open(QIODevice.ReadOnly)
            try:
                job = json.loads(client.call("POST", "/v1/detections", body, content_type, expect=(202,))[1])
            finally:
                body.close()
            self.job_id = job["id"]
            self.setProgress(2.0)
            job = self._poll(client)
            if self.isCanceled():
                raise Cancelled()
            _, data = client.call("GET", f"/v1/detections/{self.job_id}/buildings?format=gpkg")
            gpkg = os.path.join(folder, "buildings.gpkg")
            with open(gpkg, "wb") as f:
                f.write(data)
            buildings, crs_wkt, metadata = read_buildings(gpkg)
        try:  # the result is here: free the server's copy
            client.call("DELETE", f"/v1/detections/{self.job_id}", expect=(204, 404))
        except ServerError:
            pass
        result = SimpleNamespace(
            buildings=buildings,
            crs_wkt=crs_wkt,
            warnings=list(job.get("warnings") or []),
            seconds=time.perf_counter() - t0,
            stats={"server": self.request.server_url, "job": self.job_id},
        )
        # The server's provenance (source, model, threshold, min area), and where it ran.
        self.deliver(result, {**metadata, "server": self.request.server_url, "server_job": self.job_id})

    def _poll(self, client: ServerClient) -> Dict[str, Any]:
        """Follow the job until it ends; DELETE it when the task is cancelled."""
        from ..core.errors import Cancelled

        path = f"/v1/detections/{self.job_id}"
        while True:
            if self.isCanceled():
                ServerClient(client.url, client.token).call("DELETE", path, expect=(202, 204, 404))
                raise Cancelled()
            job = client.json("GET", path)
            self.setProgress(2.0 + float(job.get("progress") or 0.0) * (DETECT_SHARE - 2.0))
            state = job.get("state")
            if state == "done":
                return job
            if state == "failed":
                raise ServerError(tr("The detection failed on the server: {error}").format(error=job.get("error")))
            if state == "cancelled":
                raise Cancelled()
            self._sleep(POLL_INTERVAL_S)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.isCanceled():
            time.sleep(0.05)
