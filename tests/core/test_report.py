"""Rooftop report: totals equal the table sums; CSV, PNG and HTML are written."""

import csv
from decimal import Decimal

import pytest
import shapely
from hypothesis import given, strategies as st

from roof_detector.core.report import COLUMNS, TOTAL_COLUMNS, build_table, totals, write_report
from roof_detector.core.solar import SolarParams, rooftop_attributes_metric


def rows_for(sizes, yield_=1234.5):
    params = SolarParams(specific_yield_kwh_per_kwp=yield_)
    return [
        dict(id=i, **rooftop_attributes_metric(shapely.box(0, 0, w, h), None, params))
        for i, (w, h) in enumerate(sizes, start=10)
    ]


def test_report_files_and_totals_equal_csv_sums(tmp_path):
    rows = rows_for([(10, 8), (23.3, 7.1), (4, 3), (0.9, 0.9), (31.7, 12.9)])
    out = write_report(rows, str(tmp_path / "rep"), params=SolarParams().as_dict(), source="test.gpkg")
    total = out["totals"]
    with open(out["csv"], newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [c for c, _, _ in COLUMNS] == list(table[0].keys())
    assert total["buildings"] == len(table) == 5
    for key, decimals in TOTAL_COLUMNS:
        exact = sum(Decimal(r[key]) for r in table)
        assert Decimal(str(total[key])) == exact, key
    assert total["panels"] == sum(int(r["panels"]) for r in table)
    assert [int(r["id"]) for r in table] == [10, 11, 12, 13, 14]
    png = open(out["png"], "rb").read()
    assert png.startswith(b"\x89PNG")
    html = open(out["html"], encoding="utf-8").read()
    assert "data:image/png;base64," in html and "<table id='totals'>" in html
    assert html.count("<tr><td>") == 5
    assert f"{total['panels']:,}" in html


def test_totals_are_sums_of_rounded_table_values():
    rows = rows_for([(10.123, 7.777)] * 7)
    table = build_table(rows)
    t = totals(table)
    assert t["usable_area_m2"] == round(7 * table[0]["usable_area_m2"], 2)
    assert t["kwp"] == round(7 * table[0]["kwp"], 2)


def test_empty_report(tmp_path):
    out = write_report([], str(tmp_path))
    assert out["totals"] == {"buildings": 0, "area_m2": 0, "usable_area_m2": 0, "panels": 0, "kwp": 0, "annual_kwh": 0}
    assert open(out["png"], "rb").read().startswith(b"\x89PNG")


@pytest.mark.slow
@given(st.lists(st.tuples(st.floats(0.5, 80), st.floats(0.5, 80)), max_size=30))
def test_totals_equal_table_sums_for_any_rows(sizes):
    table = build_table(rows_for(sizes))
    t = totals(table)
    assert t["buildings"] == len(table)
    for key, _ in TOTAL_COLUMNS:
        assert Decimal(str(t[key])) == sum((Decimal(str(r[key])) for r in table), Decimal(0)), key


def test_headings_break_only_before_units_and_parameters_have_labels():
    from roof_detector.core.report import render_html

    page = render_html(
        [], {"buildings": 0}, b"", params={"setback_m": 0.5, "panel_wp": 400.0, "specific_yield_kwh_per_kwp": None}
    )
    assert "<th>Orientation<br>(° from N)</th>" in page and "white-space:nowrap" in page
    assert "<th>Setback from the roof edge (m)</th><td>0.5</td>" in page
    assert "<th>Panel power (Wp)</th>" in page and "setback_m" not in page


def test_two_runs_of_one_process_into_one_folder_leave_one_whole_report(tmp_path):
    """The report's temporaries carry the process id alone (so a killed run's are found by name):
    two runs of one process (two Processing runs in QGIS) writing into one folder must take turns.
    Run A is held inside its report (its last temporary is a FIFO) while run B starts; then A is
    let go. The folder ends with B's three files, whole (before: B rewrote A's temporaries and
    failed on its rename, FileNotFoundError)."""
    import os
    import threading
    import time

    out = tmp_path / "rep"
    out.mkdir()
    fifo = out / f".summary.html.{os.getpid()}.tmp"
    os.mkfifo(fifo)
    errors = []

    def write(n):
        try:
            write_report(rows_for([(10, 8)] * n), str(out))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    a = threading.Thread(target=write, args=(3,), daemon=True)
    a.start()
    t0 = time.monotonic()
    while not (out / f".areas.png.{os.getpid()}.tmp").exists() and time.monotonic() - t0 < 30:
        time.sleep(0.01)
    b = threading.Thread(target=write, args=(5,), daemon=True)
    b.start()
    time.sleep(0.5)  # B is waiting for A (before: B rewrote A's temporaries and opened the FIFO too)
    with open(fifo, "rb") as fh:  # lets A's summary through
        fh.read()
    a.join(30)
    b.join(30)
    assert errors == [] and not a.is_alive() and not b.is_alive()
    with open(out / "buildings.csv", newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 5
    assert open(out / "summary.html", encoding="utf-8").read().count("<tr><td>") == 5
    assert sorted(p.name for p in out.iterdir()) == ["areas.png", "buildings.csv", "summary.html"]
