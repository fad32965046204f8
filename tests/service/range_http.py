"""A tiny HTTP file server with Range support, on a loopback port, for the URL-raster tests.

GDAL's ``/vsicurl/`` reads a raster with HTTP Range requests (``bytes=a-b``);
Python's ``SimpleHTTPRequestHandler`` ignores Range, so this handler answers
them itself (206 with Content-Range), plus 302 redirects on ``redirects``
(and whole 200 answers on ``no_range``, as a server without Range support).
Every request path is recorded in ``requests`` so a test can tell what the
detector fetched (and what it never asked for).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Set


class RangeServer:
    """Serves ``files`` (URL path -> bytes) and ``redirects`` (URL path -> Location) on 127.0.0.1."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.redirects: Dict[str, str] = {}
        self.no_range: Set[str] = set()  # paths answered whole (200), as a server without Range support
        self.requests: List[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                owner.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}".strip())
                if path in owner.redirects:
                    self.send_response(302)
                    self.send_header("Location", owner.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = owner.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start, end, status = 0, len(data) - 1, 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if m and path not in owner.no_range:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else end, len(data) - 1)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body:
                    self.wfile.write(data[start : end + 1])

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="range-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
