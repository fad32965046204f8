"""`python -m roof_detector solar` and `evaluate`, run in-process through the dispatcher."""

import csv
import json
from decimal import Decimal

import pytest
import shapely
from osgeo import ogr, osr

from roof_detector.cli import COMMANDS, main
from tests.core.geom_helpers import WGS84, metric_at, noisy_polygon, rotated_rect, transform_geom, utm_wkt

ogr.UseExceptions()
LON, LAT = 39.2434, -6.0549


def write_layer(path, geoms, crs_wkt, layer="buildings", names=None):
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    lyr = ds.CreateLayer(layer, srs, ogr.wkbMultiPolygon)
    lyr.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    lyr.CreateField(ogr.FieldDefn("kwp", ogr.OFTReal))  # clashes with a solar field
    for i, g in enumerate(geoms):
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetField("name", (names or {}).get(i, f"b{i}"))
        f.SetField("kwp", 99.0)
        f.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(shapely.MultiPolygon([g]))))
        lyr.CreateFeature(f)
    ds = None
    return str(path)


def read_layer(path, layer):
    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer)
    rows = []
    for f in lyr:
        d = {k: f.GetField(k) for k in f.keys()}
        d["_geom"] = shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb()))
        rows.append(d)
    return rows


@pytest.fixture
def cadastre(tmp_path):
    shapes = [
        rotated_rect(20, 10, 0),
        noisy_polygon(rotated_rect(15, 8, 30), 0.1, seed=2),
        shapely.Point(0, 0).buffer(6, quad_segs=16),
    ]
    placed = [metric_at(shapely.affinity.translate(g, 40 * i, 0), LON, LAT, WGS84) for i, g in enumerate(shapes)]
    return write_layer(tmp_path / "cadastre.gpkg", placed, WGS84)


def test_commands_are_registered():
    assert "solar" in COMMANDS and "evaluate" in COMMANDS


def test_solar_writes_attributes_and_report(tmp_path, cadastre, capsys):
    out = tmp_path / "roofs.gpkg"
    rc = main(["solar", cadastre, "-o", str(out), "--yield", "1500", "--report", str(tmp_path / "rep")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3 buildings" in text and "summary.html" in text
    rows = read_layer(out, "rooftops")
    assert len(rows) == 3
    r0 = rows[0]
    assert r0["name"] == "b0" and r0["src_fid"] == 1 and r0["src_kwp"] == 99.0
    assert r0["area_m2"] == pytest.approx(200, rel=1e-3)
    assert r0["usable_area_m2"] == pytest.approx(102.6, rel=1e-3)
    assert r0["panels"] == 52 and r0["kwp"] == pytest.approx(20.8)
    assert r0["annual_kwh"] == pytest.approx(20.8 * 1500)
    assert r0["orientation_deg"] == pytest.approx(90, abs=0.5)
    assert r0["confidence"] is None
    assert "shape" not in r0  # not regularised: no class, and an input's own `shape` field keeps its name
    with open(tmp_path / "rep" / "buildings.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert sum(int(t["panels"]) for t in table) == sum(r["panels"] for r in rows)
    # the report holds the values the GeoPackage holds (one rounding: core/precision.py)
    for t, r in zip(table, rows):
        for key in ("area_m2", "usable_area_m2", "kwp", "specific_yield", "annual_kwh", "orientation_deg"):
            assert float(t[key]) == r[key], key
    html = (tmp_path / "rep" / "summary.html").read_text()
    total_kwp = sum((Decimal(t["kwp"]) for t in table), Decimal(0))
    assert f"{float(total_kwp):,.2f}" in html


def test_solar_regularize_squares_only_the_rectilinear(tmp_path, cadastre, capsys):
    out = tmp_path / "roofs.gpkg"
    assert main(["solar", cadastre, "-o", str(out), "--regularize", "--tolerance", "1"]) == 0
    assert "regularised" in capsys.readouterr().out
    rows = read_layer(out, "rooftops")
    src = read_layer(cadastre, "buildings")
    noisy_in, noisy_out = src[1]["_geom"], rows[1]["_geom"]
    assert len(noisy_out.geoms[0].exterior.coords) == 5 < len(noisy_in.geoms[0].exterior.coords)
    assert rows[2]["_geom"].equals(src[2]["_geom"])  # the round tank is kept
    assert [r["shape"] for r in rows[1:3]] == ["rectilinear", "curved"]  # and the layer says which
    # default latitude estimate near the equator
    assert 1500 < rows[0]["specific_yield"] < 1650


def test_solar_refuses_to_clobber_and_bad_parameters(tmp_path, cadastre, capsys):
    out = tmp_path / "roofs.gpkg"
    assert main(["solar", cadastre, "-o", str(out)]) == 0
    assert main(["solar", cadastre, "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["solar", cadastre, "-o", str(out), "--overwrite", "--setback", "0"]) == 0
    with pytest.raises(SystemExit) as usage:  # argparse refuses it from the declaration (core.params)
        main(["solar", cadastre, "-o", str(tmp_path / "x.gpkg"), "--usable-fraction", "2"])
    assert usage.value.code == 2 and "Usable fraction must be from 0 to 1, got 2" in capsys.readouterr().err
    assert main(["solar", str(tmp_path / "missing.gpkg"), "-o", str(tmp_path / "y.gpkg")]) == 2
    assert main(["solar", cadastre, "-o", str(tmp_path / "z.gpkg"), "--layer", "nope"]) == 2


def test_evaluate_prints_json_with_known_values(tmp_path, capsys):
    utm = utm_wkt(LON, LAT)
    x0, y0 = (round(v) for v in transform_geom(shapely.Point(LON, LAT), WGS84, utm).coords[0])
    ref = [shapely.box(x0, y0, x0 + 10, y0 + 10), shapely.box(x0 + 20, y0, x0 + 30, y0 + 10)]
    pred = [shapely.box(x0 + 5, y0, x0 + 15, y0 + 10), shapely.box(x0 + 20, y0, x0 + 30, y0 + 10)]
    ref_path = write_layer(tmp_path / "ref.gpkg", ref, utm)
    pred_path = write_layer(tmp_path / "pred.gpkg", [transform_geom(g, utm, WGS84) for g in pred], WGS84)
    extent = ["--extent", str(x0), str(y0), str(x0 + 40), str(y0 + 10), "--pixel-size", "0.5"]
    evaluate = ["evaluate", "--reference", ref_path, "--predicted", pred_path, *extent]
    rc = main([*evaluate, "--crs", "EPSG:32737", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    # tp = 50 + 100 m², fp = 50, fn = 50 (m², 0.25 m² pixels): IoU = 150 / 250
    assert d["pixel"]["iou"] == pytest.approx(0.6, abs=0.01)
    assert d["object"]["matched"] == 1 and d["object"]["predicted"] == 2 and d["object"]["reference"] == 2
    assert d["object"]["precision"] == 0.5 and d["object"]["recall"] == 0.5
    rc = main(evaluate)
    out = capsys.readouterr().out
    assert rc == 0 and "iou" in out and "matched    1" in out


def test_evaluate_needs_a_grid(tmp_path, capsys):
    ref = write_layer(tmp_path / "ref.gpkg", [shapely.box(0, 0, 1, 1)], utm_wkt(LON, LAT))
    assert main(["evaluate", "--reference", ref, "--predicted", ref]) == 2
    assert "--raster" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--pixel-size", "nan"], ["--pixel-size", "-1"], ["--crs", "EPSG:3857"]])
def test_evaluate_refuses_grid_options_a_raster_would_ignore(tmp_path, capsys, extra):
    """Issue 21 sweep rerun: with --raster, `--pixel-size nan` (or -1, 0, inf) ran and exited 0."""
    import numpy as np
    from affine import Affine

    from tests.core.synthetic_rasters import UTM, UTM_ORIGIN, write_raster

    raster = write_raster(
        tmp_path / "r.tif", np.zeros((3, 32, 32), np.uint8), UTM, Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1])
    )
    box = shapely.box(UTM_ORIGIN[0] + 2, UTM_ORIGIN[1] - 8, UTM_ORIGIN[0] + 8, UTM_ORIGIN[1] - 2)
    from pyproj import CRS

    layer = write_layer(tmp_path / "l.gpkg", [box], CRS.from_user_input(UTM).to_wkt())
    code = main(["evaluate", "--reference", str(layer), "--predicted", str(layer), "--raster", str(raster), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "--pixel-size and --crs go with --extent" in err


def test_report_csv_holds_the_geopackage_values(tmp_path, cadastre):
    # A yield that leaves fractions of a kWh: the CSV rounds as the GeoPackage (1 kWh/yr, 0.01 kWp),
    # where it used to keep 0.1 kWh and 0.001 kWp of its own.
    out = tmp_path / "roofs.gpkg"
    assert main(["solar", cadastre, "-o", str(out), "--yield", "1234.5", "--report", str(tmp_path / "rep")]) == 0
    rows = read_layer(out, "rooftops")
    with open(tmp_path / "rep" / "buildings.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert any(r["annual_kwh"] != r["kwp"] * 1234.5 for r in rows)  # rounding happened
    for t, r in zip(table, rows):
        for key in ("area_m2", "usable_area_m2", "kwp", "specific_yield", "annual_kwh", "orientation_deg"):
            assert float(t[key]) == r[key], key
