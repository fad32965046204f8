"""Rasters named by URL (``serve --allow-url-prefix``): read through GDAL /vsicurl/ from a real local
HTTP server with Range support, refused when not allowed, not reachable, too big or not a raster."""

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from roof_detector.service.url_rasters import parse_prefixes

from .range_http import RangeServer
from .server_helpers import REPO, Server
from .test_service_http import _features


@pytest.fixture(scope="module")
def files():
    http = RangeServer()
    other = RangeServer()  # another "host" (port): nothing may be fetched from it
    yield http, other
    http.close()
    other.close()


@pytest.fixture(scope="module")
def url_server(tmp_path_factory, model_path, files):
    http, _ = files
    srv = Server(
        tmp_path_factory.mktemp("srv") / "data",
        model_path,
        "--allow-url-prefix",
        f"{http.url}/ortho/",
        "--max-upload-mb",
        "0.5",
        "--url-timeout-s",
        "3",
    )
    yield srv
    srv.stop()


def _submit(server, raster, options=None):
    return server.json("POST", "/v1/detections", {"raster": raster, "options": options or {}})


def test_a_url_raster_gives_the_uploads_result(url_server, files, scene, tmp_path):
    http, _ = files
    http.files["/ortho/scene.tif"] = Path(scene).read_bytes()
    http.redirects["/ortho/moved.tif"] = "/ortho/scene.tif"  # a redirect that stays under the prefix
    options = {"min_area": 12, "setback": 0.8}
    status, uploaded = url_server.upload(scene, options)[::2]
    assert status == 202
    by_url = {}
    for name in ("scene.tif", "moved.tif"):
        http.requests.clear()
        status, job = _submit(url_server, f"{http.url}/ortho/{name}", options)
        assert status == 202, job
        by_url[name] = url_server.wait(job["id"])
        assert by_url[name]["state"] == "done", by_url[name]
        assert by_url[name]["input_name"] == f"{http.url}/ortho/{name}"
        # GDAL read the raster by HTTP Range requests (afresh: no cache across jobs), only under the prefix
        assert any("bytes=" in r and "bytes=0-0" not in r for r in http.requests), http.requests
        assert all(r.split()[1].startswith("/ortho/") for r in http.requests), http.requests
    assert url_server.wait(uploaded["id"])["state"] == "done"
    # the scheme is case-insensitive (RFC 3986): HTTP:// under an http:// prefix is read the same
    status, upper = _submit(url_server, "HTTP" + f"{http.url}/ortho/scene.tif"[4:], options)
    assert status == 202, upper
    assert url_server.wait(upper["id"])["buildings"] == by_url["scene.tif"]["buildings"]

    results = {}
    for key, job_id in (("upload", uploaded["id"]), *((k, j["id"]) for k, j in by_url.items())):
        status, _, gpkg = url_server.request("GET", f"/v1/detections/{job_id}/buildings?format=gpkg")
        assert status == 200
        (tmp_path / f"{key}.gpkg").write_bytes(gpkg)
        results[key] = _features(tmp_path / f"{key}.gpkg", "buildings")
    assert results["upload"][1] and len(results["upload"][1]) == 2
    assert results["scene.tif"] == results["upload"] == results["moved.tif"]
    status, _, geojson = url_server.request("GET", f"/v1/detections/{by_url['scene.tif']['id']}/buildings")
    assert status == 200 and geojson == url_server.request("GET", f"/v1/detections/{uploaded['id']}/buildings")[2]


def test_urls_outside_the_allow_list_are_refused_before_any_request(url_server, files, small_scene):
    http, other = files
    http.files["/private/small.tif"] = other.files["/ortho/small.tif"] = Path(small_scene).read_bytes()
    http.redirects["/ortho/away.tif"] = f"{other.url}/ortho/small.tif"
    http.redirects["/ortho/up.tif"] = "/private/small.tif"
    http.requests.clear()
    jobs_before = url_server.json("GET", "/v1/detections")[1]["detections"]
    refused = [
        f"{http.url}/private/small.tif",  # same host, other folder
        f"{other.url}/ortho/small.tif",  # other port
        f"{http.url}/ortho/../private/small.tif",  # libcurl would remove the ..
        f"{http.url}/ortho/%2e%2e/private/small.tif",
        f"{http.url}/ortho%2f..%2fprivate/small.tif",
        f"http://user@127.0.0.1:{http.port}/ortho/small.tif",
        f"/vsicurl/{http.url}/private/small.tif",
        "file:///etc/passwd",
        "/vsizip//etc/x.zip/a.tif",
        "/vsis3/bucket/a.tif",
        "ftp://127.0.0.1/ortho/a.tif",
    ]
    for url in refused:
        status, body = _submit(url_server, url)
        assert status == 403, (url, body)
    assert http.requests == [] and other.requests == []
    # a redirect out of the prefix: only the first answer was read, the target never asked
    for name, target in (("away.tif", other.url), ("up.tif", "/private/small.tif")):
        status, body = _submit(url_server, f"{http.url}/ortho/{name}")
        assert status == 403 and "a redirect from" in body["detail"] and target in body["detail"], body
    assert other.requests == [] and not any("/private/" in r for r in http.requests), http.requests
    assert url_server.json("GET", "/v1/detections")[1]["detections"] == jobs_before  # no job was made


def test_unreachable_slow_missing_too_big_and_non_raster_urls(url_server, files, big_scene, tmp_path):
    http, _ = files
    http.files["/ortho/notes.tif"] = b"hello, not a raster\n" * 50
    http.files["/ortho/big.tif"] = Path(big_scene).read_bytes()  # 1 MB > --max-upload-mb 0.5
    from osgeo import gdal

    vrt = tmp_path / "a.vrt"
    gdal.Translate(str(vrt), str(big_scene), format="VRT")
    http.files["/ortho/a.vrt"] = vrt.read_bytes()  # names a file on the server's disk
    jobs_before = url_server.json("GET", "/v1/detections")[1]["detections"]

    status, body = _submit(url_server, f"{http.url}/ortho/notes.tif")
    assert status == 422 and "cannot be read as a raster" in body["detail"], body
    # GDAL's own words, as this GDAL puts them (3.6: "as a supported", 3.10: "as being in a supported")
    assert re.search(r"not recognized as (being in )?a supported file format", body["detail"]), body
    assert f"{http.url}/ortho/notes.tif" in body["detail"] and "/vsicurl/" not in body["detail"]
    status, body = _submit(url_server, f"{http.url}/ortho/missing.tif")
    assert status == 422 and "HTTP 404" in body["detail"], body
    http.files["/ortho/whole.tif"] = Path(big_scene).read_bytes()[:1000]
    http.no_range.add("/ortho/whole.tif")
    status, body = _submit(url_server, f"{http.url}/ortho/whole.tif")
    assert status == 422 and "does not answer HTTP Range requests" in body["detail"], body
    status, body = _submit(url_server, f"{http.url}/ortho/big.tif")
    assert status == 413 and "--max-upload-mb" in body["detail"], body
    status, body = _submit(url_server, f"{http.url}/ortho/a.vrt")
    assert status == 422 and "is a VRT file" in body["detail"], body
    assert url_server.json("GET", "/v1/detections")[1]["detections"] == jobs_before


def test_a_host_that_is_down_or_never_answers(tmp_path, model_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    silent = socket.socket()  # accepts connections (kernel backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent_port = silent.getsockname()[1]
    server = Server(
        tmp_path / "data",
        model_path,
        "--allow-url-prefix",
        f"http://127.0.0.1:{closed_port}/",
        "--allow-url-prefix",
        f"http://127.0.0.1:{silent_port}/",
        "--url-timeout-s",
        "2",
    )
    try:
        status, body = _submit(server, f"http://127.0.0.1:{closed_port}/a.tif")
        assert status == 422 and "cannot be reached" in body["detail"] and "refused" in body["detail"], body
        status, body = _submit(server, f"http://127.0.0.1:{silent_port}/a.tif")
        assert status == 422 and "did not answer within 2 s" in body["detail"], body
        assert server.json("GET", "/health")[0] == 200  # the server goes on
    finally:
        server.stop()
        silent.close()


def test_without_the_switch_urls_are_refused_and_bad_prefixes_stop_the_start(tmp_path, model_path):
    server = Server(tmp_path / "data", model_path)
    try:
        status, body = _submit(server, "http://127.0.0.1:9/a.tif")
        assert status == 403 and "--allow-url-prefix" in body["detail"], body
    finally:
        server.stop()
    for bad in ("file:///srv/", "ftp://host/", "https://u:p@host/", "https://host/a/../b/", "https://host/?a=1", "x"):
        with pytest.raises(ValueError, match="--allow-url-prefix"):
            parse_prefixes([bad])
    proc = subprocess.run(
        [sys.executable, "-m", "roof_detector", "serve", "--data-dir", str(tmp_path / "d2")]
        + ["--allow-url-prefix", "https://example.org/ortho/", "--allow-url-prefix", "file:///srv/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: --allow-url-prefix 'file:///srv/': only http:// and https:// URLs can be read, not file://"
    ], proc.stderr
    (prefix,) = parse_prefixes(["HTTPS://Data.Example.org/ortho/"])
    assert (prefix.scheme, prefix.host, prefix.port, prefix.path) == ("https", "data.example.org", 443, "/ortho/")


def test_a_url_gone_by_the_time_its_job_runs_fails_the_job_naming_the_url(url_server, files, small_scene, tmp_path):
    http, _ = files
    from tests.core.synthetic_rasters import rect_scene

    # a long job (a data-dir raster: no upload limit) keeps the device busy, so the URL job waits in the queue
    rect_scene(url_server.data_dir / "long.tif", [(20, 20, 60, 80)], shape=(1500, 1500))
    http.files["/ortho/gone.tif"] = Path(small_scene).read_bytes()
    status, first = _submit(url_server, "long.tif")
    assert status == 202, first
    status, job = _submit(url_server, f"{http.url}/ortho/gone.tif")
    assert status == 202 and job["state"] == "queued", job
    del http.files["/ortho/gone.tif"]  # the URL answers 404 from now on
    assert url_server.json("GET", f"/v1/detections/{first['id']}")[1]["state"] in ("queued", "running")
    assert url_server.wait(first["id"], timeout_s=300)["state"] == "done"
    job = url_server.wait(job["id"])
    assert job["state"] == "failed" and "cannot be read as a raster (HTTP response code: 404)" in job["error"], job
    assert f"{http.url}/ortho/gone.tif" in job["error"] and "/vsicurl/" not in job["error"], job
    assert url_server.json("GET", "/health")[1]["status"] == "ok"
