"""Result layer building and GeoPackage writing, independent of the engine."""

import os

import pytest
from shapely.geometry import MultiPolygon, box

from roof_detector.core.building import Building
from roof_detector.qgis_adapter import output
from roof_detector.qgis_adapter.output import (WriteError, build_memory_layer, gpkg_layer_names,
                                          write_geopackage)

pytestmark = pytest.mark.qgis


def _buildings():
    return [
        Building(box(0, 0, 10, 20), 200.0, 60.0, 0.91, {"panels": 12, "kwp": 4.8, "orientation": "S"}),
        Building(box(30, 0, 40, 5), 50.0, 30.0, 0.75, {"panels": 3, "kwp": None, "fid": 7}),
    ]


@pytest.fixture
def crs():
    from qgis.core import QgsCoordinateReferenceSystem

    return QgsCoordinateReferenceSystem("EPSG:32631")


def test_memory_layer_has_core_and_extra_fields(crs):
    layer = build_memory_layer(_buildings(), crs, "Buildings (x)")
    assert layer.isValid() and layer.featureCount() == 2
    assert layer.crs().authid() == "EPSG:32631"
    names = layer.fields().names()
    assert names[:3] == ["area_m2", "perimeter_m", "confidence"]
    assert {"panels", "kwp", "orientation", "fid_"} <= set(names)
    feats = sorted(layer.getFeatures(), key=lambda f: -f["area_m2"])
    assert feats[0]["panels"] == 12 and feats[0]["orientation"] == "S"
    assert feats[0].geometry().area() == pytest.approx(200.0)
    assert feats[1]["kwp"] is None or str(feats[1]["kwp"]) == "NULL"


def test_multipolygons_make_a_multipolygon_layer(crs):
    from qgis.core import QgsWkbTypes

    multi = MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])
    layer = build_memory_layer([Building(multi, 2.0, 8.0, 0.8), Building(box(5, 5, 6, 6), 1.0, 4.0, 0.8)],
                               crs, "b")
    assert QgsWkbTypes.flatType(layer.wkbType()) == QgsWkbTypes.MultiPolygon
    assert layer.featureCount() == 2


def test_empty_result_gives_an_empty_valid_layer(crs, tmp_path):
    layer = build_memory_layer([], crs, "b")
    assert layer.isValid() and layer.featureCount() == 0
    uri = write_geopackage(layer, str(tmp_path / "empty.gpkg"), "buildings")
    assert gpkg_layer_names(str(tmp_path / "empty.gpkg")) == ["buildings"]
    assert uri.endswith("|layername=buildings")


def test_new_geopackage_is_written_without_leftovers(crs, tmp_path):
    from qgis.core import QgsVectorLayer

    layer = build_memory_layer(_buildings(), crs, "b")
    target = tmp_path / "out.gpkg"
    uri = write_geopackage(layer, str(target), "roofs")
    assert sorted(os.listdir(tmp_path)) == ["out.gpkg"]
    written = QgsVectorLayer(uri, "w", "ogr")
    assert written.isValid() and written.featureCount() == 2
    assert written.crs().authid() == "EPSG:32631"
    assert "panels" in written.fields().names()


def test_existing_geopackage_keeps_other_layers_and_asks_before_replacing(crs, tmp_path):
    target = str(tmp_path / "out.gpkg")
    layer = build_memory_layer(_buildings(), crs, "b")
    write_geopackage(layer, target, "other")
    write_geopackage(layer, target, "roofs")
    assert sorted(gpkg_layer_names(target)) == ["other", "roofs"]
    with pytest.raises(WriteError, match="already has a layer"):
        write_geopackage(layer, target, "roofs", replace=False)
    smaller = build_memory_layer(_buildings()[:1], crs, "b")
    write_geopackage(smaller, target, "roofs", replace=True)
    from qgis.core import QgsVectorLayer

    assert QgsVectorLayer(f"{target}|layername=roofs", "r", "ogr").featureCount() == 1
    assert QgsVectorLayer(f"{target}|layername=other", "o", "ogr").featureCount() == 2


def test_failed_write_leaves_nothing(crs, tmp_path, monkeypatch):
    layer = build_memory_layer(_buildings(), crs, "b")
    existing = str(tmp_path / "existing.gpkg")
    write_geopackage(layer, existing, "other")
    real_write = output._write

    def failing_write(lyr, path, name, action):
        real_write(lyr, path, name, action)  # something is written, then it "fails"
        raise WriteError("disk full")

    monkeypatch.setattr(output, "_write", failing_write)
    with pytest.raises(WriteError):
        write_geopackage(layer, str(tmp_path / "new.gpkg"), "roofs")
    assert sorted(os.listdir(tmp_path)) == ["existing.gpkg"]
    with pytest.raises(WriteError):
        write_geopackage(layer, existing, "roofs")
    assert gpkg_layer_names(existing) == ["other"]


def test_missing_folder_is_an_error(crs, tmp_path):
    layer = build_memory_layer(_buildings(), crs, "b")
    with pytest.raises(WriteError, match="does not exist"):
        write_geopackage(layer, str(tmp_path / "nope" / "out.gpkg"), "roofs")


def test_style_is_outline_with_translucent_fill(crs):
    from roof_detector.qgis_ui.style import apply_style

    layer = build_memory_layer(_buildings(), crs, "b")
    apply_style(layer)
    symbol = layer.renderer().symbol()
    fill = symbol.symbolLayer(0)
    assert 0 < fill.color().alpha() < 255
    assert fill.strokeColor().alpha() == 255 and fill.strokeWidth() > 0


def test_solar_fields_have_fixed_numeric_types(crs, tmp_path):
    """A first building without an orientation or panels does not decide the column types."""
    from qgis.core import QgsVectorLayer
    from qgis.PyQt.QtCore import QVariant

    from roof_detector.core.solar import SOLAR_FIELDS

    # in step with the engine's list (area_m2/perimeter_m are core fields)
    kinds = {"real": QVariant.Double, "integer": QVariant.Int}
    assert output.KNOWN_TYPES == {n: kinds[k] for n, k in SOLAR_FIELDS if n not in ("area_m2", "perimeter_m")}
    first = {"usable_area_m2": 0.0, "panels": 0, "kwp": 0.0, "specific_yield": 1100.0, "annual_kwh": 0.0,
             "orientation_deg": None}
    second = {"usable_area_m2": 21.5, "panels": 10, "kwp": 4.0, "specific_yield": 1100.0, "annual_kwh": 4400.0,
              "orientation_deg": 90.0}
    buildings = [Building(box(0, 0, 1, 1), 1.0, 4.0, 0.9, first), Building(box(0, 0, 9, 9), 81.0, 36.0, 0.9, second)]
    memory = build_memory_layer(buildings, crs, "b")
    uri = write_geopackage(memory, str(tmp_path / "s.gpkg"), "roofs")
    for layer in (memory, QgsVectorLayer(uri, "w", "ogr")):
        fields = layer.fields()
        assert fields.field("panels").type() in (QVariant.Int, QVariant.LongLong)
        for name in ("usable_area_m2", "kwp", "specific_yield", "annual_kwh", "orientation_deg"):
            assert fields.field(name).type() == QVariant.Double, name
        values = sorted((f["panels"], f["orientation_deg"]) for f in layer.getFeatures()
                        if f["panels"] == 10)
        assert values == [(10, 90.0)]
    alone = build_memory_layer(buildings[:1], crs, "b")  # no orientation anywhere: still a number column
    assert alone.fields().field("orientation_deg").type() == QVariant.Double
