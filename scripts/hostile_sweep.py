"""A hostile-input sweep of the CLI (issue 21's classes, fresh inputs); not shipped in the plugin zip.

    nice -n 10 .venv/bin/python scripts/hostile_sweep.py [--budget-min 18] [--out sweep.jsonl]

Runs ``python -m roof_detector`` (detect, solar, evaluate, finetune, detect-many)
on generated hostile inputs: every numeric option at nan / -inf / 0 / -0 / -1 /
1e-320 / 1e309, corrupt and truncated files, odd CRSs, curve and Z/M geometries,
clashing field names, unusable destinations (read-only and full tmpfs, a folder,
SQL in a layer name), closed or full output streams, SIGINT / SIGTERM at random
moments, and address-space caps (``prlimit --as``). Each result is classified:

    traceback   "Traceback" or "Exception ignored" in the output
    abort       killed by a signal we did not send, or status 134 / 139
    hang        still running at the case's time limit
    suspicious  exit 0 where a refusal was due, a non-finite or negative number
                in the output, or temporary files left behind
    refusal     a non-zero exit with an error line and no traceback
    ok          exit 0 where it was due (or the expected 130 / 143 after a signal)

Mounting the tmpfs needs root; those cases are skipped otherwise. The table at
the end counts cases per class and verdict; ``--out`` keeps every case as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
BAD_NUMBERS = ["nan", "-inf", "0", "-0.0", "-1", "1e-320", "1e309"]


@dataclass
class Case:
    name: str
    kind: str  # the class of hostile input
    argv: List[str]
    expect: str = "refuse"  # refuse | ok | either | signal
    timeout_s: float = 90
    shell_suffix: str = ""  # e.g. ">&-" (run through the shell)
    prefix: List[str] = field(default_factory=list)  # e.g. prlimit
    signal_after_s: Optional[float] = None
    sig: int = signal.SIGINT
    check: Optional[Callable[[], str]] = None  # "" or what is wrong with the result
    watch: Optional[Path] = None  # folder that must hold no temporary afterwards


def _cli(*args) -> List[str]:
    return [sys.executable, "-m", "roof_detector", *map(str, args)]


def _finetune_args(p: Dict[str, Path], out, *extra, labels=None) -> List:
    """``finetune`` arguments: the sweep's small raster and labels (or ``labels``) onto the base model, on the CPU."""
    labels = p["ft_labels"] if labels is None else labels
    return [
        "finetune",
        "--raster",
        p["ft_raster"],
        "--labels",
        labels,
        "-o",
        out,
        "--base-model",
        p["base"],
        "--device",
        "cpu",
        *extra,
    ]


# --------------------------------------------------------------------------- inputs


def make_inputs(root: Path) -> Dict[str, Path]:
    """Every input file the cases use, generated under ``root``."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import rasterio
    from affine import Affine
    from osgeo import ogr, osr

    from devtools.test_model import make_test_model

    p: Dict[str, Path] = {"root": root}
    p["model"] = Path(make_test_model(str(root / "bright.pt"), gsd_m=0.5, tile_size_px=64, overlap_px=8))
    # fine-tuning needs a trainable architecture: the tests' tiny plain U-Net, raster and outlines
    from tests.core.finetune_setup import building_rects, ring, write_base_model, write_ortho

    p["base"] = Path(write_base_model(str(root / "tiny_base.pt")))
    rects = building_rects()
    p["ft_raster"] = Path(write_ortho(str(root / "ft.tif"), rects))

    def raster(name, size, crs, transform=None, dtype="uint8", count=3):
        data = np.full((count, size, size), 30, dtype)
        for k in range(0, size - 40, 60):
            data[:, k + 10 : k + 40, k + 10 : k + 50] = 220
        profile = dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype)
        profile["transform"] = transform or Affine(0.5, 0, 500000, 0, -0.5, 5000000)
        if crs:
            profile["crs"] = crs
        path = root / name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    p["r"] = raster("r.tif", 200, "EPSG:32631")
    p["big"] = raster("big.tif", 2000, "EPSG:32631")
    p["r3857"] = raster("r3857.tif", 200, "EPSG:3857", Affine(0.5, 0, 261000, 0, -0.5, 6250000))
    p["rftus"] = raster("rftus.tif", 200, "EPSG:2263", Affine(1.6, 0, 980000, 0, -1.6, 200000))  # US feet
    p["rlocal"] = raster("rlocal.tif", 200, 'LOCAL_CS["site grid",UNIT["metre",1]]')
    p["rnocrs"] = raster("rnocrs.tif", 200, None)
    p["rfloat"] = raster("rfloat.tif", 200, "EPSG:32631", dtype="float32")
    p["r16"] = raster("r16.tif", 200, "EPSG:32631", dtype="uint16")
    p["rgeo"] = raster("rgeo.tif", 200, "EPSG:4326", Affine(0.000005, 0, 3.0, 0, -0.000005, 45.0))
    p["r1band"] = raster("r1band.tif", 200, "EPSG:32631", count=1)
    # corrupt files
    good = p["r"].read_bytes()
    (root / "random.tif").write_bytes(random.Random(1).randbytes(50_000))
    (root / "header_only.tif").write_bytes(good[:600])
    (root / "empty.tif").write_bytes(b"")
    flipped = bytearray(good)
    for i in range(2000, len(flipped), 997):
        flipped[i] ^= 0xFF
    (root / "flipped.tif").write_bytes(bytes(flipped))
    (root / "text.gpkg").write_text("not a geopackage")
    (root / "bad.geojson").write_text('{"type": "FeatureCollection", "features": [')
    (root / "nulls.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": None},
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": []}},
                ],
            }
        )
    )
    (root / "random.pt").write_bytes(random.Random(2).randbytes(20_000))
    (root / "random.onnx").write_bytes(random.Random(3).randbytes(20_000))
    p["zip_model"] = root / "zip.pt"
    import zipfile

    with zipfile.ZipFile(p["zip_model"], "w") as z:
        z.writestr("archive/extra/metadata.json", "{not json")
        z.writestr("archive/data.pkl", b"\x80\x04junk")
    # vector layers: buildings from a real detection on r.tif, then hostile variants
    p["labels"] = root / "labels.gpkg"
    p["own"] = root / "own.gpkg"
    subprocess.run(
        _cli("detect", p["r"], "-o", p["labels"], "--model", p["model"], "--device", "cpu"),
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    shutil.copy(p["labels"], p["own"])
    ds = ogr.Open(str(p["labels"]))
    rings = [f.GetGeometryRef().ExportToWkt() for f in ds.GetLayer(0)]
    ds = None
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)

    def layer(name, geom_type, wkts, fields=(), values=None, srs_=srs):
        path = root / name
        out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
        # geometry and FID columns named apart, so that attributes may be called "geom" and "fid"
        lyr = out.CreateLayer("l", srs_, geom_type, ["GEOMETRY_NAME=shape", "FID=ogc_fid"])
        for fname, ftype in fields:
            lyr.CreateField(ogr.FieldDefn(fname, ftype))
        for i, wkt in enumerate(wkts):
            feat = ogr.Feature(lyr.GetLayerDefn())
            feat.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
            for fname, value in (values or {}).items():
                feat.SetField(fname, value)
            lyr.CreateFeature(feat)
        out = None
        return path

    x, y = 500020.0, 4999960.0
    circle = f"CIRCULARSTRING({x} {y},{x + 10} {y + 10},{x + 20} {y},{x + 10} {y - 10},{x} {y})"
    p["multisurface"] = layer("multisurface.gpkg", ogr.wkbMultiSurface, [f"MULTISURFACE(CURVEPOLYGON({circle}))"])
    p["compound"] = layer(
        "compound.gpkg",
        ogr.wkbCurvePolygon,
        [f"CURVEPOLYGON(COMPOUNDCURVE(({x} {y},{x + 20} {y}),CIRCULARSTRING({x + 20} {y},{x + 10} {y + 8},{x} {y})))"],
    )
    p["zm"] = layer(
        "zm.gpkg",
        ogr.wkbPolygonZM,
        [f"POLYGON ZM (({x} {y} 5 1,{x + 12} {y} 5 1,{x + 12} {y + 9} 7 1,{x} {y + 9} 7 1,{x} {y} 5 1))"],
    )
    clash = [
        ("geom", ogr.OFTString),
        ("fid", ogr.OFTInteger),
        ("area_m2", ogr.OFTString),
        ("Area_M2_2", ogr.OFTReal),
        ("src_area_m2", ogr.OFTReal),
        ("kwp", ogr.OFTString),
        ("panels", ogr.OFTReal),
        ("select", ogr.OFTString),
        ("a b;c", ogr.OFTString),
    ]
    values = {
        "geom": "x",
        "fid": 7,
        "area_m2": "big",
        "Area_M2_2": 1.0,
        "src_area_m2": 2.0,
        "kwp": "lots",
        "panels": -1.0,
        "select": "*",
        "a b;c": "'",
    }
    p["clash"] = layer("clash.gpkg", ogr.wkbPolygon, rings, clash, values)
    p["empty_layer"] = layer("empty_layer.gpkg", ogr.wkbPolygon, [])
    p["degenerate"] = layer(
        "degenerate.gpkg",
        ogr.wkbPolygon,
        [
            f"POLYGON(({x} {y},{x} {y},{x} {y},{x} {y}))",
            f"POLYGON(({x} {y},{x + 10} {y + 10},{x + 10} {y},{x} {y + 10},{x} {y}))",  # bow tie
            f"POLYGON(({x} {y},{x + 1e-9} {y},{x + 1e-9} {y + 1e-9},{x} {y}))",
        ],
    )
    merc = osr.SpatialReference()
    merc.ImportFromEPSG(3857)
    p["labels_3857"] = layer("labels_3857.gpkg", ogr.wkbPolygon, ["POLYGON((0 0,0 1e7,1e7 1e7,1e7 0,0 0))"], srs_=merc)
    huge = f"POLYGON(({x} {y},{x + 1e6} {y},{x + 1e6} {y + 1e6},{x} {y + 1e6},{x} {y}))"
    p["huge_poly"] = layer("huge_poly.gpkg", ogr.wkbPolygon, [huge])
    p["ft_labels"] = layer(
        "ft_labels.gpkg",
        ogr.wkbPolygon,
        ["POLYGON((" + ",".join(f"{a} {b}" for a, b in ring(*q)) + "))" for q in rects],
    )
    # a list file for detect-many with a missing entry and a directory
    (root / "list.txt").write_text(f"{p['r']}\n{root / 'missing.tif'}\n")
    (root / "rasters").mkdir()
    (root / "outdir").mkdir()
    return p


# --------------------------------------------------------------------------- checks of a result


def gpkg_numbers_problem(path: Path) -> str:
    """ "" when every number in the GeoPackage is finite and none of area/kWp/panels is negative."""
    from osgeo import ogr

    if not path.exists():
        return "exit 0 but no output file"
    ds = ogr.Open(str(path))
    problems = []
    for i in range(ds.GetLayerCount()):
        lyr = ds.GetLayer(i)
        defn = lyr.GetLayerDefn()
        numeric = [
            defn.GetFieldDefn(k).GetName()
            for k in range(defn.GetFieldCount())
            if defn.GetFieldDefn(k).GetType() in (ogr.OFTReal, ogr.OFTInteger, ogr.OFTInteger64)
        ]
        for feat in lyr:
            for name in numeric:
                value = feat.GetField(name)
                if value is None:
                    continue
                if not math.isfinite(value):
                    problems.append(f"{name}={value}")
                elif value < 0 and name.lower() in ("area_m2", "kwp", "panels", "usable_area_m2", "kwh_per_yr"):
                    problems.append(f"{name}={value}")
    ds = None
    return ", ".join(sorted(set(problems))[:5])


def _layer_count(path: Path, layer: str) -> int:
    from osgeo import ogr

    ds = ogr.Open(str(path))
    try:
        return ds.GetLayerByName(layer).GetFeatureCount()
    finally:
        ds = None


def leftovers(folder: Optional[Path]) -> str:
    if folder is None or not folder.is_dir():
        return ""
    left = [n for n in os.listdir(folder) if ".tmp." in n or n.endswith("-journal") or n.endswith("-wal")]
    return ("temporaries left: " + ", ".join(left)) if left else ""


# --------------------------------------------------------------------------- running


def _default_signals() -> None:
    """A sweep started in the background by a shell inherits SIGINT ignored: undo it for the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_case(case: Case) -> Dict[str, object]:
    t0 = time.monotonic()
    argv = case.prefix + case.argv
    if case.shell_suffix:
        cmd = " ".join(f"'{a}'" for a in argv) + " " + case.shell_suffix
        proc = subprocess.Popen(
            cmd, shell=True, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_signals
        )
    else:
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_signals
        )
    sent = None
    try:
        if case.signal_after_s is not None:
            try:
                proc.wait(timeout=case.signal_after_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(case.sig)
                sent = case.sig
        out, err = proc.communicate(timeout=case.timeout_s)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    text = (out + err).decode(errors="replace")
    rc = proc.returncode
    verdict, why = classify(case, rc, text, hung, sent)
    return {
        "name": case.name,
        "kind": case.kind,
        "rc": rc,
        "verdict": verdict,
        "why": why,
        "seconds": round(time.monotonic() - t0, 1),
        "tail": text.strip().splitlines()[-1][:300] if text.strip() else "",
    }


def classify(case: Case, rc: int, text: str, hung: bool, sent: Optional[int]):
    if hung:
        return "hang", f"still running after {case.timeout_s} s"
    if "Traceback (most recent call last)" in text or "Exception ignored" in text:
        return "traceback", text[text.find("Traceback") :][-400:] if "Traceback" in text else "Exception ignored"
    expected_signal_status = {signal.SIGINT: 130, signal.SIGTERM: 143}.get(sent)
    if rc < 0 or rc in (134, 139):
        return "abort", f"status {rc}"
    left = leftovers(case.watch)
    if left:
        return "suspicious", left
    if sent is not None:
        if rc == expected_signal_status and ("interrupted" in text or "terminated" in text):
            return "ok", f"{signal.Signals(sent).name} -> {rc}"
        return ("ok", "finished before the signal") if rc == 0 else ("suspicious", f"status {rc} after a signal")
    if rc == 0:
        if case.expect == "refuse":
            return "suspicious", "exit 0 where a refusal was due"
        problem = case.check() if case.check else ""
        return ("suspicious", problem) if problem else ("ok", "")
    if case.expect == "ok":
        return "refusal", "refused a valid case: " + (text.strip().splitlines() or [""])[-1][:200]
    return "refusal", ""


# --------------------------------------------------------------------------- the cases


NUMERIC = {
    "detect": [
        "--threshold",
        "--min-area",
        "--batch-size",
        "--setback",
        "--usable-fraction",
        "--panel-area",
        "--panel-wp",
        "--yield",
        "--tolerance",
    ],
    "solar": ["--setback", "--usable-fraction", "--panel-area", "--panel-wp", "--yield", "--tolerance"],
    "evaluate": ["--pixel-size", "--iou-threshold"],
    "finetune": [
        "--epochs",
        "--lr",
        "--batch-size",
        "--val-fraction",
        "--patience",
        "--samples-per-epoch",
        "--max-minutes",
        "--seed",
    ],
    "detect-many": ["--workers", "--threads-per-worker", "--margin-m", "--block-px"],
}


def numeric_cases(p: Dict[str, Path]) -> List[Case]:
    out = p["root"] / "num"
    out.mkdir(exist_ok=True)
    base = {
        "detect": lambda o: ["detect", p["r"], "-o", o, "--model", p["model"], "--device", "cpu"],
        "solar": lambda o: ["solar", p["labels"], "-o", o],
        "evaluate": lambda o: ["evaluate", "--reference", p["labels"], "--predicted", p["labels"], "--raster", p["r"]],
        "finetune": lambda o: _finetune_args(
            p, str(o).replace(".gpkg", ".pt"), "--epochs", "1", "--samples-per-epoch", "8", "--max-minutes", "1"
        ),
        "detect-many": lambda o: ["detect-many", p["r"], "-o", o, "--model", p["model"], "--device", "cpu"],
    }
    cases = []
    for command, options in NUMERIC.items():
        for option in options:
            for value in BAD_NUMBERS:
                o = out / f"{command}{option}{value}.gpkg".replace("-", "_")
                argv = base[command](o)
                # the option given twice: argparse keeps the last (the sweep's value)
                cases.append(
                    Case(
                        f"{command} {option} {value}",
                        "numbers",
                        _cli(*argv, f"{option}={value}"),
                        expect="either",
                        check=(lambda o=o: gpkg_numbers_problem(o)) if command in ("detect", "solar") else None,
                        watch=out,
                        timeout_s=240 if command in ("finetune", "detect-many") else 120,
                    )
                )
    return cases


def other_cases(p: Dict[str, Path], rng: random.Random, root_ok: bool) -> List[Case]:
    r, model, labels, root = p["r"], p["model"], p["labels"], p["root"]
    o = root / "o"
    o.mkdir(exist_ok=True)

    def det(raster, name, *extra, expect="refuse", **kw):
        out = o / f"{name}.gpkg"
        return Case(
            f"detect {name}",
            kw.pop("kind", "inputs"),
            _cli("detect", raster, "-o", out, "--model", model, "--device", "cpu", *extra),
            expect=expect,
            check=lambda: gpkg_numbers_problem(out),
            watch=o,
            **kw,
        )

    def sol(layer, name, *extra, expect="refuse", **kw):
        out = o / f"solar_{name}.gpkg"
        return Case(
            f"solar {name}",
            kw.pop("kind", "geometry"),
            _cli("solar", layer, "-o", out, *extra),
            expect=expect,
            check=lambda: gpkg_numbers_problem(out),
            watch=o,
            **kw,
        )

    cases = [
        # corrupt files
        det(root / "random.tif", "random_bytes", kind="corrupt files"),
        det(root / "header_only.tif", "header_only", kind="corrupt files"),
        det(root / "empty.tif", "empty_file", kind="corrupt files"),
        det(root / "flipped.tif", "flipped_bytes", expect="either", kind="corrupt files"),
        det(r, "model_random_pt", "--model", root / "random.pt", kind="corrupt files"),
        det(r, "model_random_onnx", "--model", root / "random.onnx", kind="corrupt files"),
        det(r, "model_bad_zip", "--model", p["zip_model"], kind="corrupt files"),
        det(r, "model_is_raster", "--model", r, kind="corrupt files"),
        det(root / "text.gpkg", "raster_is_text", kind="corrupt files"),
        sol(root / "bad.geojson", "bad_json", kind="corrupt files"),
        sol(root / "text.gpkg", "text_gpkg", kind="corrupt files"),
        sol(root / "nulls.geojson", "null_geometries", expect="either", kind="corrupt files"),
        Case(
            "evaluate corrupt reference",
            "corrupt files",
            _cli("evaluate", "--reference", root / "bad.geojson", "--predicted", labels, "--raster", r),
        ),
        # CRSs
        det(p["r3857"], "crs_3857", expect="ok", kind="crs"),
        det(p["rftus"], "crs_us_feet", expect="either", kind="crs"),
        det(p["rlocal"], "crs_local_cs", expect="either", kind="crs"),
        det(p["rnocrs"], "crs_none", kind="crs"),
        det(p["rgeo"], "crs_4326", expect="either", kind="crs"),
        det(p["rfloat"], "float32_raster", expect="ok", kind="crs"),
        det(p["r16"], "uint16_raster", expect="ok", kind="crs"),
        det(p["r1band"], "one_band", expect="either", kind="crs"),
        Case(
            "evaluate extent in 3857 vs labels 32631",
            "crs",
            _cli(
                "evaluate",
                "--reference",
                labels,
                "--predicted",
                p["labels_3857"],
                "--extent",
                "0",
                "0",
                "100",
                "100",
                "--pixel-size",
                "1",
                "--crs",
                "EPSG:3857",
            ),
            expect="either",
        ),
        Case(
            "evaluate --crs bogus",
            "crs",
            _cli(
                "evaluate",
                "--reference",
                labels,
                "--predicted",
                labels,
                "--extent",
                "0",
                "0",
                "100",
                "100",
                "--pixel-size",
                "1",
                "--crs",
                "EPSG:999999",
            ),
        ),
        # geometries and fields
        sol(p["multisurface"], "multisurface", expect="ok"),
        sol(p["compound"], "compound_curve", expect="ok"),
        sol(p["zm"], "polygon_zm", expect="ok"),
        sol(p["degenerate"], "degenerate", expect="either"),
        sol(p["empty_layer"], "empty_layer", expect="either"),
        sol(p["huge_poly"], "huge_polygon", expect="either"),
        sol(p["clash"], "clashing_fields", expect="ok", kind="fields"),
        Case(
            "evaluate curves vs labels",
            "geometry",
            _cli("evaluate", "--reference", p["compound"], "--predicted", p["multisurface"], "--raster", r),
            expect="either",
        ),
        Case(
            "finetune with curve labels",
            "geometry",
            _cli(
                *_finetune_args(
                    p, o / "ft_curve.pt", "--epochs", "1", "--samples-per-epoch", "8", labels=p["multisurface"]
                )
            ),
            expect="either",
            timeout_s=300,
            watch=o,
        ),
        # destinations
        det(r, "layer_sql", "--layer", 'x"; DROP TABLE gpkg_contents; --', expect="either", kind="destinations"),
        det(r, "layer_empty", "--layer", "", kind="destinations"),
        det(r, "layer_long", "--layer", "L" * 400, expect="either", kind="destinations"),
        det(r, "layer_rtree", "--layer", "rtree_buildings_geom", kind="destinations"),
        Case(
            "detect -o a folder",
            "destinations",
            _cli("detect", r, "-o", root / "outdir", "--model", model, "--device", "cpu"),
        ),
        Case(
            "detect -o into a missing folder",
            "destinations",
            _cli("detect", r, "-o", root / "nowhere" / "x.gpkg", "--model", model, "--device", "cpu"),
            expect="either",
        ),
        Case(
            "detect -o the input raster",
            "destinations",
            _cli("detect", r, "-o", r, "--model", model, "--device", "cpu"),
        ),
        Case(
            "solar -o its own input (a new layer beside the input layer)",
            "destinations",
            _cli("solar", p["own"], "-o", p["own"]),
            expect="either",
            check=lambda: "" if _layer_count(p["own"], "buildings") == 3 else "the input layer changed",
        ),
        Case(
            "finetune -o the raster",
            "destinations",
            _cli("finetune", "--raster", r, "--labels", labels, "-o", r, "--base-model", p["base"], "--device", "cpu"),
        ),
        Case(
            "detect-many -o a .shp",
            "destinations",
            _cli("detect-many", r, "-o", o / "x.shp", "--model", model, "--device", "cpu"),
        ),
        Case(
            "detect-many list with a missing file",
            "inputs",
            _cli("detect-many", root / "list.txt", "-o", o / "many_list.gpkg", "--model", model, "--device", "cpu"),
            expect="either",
            timeout_s=240,
            watch=o,
        ),
        Case(
            "detect-many an empty folder",
            "inputs",
            _cli("detect-many", root / "rasters", "-o", o / "many_empty.gpkg", "--model", model, "--device", "cpu"),
            timeout_s=240,
        ),
        # streams
        Case(
            "detect stdout closed",
            "streams",
            _cli("detect", r, "-o", o / "s1.gpkg", "--model", model, "--device", "cpu"),
            expect="either",
            shell_suffix=">&-",
        ),
        Case(
            "solar stdout to /dev/full",
            "streams",
            _cli("solar", labels, "-o", o / "s2.gpkg"),
            expect="either",
            shell_suffix="> /dev/full",
        ),
        Case(
            "evaluate --json stderr and stdout closed",
            "streams",
            _cli("evaluate", "--reference", labels, "--predicted", labels, "--raster", r, "--json"),
            expect="either",
            shell_suffix=">&- 2>&-",
        ),
        Case(
            "detect stderr to /dev/full",
            "streams",
            _cli("detect", r, "-o", o / "s3.gpkg", "--model", model, "--device", "cpu"),
            expect="either",
            shell_suffix="2> /dev/full",
        ),
    ]
    # signals at random moments
    for command, make_argv in (
        ("detect", lambda k: _cli("detect", p["big"], "-o", o / f"sig_d{k}.gpkg", "--model", model, "--device", "cpu")),
        ("solar", lambda k: _cli("solar", labels, "-o", o / f"sig_s{k}.gpkg", "--report", o / f"sig_report{k}")),
        (
            "finetune",
            lambda k: _cli(*_finetune_args(p, o / f"sig_f{k}.pt", "--epochs", "2")),
        ),
        (
            "detect-many",
            lambda k: _cli("detect-many", p["big"], "-o", o / f"sig_m{k}.gpkg", "--model", model, "--device", "cpu"),
        ),
    ):
        for sig in (signal.SIGINT, signal.SIGTERM):
            delay = round(rng.uniform(0.5, 12.0), 1)
            cases.append(
                Case(
                    f"{command} {signal.Signals(sig).name} after {delay} s",
                    "signals",
                    make_argv(signal.Signals(sig).name),
                    expect="signal",
                    signal_after_s=delay,
                    sig=sig,
                    timeout_s=60,
                    watch=o,
                )
            )
    # memory caps
    for cap in ("700M", "1500M"):
        cases.append(
            Case(
                f"detect under prlimit --as={cap}",
                "memory caps",
                _cli("detect", p["big"], "-o", o / f"cap_{cap}.gpkg", "--model", model, "--device", "cpu"),
                expect="either",
                prefix=["prlimit", f"--as={_bytes(cap)}"],
                timeout_s=240,
                watch=o,
            )
        )
    cases.append(
        Case(
            "finetune under prlimit --as=1500M",
            "memory caps",
            _cli(*_finetune_args(p, o / "cap_ft.pt", "--epochs", "1")),
            expect="either",
            prefix=["prlimit", f"--as={_bytes('1500M')}"],
            timeout_s=240,
            watch=o,
        )
    )
    if root_ok:
        cases += tmpfs_cases(p)
    return cases


def _bytes(text: str) -> int:
    return int(text[:-1]) * (1 << 20)


def _mount(path: Path, options: str) -> bool:
    path.mkdir(exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )


MOUNTS: List[Path] = []


def tmpfs_cases(p: Dict[str, Path]) -> List[Case]:
    root, r, model, labels = p["root"], p["r"], p["model"], p["labels"]
    ro, full = root / "ro", root / "full"
    cases: List[Case] = []
    if _mount(ro, "size=1m,ro"):
        MOUNTS.append(ro)
        cases += [
            Case(
                "detect onto a read-only tmpfs",
                "destinations",
                _cli("detect", r, "-o", ro / "x.gpkg", "--model", model),
            ),
            Case(
                "solar --report onto a read-only tmpfs",
                "destinations",
                _cli("solar", labels, "-o", root / "o" / "ro_s.gpkg", "--report", ro / "rep"),
            ),
            Case(
                "detect-many --work-dir on a read-only tmpfs",
                "destinations",
                _cli("detect-many", r, "-o", root / "o" / "ro_m.gpkg", "--model", model, "--work-dir", ro / "w"),
                timeout_s=240,
            ),
        ]
    if _mount(full, "size=300k"):
        MOUNTS.append(full)
        st = os.statvfs(full)
        with open(full / ".filler", "wb") as fh:
            fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 40_000))
        cases += [
            Case(
                "detect onto a full tmpfs",
                "destinations",
                _cli("detect", p["big"], "-o", full / "x.gpkg", "--model", model, "--device", "cpu"),
                watch=full,
                timeout_s=240,
            ),
            Case(
                "solar --report onto a full tmpfs",
                "destinations",
                _cli("solar", labels, "-o", root / "o" / "full_s.gpkg", "--report", full / "rep"),
                watch=full,
            ),
            Case(
                "finetune onto a full tmpfs",
                "destinations",
                _cli(*_finetune_args(p, full / "m.pt", "--epochs", "1")),
                watch=full,
                timeout_s=300,
            ),
            Case(
                "detect-many --work-dir on a full tmpfs",
                "destinations",
                _cli(
                    "detect-many",
                    r,
                    "-o",
                    root / "o" / "full_m.gpkg",
                    "--model",
                    model,
                    "--device",
                    "cpu",
                    "--work-dir",
                    full / "w",
                ),
                watch=full,
                timeout_s=240,
            ),
        ]
    return cases


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=18.0, help="stop starting cases after this many minutes")
    ap.add_argument("--out", default=None, help="JSON lines of every case")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--kinds", default=None, help="run only these classes, comma-separated (e.g. numbers,signals)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="hostile-sweep-"))
    root_ok = os.geteuid() == 0
    t_start = time.monotonic()
    results = []
    try:
        p = make_inputs(root)
        cases = other_cases(p, rng, root_ok) + numeric_cases(p)
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        if args.kinds:
            cases = [c for c in cases if c.kind in args.kinds.split(",")]
        sink = open(args.out, "w") if args.out else None
        for i, case in enumerate(cases):
            if time.monotonic() - t_start > args.budget_min * 60:
                print(f"budget spent: {len(cases) - i} cases not run", file=sys.stderr)
                break
            result = run_case(case)
            results.append(result)
            line = json.dumps(result)
            if sink:
                sink.write(line + "\n")
                sink.flush()
            flag = "" if result["verdict"] in ("ok", "refusal") else "  <<<"
            print(
                f"[{i + 1}/{len(cases)}] {result['verdict']:10} {case.name} ({result['seconds']} s){flag}", flush=True
            )
            if flag:
                print(f"      {result['why'][:400]}\n      last line: {result['tail']}", flush=True)
    finally:
        for mount in MOUNTS:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    table = Counter((r["kind"], r["verdict"]) for r in results)
    verdicts = ["traceback", "abort", "hang", "suspicious", "refusal", "ok"]
    kinds = sorted({r["kind"] for r in results})
    print("\n| class | cases | " + " | ".join(verdicts) + " |")
    print("|---|---|" + "---|" * len(verdicts))
    for kind in kinds:
        row = [table[(kind, v)] for v in verdicts]
        print(f"| {kind} | {sum(row)} | " + " | ".join(map(str, row)) + " |")
    total = [sum(table[(k, v)] for k in kinds) for v in verdicts]
    print(f"| all | {sum(total)} | " + " | ".join(map(str, total)) + " |")
    print(f"\n{len(results)} cases in {(time.monotonic() - t_start) / 60:.1f} min; inputs in {root}")
    return 1 if any(total[:4]) else 0


if __name__ == "__main__":
    sys.exit(main())
