"""The REST service, started for real (uvicorn in a subprocess on a free loopback port), over HTTP."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from osgeo import ogr

from .server_helpers import REPO, Server, multipart


def _features(gpkg, layer):
    ds = ogr.Open(str(gpkg))
    lyr = ds.GetLayerByName(layer)
    defn = lyr.GetLayerDefn()
    fields = [(defn.GetFieldDefn(i).GetName(), defn.GetFieldDefn(i).GetTypeName()) for i in range(defn.GetFieldCount())]
    feats = sorted(
        ([f.GetField(i) for i in range(defn.GetFieldCount())], f.GetGeometryRef().ExportToWkt()) for f in lyr
    )
    srs = lyr.GetSpatialRef().ExportToWkt()
    return fields, feats, srs


def _cli_detect(raster, out, model, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "roof_detector",
            "detect",
            str(raster),
            "-o",
            str(out),
            "--model",
            model,
            "--device",
            "cpu",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    srv = Server(tmp_path_factory.mktemp("srv") / "data", model_path)
    yield srv
    srv.stop()


def test_detection_equals_the_cli(server, scene, model_path, tmp_path):
    options = {"min_area": 12, "separate_touching": False, "setback": 0.8, "yield": 1000}
    status, headers, job = server.upload(scene, options)
    assert status == 202, job
    assert headers["location"] == f"/v1/detections/{job['id']}" and job["state"] in ("queued", "running")
    done = server.wait(job["id"])
    assert done["state"] == "done", done
    assert done["progress"] == 1.0 and done["tiles_done"] == done["tiles_total"] > 0
    assert done["buildings"] == 2 and done["timings_s"]["infer"] > 0 and done["error"] is None

    status, _, gpkg = server.request("GET", f"/v1/detections/{job['id']}/buildings?format=gpkg")
    assert status == 200
    (tmp_path / "served.gpkg").write_bytes(gpkg)
    cli = _cli_detect(
        scene,
        tmp_path / "cli.gpkg",
        model_path,
        "--min-area",
        "12",
        "--no-separate-touching",
        "--setback",
        "0.8",
        "--yield",
        "1000",
    )
    served_fields, served, served_srs = _features(tmp_path / "served.gpkg", "buildings")
    cli_fields, expected, cli_srs = _features(cli, "buildings")
    assert served_fields == cli_fields and "kwp" in dict(cli_fields)
    assert served == expected and len(served) == 2
    assert served_srs == cli_srs  # the raster's CRS (UTM 31N)

    # GeoJSON: the same features and fields, in longitude/latitude (RFC 7946)
    status, headers, data = server.request("GET", f"/v1/detections/{job['id']}/buildings?format=geojson")
    assert status == 200 and headers["content-type"] == "application/geo+json"
    fc = json.loads(data)
    assert "crs" not in fc and len(fc["features"]) == 2
    assert [list(f["properties"]) for f in fc["features"]] == [[n for n, _ in cli_fields]] * 2
    areas = sorted(f["properties"]["area_m2"] for f in fc["features"])
    assert areas == pytest.approx(sorted(v[0][0] for v in expected))
    lon, lat = fc["features"][0]["geometry"]["coordinates"][0][0]
    assert 2.9 < lon < 3.1 and 49.9 < lat < 50.1

    # a raster named by its path under the data dir gives the same buildings
    (server.data_dir / "rasters").mkdir()
    (server.data_dir / "rasters" / "scene.tif").write_bytes(Path(scene).read_bytes())
    status, by_path = server.json("POST", "/v1/detections", {"raster": "rasters/scene.tif", "options": options})
    assert status == 202, by_path
    assert server.wait(by_path["id"])["buildings"] == 2
    status, _, gpkg2 = server.request("GET", f"/v1/detections/{by_path['id']}/buildings?format=gpkg")
    (tmp_path / "path.gpkg").write_bytes(gpkg2)
    assert _features(tmp_path / "path.gpkg", "buildings")[1] == expected

    # an area of interest (GeoJSON lon/lat) around the 20 x 30 m building only
    aoi = {
        "type": "Polygon",
        "coordinates": [
            [[3.0001, 50.0030], [3.0006, 50.0030], [3.0006, 50.0033], [3.0001, 50.0033], [3.0001, 50.0030]]
        ],
    }
    status, _, in_aoi = server.upload(scene, options, aoi=aoi)
    assert status == 202, in_aoi
    assert server.wait(in_aoi["id"])["buildings"] == 1

    # listed, deleted with its files, then gone
    status, listing = server.json("GET", "/v1/detections")
    assert {j["id"] for j in listing["detections"]} >= {job["id"], by_path["id"]}
    assert server.request("DELETE", f"/v1/detections/{job['id']}")[0] == 204
    assert not (server.data_dir / "jobs" / job["id"]).exists()
    assert server.json("GET", f"/v1/detections/{job['id']}")[0] == 404


def test_bad_options_are_refused_with_the_declarations_messages(server, scene):
    cases = [
        ({"threshold": 1.5}, "Threshold must be from 0.01 to 0.99, got 1.5"),
        ({"min_area": -1}, "Minimum building area must be from 0 to 100000 m², got -1"),
        ({"panel_wp": float("nan")}, "Panel power must be a finite number"),
        ({"device": "cuda"}, "unknown option 'device'"),
        ({"frobnicate": 1}, "unknown option 'frobnicate'"),
        ({"model": "/etc/passwd"}, "unknown option 'model'"),
        ({"regularize": "yes"}, "true or false"),
        ({"usable_fraction": 3}, "usable"),
    ]
    for options, message in cases:
        status, _, body = server.upload(scene, options)
        assert status == 422, (options, body)
        assert message in body["detail"], (options, body)
    status, _, body = server.upload(scene, aoi={"type": "Point", "coordinates": [3, 50]})
    assert status == 422 and "area of interest" in body["detail"]
    # metres given for lon/lat, and an area elsewhere on Earth: refused now, not a failed job later
    jobs_before = len(server.json("GET", "/v1/detections")[1]["detections"])
    metres = [[[500010, 5539000], [500030, 5539000], [500030, 5539020], [500010, 5539020], [500010, 5539000]]]
    status, _, body = server.upload(scene, aoi={"type": "Polygon", "coordinates": metres})
    assert status == 422 and "longitude/latitude" in body["detail"] and "metres, or another CRS" in body["detail"], body
    far = [[[10, 10], [11, 10], [11, 11], [10, 11], [10, 10]]]
    status, _, body = server.upload(scene, aoi={"type": "Polygon", "coordinates": far})
    assert status == 422 and "does not overlap scene.tif" in body["detail"], body
    assert os.listdir(server.data_dir / "uploads") == []
    assert len(server.json("GET", "/v1/detections")[1]["detections"]) == jobs_before  # no job for them


def test_solar_endpoint_equals_the_cli(server, tmp_path):
    from shapely.geometry import box, mapping

    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": "town hall"},
                "geometry": mapping(box(3.0001, 50.0030, 3.0004, 50.0032)),
            },
            {
                "type": "Feature",
                "properties": {"name": "barn"},
                "geometry": mapping(box(3.001, 50.001, 3.0011, 50.0011)),
            },
        ],
    }
    status, out = server.json("POST", "/v1/solar", {"buildings": fc, "options": {"panel_wp": 420}})
    assert status == 200, out
    src = tmp_path / "in.geojson"
    src.write_text(json.dumps(fc))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "roof_detector",
            "solar",
            str(src),
            "-o",
            str(tmp_path / "cli.gpkg"),
            "--panel-wp",
            "420",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    fields, expected, _ = _features(tmp_path / "cli.gpkg", "rooftops")
    assert [f["properties"]["name"] for f in out["features"]] == ["town hall", "barn"]
    for feat, (values, _) in zip(
        out["features"], sorted(expected, key=lambda e: e[0][fields.index(("src_fid", "Integer64"))])
    ):
        props = feat["properties"]
        assert list(props) == [n for n, _ in fields]
        assert props["kwp"] == pytest.approx(values[[n for n, _ in fields].index("kwp")]) and props["kwp"] > 0
    status, out = server.json("POST", "/v1/solar", {"buildings": fc, "options": {"setback": -1}})
    assert status == 422 and "setback" in out["detail"].lower()
    assert server.json("POST", "/v1/solar", {"type": "Feature"})[0] == 422
    # points only: refused as the CLI refuses them, not an empty 200
    points = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [3.0, 50.0]}}],
    }
    status, out = server.json("POST", "/v1/solar", points)
    assert status == 422 and "holds no polygon" in out["detail"] and "the posted GeoJSON" in out["detail"], out


def test_health_models_metrics_openapi(server, small_scene):
    status, _, job = server.upload(small_scene)
    assert server.wait(job["id"])["state"] == "done"
    status, health = server.json("GET", "/health")
    assert status == 200 and health["model_loaded"] and health["device"] == "cpu" and "queue_length" in health
    status, models = server.json("GET", "/v1/models")
    assert models["models"][0]["name"] == "brightness-test-model"
    status, _, text = server.request("GET", "/metrics")
    assert status == 200 and b'roof_detector_requests_total{method="GET",path="/health",status="200"}' in text
    status, api = server.json("GET", "/openapi.json")
    assert {
        "/v1/detections",
        "/v1/detections/{job_id}",
        "/v1/detections/{job_id}/buildings",
        "/v1/solar",
        "/v1/models",
        "/health",
    } <= set(api["paths"])
    assert "multipart/form-data" in api["paths"]["/v1/detections"]["post"]["requestBody"]["content"]
    log = server.log_text()
    assert "POST /v1/detections 202" in log and f"job {job['id']} done" in log and f"job {job['id']} queued" in log
    assert 'roof_detector_jobs{state="done"}' in text.decode()


def test_bad_uploads(tmp_path, model_path, small_scene, scene):
    server = Server(tmp_path / "data", model_path, "--max-upload-mb", "0.1")
    try:
        text = tmp_path / "notes.tif"
        text.write_text("hello, not a raster")
        status, _, body = server.upload(text)
        assert status == 422 and "notes.tif is not a raster GDAL can read" in body["detail"], body
        assert str(server.data_dir) not in body["detail"]

        status, _, body = server.upload(scene)  # 180 kB > 0.1 MiB
        assert status == 413 and "--max-upload-mb" in body["detail"]

        truncated = tmp_path / "truncated.tif"
        truncated.write_bytes(Path(small_scene).read_bytes()[:-3000])
        status, _, body = server.upload(truncated)
        assert status == 422 and "truncated" in body["detail"], body

        from tests.core.synthetic_rasters import write_raster
        import numpy as np
        from affine import Affine

        no_crs = write_raster(
            tmp_path / "nocrs.tif", np.zeros((3, 8, 8), np.uint8), None, Affine(0.5, 0, 0, 0, -0.5, 0)
        )
        status, _, body = server.upload(no_crs)
        assert status == 422 and "no coordinate reference system" in body["detail"]

        # a VRT names other files (here one outside the data dir): an upload must be the image itself
        from osgeo import gdal

        vrt = tmp_path / "sneaky.vrt"
        gdal.Translate(str(vrt), str(small_scene), format="VRT")
        assert str(small_scene) in vrt.read_text()
        status, _, body = server.upload(vrt)
        assert status == 422 and "sneaky.vrt is a VRT file" in body["detail"], body

        # a body cut off mid-file (the client goes away): nothing is kept, the server goes on
        body, ctype = multipart({"raster": ("small.tif", Path(small_scene).read_bytes())}, {})
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(
                f"POST /v1/detections HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
            time.sleep(0.5)
        time.sleep(0.5)
        status, _, job = server.upload(small_scene)
        assert status == 202 and server.wait(job["id"])["state"] == "done"
        log = server.log_text()  # one request line for it, not a 60-line ASGI traceback
        assert "POST /v1/detections 400" in log and "Traceback" not in log and "Exception in ASGI" not in log, log
        assert os.listdir(server.data_dir / "uploads") == []
        assert os.listdir(server.data_dir / "jobs") == [job["id"]]  # only the good upload became a job
        assert server.request("POST", "/v1/detections", b"x", {"Content-Type": "text/plain"})[0] == 415
    finally:
        server.stop()


def test_tokens_isolate_callers_and_paths_stay_in_the_data_dir(tmp_path, model_path, small_scene):
    tokens = tmp_path / "tokens"
    alice, bob = "a" * 32, "b" * 32
    tokens.write_text(f"# one token per client\n{alice}\n\n{bob}\n")
    outside = tmp_path / "outside.tif"
    outside.write_bytes(Path(small_scene).read_bytes())
    server = Server(tmp_path / "data", model_path, "--token-file", str(tokens), token=alice)
    try:
        assert server.json("GET", "/health", token=None)[0] == 200
        for token in (None, "wrong" * 8, alice[:-1]):
            status, headers, _ = server.request("GET", "/v1/detections", token=token)
            assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert server.upload(small_scene, token="c" * 32)[0] == 401
        # the API description too (FastAPI serves its own without any check): token needed, docs pages off
        assert server.request("GET", "/openapi.json", token=None)[0] == 401
        assert server.request("GET", "/docs", token=None)[0] == server.request("GET", "/redoc")[0] == 404
        status, api = server.json("GET", "/openapi.json")
        assert status == 200 and "/v1/detections" in api["paths"] and "/openapi.json" not in api["paths"]
        assert os.listdir(server.data_dir / "uploads") == []

        status, _, job = server.upload(small_scene)
        assert status == 202
        server.wait(job["id"])
        assert server.json("GET", f"/v1/detections/{job['id']}", token=bob)[0] == 404
        assert server.json("GET", f"/v1/detections/{job['id']}/buildings", token=bob)[0] == 404
        assert server.json("DELETE", f"/v1/detections/{job['id']}", token=bob)[0] == 404
        assert server.json("GET", "/v1/detections", token=bob)[1] == {"detections": []}
        assert [j["id"] for j in server.json("GET", "/v1/detections")[1]["detections"]] == [job["id"]]
        record = (server.data_dir / "jobs" / job["id"] / "job.json").read_text()
        assert alice not in record  # only a hash of the token is stored

        (server.data_dir / "link.tif").symlink_to(outside)
        for name in (
            "../outside.tif",
            str(outside),
            "link.tif",
            f"jobs/{job['id']}/input.tif",
            "/vsicurl/http://127.0.0.1/x.tif",
            "http://127.0.0.1/x.tif",
        ):
            status, body = server.json("POST", "/v1/detections", {"raster": name})
            assert status == 403, (name, body)
        assert server.json("POST", "/v1/detections", {"raster": "missing.tif"})[0] == 422
    finally:
        server.stop()


def test_cancel_mid_job_and_full_queue(tmp_path, slow_model_path, big_scene, small_scene):
    server = Server(tmp_path / "data", slow_model_path, "--workers-queue", "1", "--batch-size", "1")
    try:
        status, _, running = server.upload(big_scene)
        assert status == 202
        job = server.wait(running["id"], states=("running",), timeout_s=60)
        deadline = time.monotonic() + 60
        while job["tiles_done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            job = server.json("GET", f"/v1/detections/{running['id']}")[1]
        assert job["state"] == "running" and 0 < job["tiles_done"] < job["tiles_total"]

        status, _, queued = server.upload(small_scene)
        assert status == 202 and queued["state"] == "queued"
        status, headers, body = server.upload(small_scene)
        assert status == 429 and int(headers["retry-after"]) >= 1 and "full" in body["detail"]
        assert server.json("GET", "/health")[1]["queue_length"] == 1

        status, body = server.json("DELETE", f"/v1/detections/{queued['id']}")
        assert status == 202 and server.json("GET", f"/v1/detections/{queued['id']}")[1]["state"] == "cancelled"
        status, body = server.json("DELETE", f"/v1/detections/{running['id']}")
        assert status == 202
        job = server.wait(running["id"], timeout_s=30)
        assert job["state"] == "cancelled" and job["tiles_done"] < job["tiles_total"]
        status, body = server.json("GET", f"/v1/detections/{running['id']}/buildings")
        assert status == 409 and "cancelled" in body["detail"]
        assert not (server.data_dir / "jobs" / running["id"] / "buildings.gpkg").exists()
        # the device is free again
        status, _, after = server.upload(small_scene)
        assert status == 202 and server.wait(after["id"])["state"] == "done"
    finally:
        server.stop()


def test_restart_mid_job_keeps_finished_results_and_fails_the_interrupted(
    tmp_path, slow_model_path, big_scene, small_scene
):
    data = tmp_path / "data"
    server = Server(data, slow_model_path, "--batch-size", "1")
    status, _, first = server.upload(small_scene)
    assert server.wait(first["id"])["state"] == "done"
    gpkg_before = server.request("GET", f"/v1/detections/{first['id']}/buildings?format=gpkg")[2]
    status, _, second = server.upload(big_scene)
    server.wait(second["id"], states=("running",))
    status, _, third = server.upload(small_scene)  # waits behind the running one
    server.stop(kill=True)  # SIGKILL: no chance to tidy up

    server = Server(data, slow_model_path, "--batch-size", "1")
    try:
        assert server.json("GET", f"/v1/detections/{first['id']}")[1]["state"] == "done"
        assert server.request("GET", f"/v1/detections/{first['id']}/buildings?format=gpkg")[2] == gpkg_before
        for job_id, was in ((second["id"], "running"), (third["id"], "queued")):
            job = server.json("GET", f"/v1/detections/{job_id}")[1]
            assert job["state"] == "failed" and f"while this job was {was}" in job["error"], job
        leftovers = [n for _, _, names in os.walk(data) for n in names if ".tmp" in n]
        assert leftovers == [] and os.listdir(data / "uploads") == []

        # SIGTERM (a clean stop) mid-job: the job is recorded failed at once, not left "running"
        status, _, fourth = server.upload(big_scene)
        server.wait(fourth["id"], states=("running",))
        assert server.stop() in (0, -15)  # uvicorn shuts down, then re-raises SIGTERM
        assert "Interrupted" in server.log_text()
        record = json.loads((data / "jobs" / fourth["id"] / "job.json").read_text())
        assert record["state"] == "failed" and "Interrupted" in record["error"]
    finally:
        server.stop()
