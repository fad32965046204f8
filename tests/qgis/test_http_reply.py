"""One reading of a QGIS network reply for the web-tile reader and the server client (real loopback replies)."""

import http.server
import socket
import threading

import pytest


class _Handler(http.server.BaseHTTPRequestHandler):
    """/ok: 200 'tile'; /busy: 429 with Retry-After 7; /busy-date: 503 with an HTTP-date Retry-After."""

    def do_GET(self):  # noqa: N802 - http.server API
        answers = {
            "/ok": (200, {}, b"tile"),
            "/busy": (429, {"Retry-After": "7"}, b'{"detail": "queue full"}'),
            "/busy-date": (503, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, b"later"),
        }
        status, headers, body = answers.get(self.path, (404, {}, b"no such path"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    from qgis.core import QgsNetworkAccessManager
    from qgis.PyQt.QtCore import QUrl
    from qgis.PyQt.QtNetwork import QNetworkRequest

    from roof_detector.qgis_adapter.http_reply import read_reply

    return read_reply(QgsNetworkAccessManager.blockingGet(QNetworkRequest(QUrl(url)), "", True))


def test_parts_of_real_replies(qgis_app, base_url):
    ok = _get(base_url + "/ok")
    assert (ok.status, ok.body, ok.error, ok.retry_after, ok.succeeded) == (200, b"tile", "", "", True)

    busy = _get(base_url + "/busy")
    assert busy.status == 429 and busy.body == b'{"detail": "queue full"}'
    assert busy.retry_after == "7" and busy.retry_after_s == 7.0
    assert busy.error and not busy.succeeded  # Qt calls an HTTP error status an error

    dated = _get(base_url + "/busy-date")
    assert dated.status == 503 and dated.retry_after.startswith("Wed,") and dated.retry_after_s is None

    refused = _get(f"http://127.0.0.1:{_closed_port()}/ok")
    assert refused.status is None and refused.error and not refused.succeeded


def test_tile_reader_and_server_client_read_them_alike(qgis_app, base_url):
    """The tile reader retries a 429 after the server's Retry-After; the server client says it in one line."""
    from roof_detector.qgis_adapter.remote import ServerClient, ServerError
    from roof_detector.qgis_io.workers import http_get, is_transient

    tile = http_get(base_url + "/busy")
    assert (tile.status, tile.retry_after, is_transient(tile)) == (429, 7.0, True)
    assert http_get(base_url + "/ok").content == b"tile"

    with pytest.raises(ServerError, match=r"busy \(its queue is full\); try again in 7 s"):
        ServerClient(base_url).call("GET", "/busy")
    with pytest.raises(ServerError, match="answered 404: no such path"):
        ServerClient(base_url).call("GET", "/missing")
    with pytest.raises(ServerError, match="Cannot reach the Roof Detector server"):
        ServerClient(f"http://127.0.0.1:{_closed_port()}").call("GET", "/ok")
    assert ServerClient(base_url).call("GET", "/ok") == (200, b"tile")
