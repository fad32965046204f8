"""`solar` never drops, merges or shifts a user's column (issue 21).

Release 0.2.0 lost the original ``area_m2``/``kwp`` when the input also held
``src_area_m2``/``src_kwp``, failed on its own output ("duplicate column name:
attr_confidence") and read ``NAME``'s value into ``name``.
"""

import json
import os

import pytest
import shapely

from roof_detector.cli import main
from tests.core.geom_helpers import WGS84, metric_at, rotated_rect

from .test_solar_evaluate_cli import LAT, LON, read_layer

# Every name the sizing might pick for a clashing column, and case-only twins.
HOSTILE = {
    "area_m2": 1.5,
    "src_area_m2": 2.5,
    "src_area_m2_2": 3.5,
    "kwp": 4.5,
    "src_kwp": 5.5,
    "confidence": 6.5,
    "attr_confidence": 7.5,
    "src_confidence": 8.5,
    "src_fid": 9.5,
    "src_src_fid": 10.5,
    "geom": "g",
    "perimeter_m": 11.5,
    "name": "lower",
    "NAME": "UPPER",
    "Kwp": 12.5,
}


def geojson_layer(path, properties):
    roof = metric_at(rotated_rect(20, 10, 0), LON, LAT, WGS84)
    doc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": properties, "geometry": shapely.geometry.mapping(roof)}],
    }
    path.write_text(json.dumps(doc))
    return str(path)


def test_every_input_column_keeps_its_value_under_a_free_name(tmp_path):
    src = geojson_layer(tmp_path / "hostile.geojson", HOSTILE)
    out = tmp_path / "roofs.gpkg"
    assert main(["solar", src, "-o", str(out), "--yield", "1000"]) == 0
    row = read_layer(out, "rooftops")[0]
    # each input value is in the output exactly once, untouched
    for name, value in HOSTILE.items():
        holders = [k for k, v in row.items() if v == value]
        assert len(holders) == 1, (name, value, holders)
    assert row["name"] == "lower" and row["src_NAME"] == "UPPER"  # not merged by case
    assert row["src_area_m2_3"] == 1.5 and row["src_area_m2"] == 2.5 and row["src_kwp_2"] == 4.5
    assert row["area_m2"] == pytest.approx(200, rel=1e-3) and row["kwp"] == pytest.approx(20.8)
    assert row["confidence"] is None and row["src_fid"] == 0


def test_solar_on_its_own_output_with_another_panel_power(tmp_path, capsys):
    src = geojson_layer(tmp_path / "hostile.geojson", HOSTILE)
    first, second = tmp_path / "first.gpkg", tmp_path / "second.gpkg"
    assert main(["solar", src, "-o", str(first), "--yield", "1000"]) == 0
    assert main(["solar", str(first), "-o", str(second), "--yield", "1000", "--panel-wp", "200"]) == 0
    assert "10.4 kWp" in capsys.readouterr().out
    before, after = read_layer(first, "rooftops")[0], read_layer(second, "rooftops")[0]
    assert after["kwp"] == pytest.approx(10.4) and after["annual_kwh"] == pytest.approx(10400)
    # every column of the first output survives, with its value, in the second
    columns_before = len(before) - 1  # without _geom
    # the first output's columns, renamed, + area_m2, perimeter_m, confidence, src_fid and 6 other solar fields
    assert len(after) - 1 == columns_before + 10
    for name, value in before.items():
        if name != "_geom" and value is not None and name not in ("kwp", "annual_kwh", "src_fid"):
            # under its own name, or a src_ name derived from it
            assert [k for k, v in after.items() if v == value and (k == name or k.startswith(f"src_{name}"))], name
    assert after["src_kwp_4"] == pytest.approx(20.8)  # the first run's kwp (src_Kwp_3 is taken)


def test_solar_on_points_or_lines_says_why(tmp_path, capsys):
    """0.2.0 exited 0 with an empty layer (issue 21)."""
    path = tmp_path / "points.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [LON, LAT]}},
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "LineString", "coordinates": [[LON, LAT], [LON + 1e-4, LAT]]},
                    },
                ],
            }
        )
    )
    assert main(["solar", str(path), "-o", str(tmp_path / "o.gpkg")]) == 2
    err = capsys.readouterr().err
    assert "holds no polygon: 2 feature(s) skipped" in err and "(linestring, point)" in err
    assert not (tmp_path / "o.gpkg").exists()


def test_solar_report_destinations(tmp_path, full_disk, capsys):
    """0.2.0: a traceback after the GeoPackage was written, and a truncated summary.html on a full disk."""
    src = geojson_layer(tmp_path / "in.geojson", {"name": "a"})
    a_file = tmp_path / "report.txt"
    a_file.write_text("x")
    assert main(["solar", src, "-o", str(tmp_path / "a.gpkg"), "--report", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err and not (tmp_path / "a.gpkg").exists()  # checked first
    report = full_disk / "rep"
    assert main(["solar", src, "-o", str(tmp_path / "b.gpkg"), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert "error: Cannot write the report file" in err and "disk is full" in err and "Traceback" not in err
    assert (tmp_path / "b.gpkg").exists()  # the buildings were written, as the message says
    assert os.listdir(report) == []  # whole or absent: nothing truncated, no half report
