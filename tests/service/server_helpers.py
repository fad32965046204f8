"""Start the real service (``python -m roof_detector serve``) in a subprocess and talk HTTP to it.

Stdlib HTTP only (urllib, raw sockets), so the tests exercise the server, not a client library.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from roof_detector.core.model_io import save_model
from devtools.test_model import BrightnessNet, make_test_model

REPO = Path(__file__).resolve().parents[2]


class SlowBrightnessNet(nn.Module):
    """The brightness test model plus a block of throw-away convolutions: same output, many ms per tile.

    Gives a job that runs long enough to be cancelled or killed mid-way.
    """

    def __init__(self, repeats: int = 12):
        super().__init__()
        self.bright = BrightnessNet()
        self.burn = nn.Conv2d(3, 3, 9, padding=4)
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(self.repeats):
            y = torch.tanh(self.burn(y))
        return self.bright(x) + 0.0 * y.mean()


def make_slow_model(path: str) -> str:
    """The slow twin of the test model (same metadata, same output)."""
    fast = make_test_model(path + ".fast.pt")
    from roof_detector.core.model_io import read_metadata

    meta = read_metadata(fast)
    os.unlink(fast)
    torch.manual_seed(0)
    return save_model(SlowBrightnessNet(), path, meta)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``serve`` subprocess on a free loopback port; ``stop()`` ends it with SIGTERM (or SIGKILL)."""

    def __init__(self, data_dir: Path, model: str, *args: str, token: Optional[str] = None):
        self.data_dir, self.model, self.args, self.token = Path(data_dir), model, args, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roof_detector",
                "serve",
                "--port",
                str(self.port),
                "--model",
                model,
                "--device",
                "cpu",
                "--data-dir",
                str(self.data_dir),
                *args,
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop(kill=True)
        raise RuntimeError(f"server did not answer in 60 s: {self.log_text()}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self, kill: bool = False) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    # -- HTTP ---------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        token: Any = "default",
    ) -> Tuple[int, Dict[str, str], bytes]:
        headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, payload: Any = None, **kw) -> Tuple[int, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, _, data = self.request(method, path, body, headers, **kw)
        return status, (json.loads(data) if data else None)

    def upload(self, raster: Path, options: Optional[dict] = None, aoi: Any = None, **kw):
        """POST /v1/detections with a multipart body; returns (status, headers, json)."""
        body, ctype = multipart(
            {"raster": (Path(raster).name, Path(raster).read_bytes())},
            {"options": json.dumps(options) if options else None, "aoi": json.dumps(aoi) if aoi else None},
        )
        status, headers, data = self.request("POST", "/v1/detections", body, {"Content-Type": ctype}, **kw)
        return status, headers, json.loads(data) if data else None

    def wait(self, job_id: str, states=("done", "failed", "cancelled"), timeout_s: float = 120, **kw) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, job = self.json("GET", f"/v1/detections/{job_id}", **kw)
            assert status == 200, job
            if job["state"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not in {states} after {timeout_s} s: {job}")


def multipart(files: Dict[str, Tuple[str, bytes]], fields: Dict[str, Optional[str]]) -> Tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()
    for name, (filename, data) in files.items():
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: image/tiff\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
