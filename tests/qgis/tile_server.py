"""A loopback XYZ tile server for tests: tiles cut from an array, optional failures.

Bound to 127.0.0.1 on a free port, served by a daemon thread that polls for
shutdown every 50 ms; :meth:`TileServer.close` stops it (fixtures call it).
"""

from __future__ import annotations

import http.server
import math
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np

WEB_MERCATOR_HALF = 20037508.342789244


def zoom_resolution(z: int) -> float:
    return 2.0 * WEB_MERCATOR_HALF / (256 * (1 << z))


def png_bytes(rgba: np.ndarray) -> bytes:
    """Encode an H x W x 4 uint8 array as PNG (with QImage)."""
    from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice
    from qgis.PyQt.QtGui import QImage

    arr = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w, _ = arr.shape
    image = QImage(arr.data, w, h, 4 * w, QImage.Format_RGBA8888).copy()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data)


def cut_tiles(rgba: np.ndarray, z: int, tx0: int, ty0: int) -> Dict[Tuple[int, int, int], bytes]:
    """PNG tiles of zoom ``z`` for an image whose top-left corner is the corner of tile (tx0, ty0)."""
    h, w, _ = rgba.shape
    tiles = {}
    for j in range(math.ceil(h / 256)):
        for i in range(math.ceil(w / 256)):
            tile = np.zeros((256, 256, 4), dtype=np.uint8)
            part = rgba[j * 256 : (j + 1) * 256, i * 256 : (i + 1) * 256]
            tile[: part.shape[0], : part.shape[1]] = part
            tiles[(z, tx0 + i, ty0 + j)] = png_bytes(tile)
    return tiles


class TileServer:
    """Serves ``/{z}/{x}/{y}.png`` from a dict; 404 for tiles it lacks.

    ``fail_every=n`` answers every n-th request with HTTP 503.
    """

    def __init__(self, tiles: Dict[Tuple[int, int, int], bytes], fail_every: int = 0):
        self.tiles = tiles
        self.fail_every = fail_every
        self.requests: List[str] = []
        self.failures = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a handler thread for ever

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with server._lock:
                    server.requests.append(self.path)
                    n = len(server.requests)
                    fail = bool(server.fail_every) and n % server.fail_every == 0
                    server.failures += int(fail)
                if fail:
                    self.send_error(503, "Busy")
                    return
                key = server.parse(self.path)
                body = server.tiles.get(key) if key else None
                if body is None:
                    self.send_error(404, "No tile")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="test-tile-server", daemon=True
        )
        self._thread.start()

    @staticmethod
    def parse(path: str) -> Optional[Tuple[int, int, int]]:
        try:
            z, x, y = path.split("?")[0].strip("/").rsplit(".", 1)[0].split("/")
            return int(z), int(x), int(y)
        except ValueError:
            return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{z}}/{{x}}/{{y}}.png"

    def zooms(self) -> List[int]:
        return sorted({k[0] for k in map(self.parse, self.requests) if k})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def xyz_uri(url: str, zmin: int, zmax: int) -> str:
    """The source string of a QGIS XYZ layer."""
    from qgis.core import QgsDataSourceUri

    uri = QgsDataSourceUri()
    uri.setParam("type", "xyz")
    uri.setParam("url", url)
    uri.setParam("zmin", str(zmin))
    uri.setParam("zmax", str(zmax))
    return bytes(uri.encodedUri()).decode()
