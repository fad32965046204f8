"""The Rooftop Report dialog: figures from core.report, sizing of layers without solar fields, exports."""

import csv

import pytest

from tests.qgis.conftest import ORIGIN, wait_for

pytestmark = pytest.mark.qgis

# building footprints in EPSG:32631 (metres): (x0, y0, width, height)
BOXES = [(0, 0, 10, 20), (30, 0, 8, 6), (50, 10, 25, 12), (0, 40, 14, 14), (40, 40, 5, 30)]
SOLAR = ("area_m2", "usable_area_m2", "panels", "kwp", "annual_kwh")


def _polygon_layer(project, name="cadastre", fields=(), values=None, boxes=BOXES):
    """A memory polygon layer of rectangles, with ``fields`` [(name, QVariant type)] and their ``values``."""
    from qgis.core import QgsFeature, QgsField, QgsGeometry, QgsRectangle, QgsVectorLayer

    layer = QgsVectorLayer("Polygon?crs=EPSG:32631", name, "memory")
    layer.dataProvider().addAttributes([QgsField(n, t) for n, t in fields])
    layer.updateFields()
    feats = []
    for i, (x, y, w, h) in enumerate(boxes):
        f = QgsFeature(layer.fields())
        f.setGeometry(
            QgsGeometry.fromRect(QgsRectangle(ORIGIN[0] + x, ORIGIN[1] + y, ORIGIN[0] + x + w, ORIGIN[1] + y + h))
        )
        if values is not None:
            f.setAttributes(list(values[i]))
        feats.append(f)
    assert layer.dataProvider().addFeatures(feats)[0]
    project.addMapLayer(layer)
    return layer


def _field_sums(layer):
    return {name: sum(f[name] for f in layer.getFeatures()) for name in SOLAR}


def _assert_totals_match(dialog, sums, n):
    t = dialog.totals
    assert t["buildings"] == n
    # totals are sums of the table's rounded values: within n half-units of the last decimal
    assert t["area_m2"] == pytest.approx(sums["area_m2"], abs=n * 0.005)
    assert t["usable_area_m2"] == pytest.approx(sums["usable_area_m2"], abs=n * 0.005)
    assert t["panels"] == sums["panels"]
    assert t["kwp"] == pytest.approx(sums["kwp"], abs=n * 0.0005)
    assert t["annual_kwh"] == pytest.approx(sums["annual_kwh"], abs=n * 0.05)


def test_layer_without_solar_fields_is_sized_with_the_dialog_parameters(plugin, project, qgis_iface):
    import shapely

    from roof_detector.core.solar import SolarParams, rooftop_attributes
    from roof_detector.qgis_ui import settings

    settings.set("solar_setback_m", 1.0)
    settings.set("solar_yield_from_latitude", False)
    settings.set("solar_yield", 1000.0)
    layer = _polygon_layer(project, fields=[("name", 10)], values=[(f"b{i}",) for i in range(len(BOXES))])
    qgis_iface.setActiveLayer(layer)
    action = next(a for a in plugin.menu_actions if a.objectName() == "roofDetectorRooftopReport")
    action.trigger()
    dialog = plugin.report_dialog
    assert dialog is not None and dialog.data.computed
    assert layer.fields().names() == ["name"]  # the layer itself is not changed
    params = SolarParams(setback_m=1.0, specific_yield_kwh_per_kwp=1000.0)
    expected = {}
    for f in layer.getFeatures():
        expected[f.id()] = rooftop_attributes(
            shapely.from_wkb(bytes(f.geometry().asWkb())), layer.crs().toWkt(), params
        )
    # the rows are core.solar's figures, the totals the sums of those figures
    assert {r["id"] for r in dialog.data.rows} == set(expected)
    for row in dialog.data.rows:
        for name in SOLAR:
            assert row[name] == pytest.approx(expected[row["id"]][name])
    sums = {name: sum(e[name] for e in expected.values()) for name in SOLAR}
    _assert_totals_match(dialog, sums, len(BOXES))
    assert sum(w * h for _, _, w, h in BOXES) == pytest.approx(dialog.totals["area_m2"], rel=2e-3)
    html = dialog.browser.toHtml()
    text = dialog.browser.toPlainText()
    assert "Rooftop solar report" in html and "Setback from the roof edge (m)" in text
    assert "setback_m" not in text  # no internal keys
    assert dialog.report_params()["specific_yield_kwh_per_kwp"] == 1000.0


def test_layer_with_solar_fields_reports_their_sums(project, qgis_app):
    """The figures are read, not recomputed: deliberately unrelated values come back summed."""
    from qgis.PyQt.QtCore import QVariant

    from roof_detector.qgis_ui.report_dialog import ReportDialog

    fields = [
        ("area_m2", QVariant.Double),
        ("usable_area_m2", QVariant.Double),
        ("panels", QVariant.Int),
        ("kwp", QVariant.Double),
        ("annual_kwh", QVariant.Double),
        ("orientation_deg", QVariant.Double),
    ]
    values = [
        (100.5 + i, 40.25 * i, 3 * i, 1.2 * i, 1100.3 * i, None if i == 2 else 10.0 * i) for i in range(len(BOXES))
    ]
    layer = _polygon_layer(project, "solar", fields, values)
    dialog = ReportDialog(layer, {})
    assert not dialog.data.computed
    _assert_totals_match(dialog, _field_sums(layer), len(BOXES))
    assert [r["orientation_deg"] for r in dialog.table][2] is None  # NULL stays empty
    assert dialog.report_params() == {"solar figures": "read from the layer's fields"}


def test_exports_html_pdf_and_csv(project, tmp_path, monkeypatch):
    from roof_detector.core.report import COLUMNS
    from roof_detector.qgis_ui import settings
    from roof_detector.qgis_ui.report_dialog import ReportDialog

    layer = _polygon_layer(project)
    dialog = ReportDialog(layer, {})
    assert all(b.isEnabled() for b in dialog.export_buttons.values())
    html = dialog.export("html", str(tmp_path / "report.html"))
    text = open(html, encoding="utf-8").read()
    assert "<h2>Totals</h2>" in text and "data:image/png;base64," in text
    assert text.count("<tr>") >= len(BOXES) + 1
    pdf = dialog.export("pdf", str(tmp_path / "report"))  # the suffix is added
    assert pdf.endswith("report.pdf")
    data = open(pdf, "rb").read()
    assert data.startswith(b"%PDF") and b"/Image" in data and len(data) > 10000
    # the buttons ask where to write; the folder is remembered
    monkeypatch.setattr(dialog, "ask_save_path", lambda kind: str(tmp_path / f"asked.{kind}"))
    dialog.export_buttons["csv"].click()
    with open(tmp_path / "asked.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [k for k, _, _ in COLUMNS] and len(rows) == len(BOXES)
    assert sum(int(r["panels"]) for r in rows) == dialog.totals["panels"]
    assert settings.get("report_dir") == str(tmp_path)
    assert dialog.default_path("pdf") == str(tmp_path / "cadastre_rooftop_report.pdf")
    # a write error is a message in the dialog, not an exception
    assert dialog.export("csv", str(tmp_path / "missing" / "x.csv")) is None
    from roof_detector.qgis_ui.message_bar import item_text

    assert "Could not write" in item_text(dialog.bar.currentItem())


def test_big_layer_is_sized_in_a_task(project, qgis_app, monkeypatch):
    from roof_detector.qgis_ui import report_dialog
    from roof_detector.qgis_ui.report_dialog import ReportDialog

    monkeypatch.setattr(report_dialog, "TASK_THRESHOLD", 3)
    monkeypatch.setattr(report_dialog, "SHOWN_ROWS", 2)
    layer = _polygon_layer(project)
    tasks = set()
    dialog = ReportDialog(layer, {}, tasks=tasks)
    task = dialog.task
    assert task is not None and task in tasks and dialog.data is None
    assert not dialog.export_buttons["csv"].isEnabled()
    wait_for(task, qgis_app)
    assert dialog.data is not None and dialog.data.computed and not tasks
    assert dialog.totals["buildings"] == len(BOXES)
    assert "first 2 of 5 buildings" in dialog.status_label.text()
    assert dialog.html().count("<tr>") > dialog.html(dialog.table[:2]).count("<tr>")  # exports hold all rows


def test_report_refuses_a_layer_that_is_not_polygons(plugin, project, qgis_iface, ortho_layer):
    qgis_iface.setActiveLayer(ortho_layer)
    plugin.run_report()
    assert plugin.report_dialog is None
    assert any("not a polygon layer" in m for m in qgis_iface.messageBar().get_messages(1))
