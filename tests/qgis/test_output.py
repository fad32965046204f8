"""Result layers (the output sink), independent of the engine; GeoPackages come from core.gpkg_writer."""

import pytest
from shapely.geometry import MultiPolygon, box

from roof_detector.core.building import Building
from roof_detector.qgis_adapter.output import build_memory_layer, gpkg_layer_names

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
    assert {"panels", "kwp", "orientation", "attr_fid"} <= set(names)
    feats = sorted(layer.getFeatures(), key=lambda f: -f["area_m2"])
    assert feats[0]["panels"] == 12 and feats[0]["orientation"] == "S"
    assert feats[0].geometry().area() == pytest.approx(200.0)
    assert feats[1]["kwp"] is None or str(feats[1]["kwp"]) == "NULL"


def test_multipolygons_make_a_multipolygon_layer(crs):
    from qgis.core import QgsWkbTypes

    multi = MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])
    layer = build_memory_layer([Building(multi, 2.0, 8.0, 0.8), Building(box(5, 5, 6, 6), 1.0, 4.0, 0.8)], crs, "b")
    assert QgsWkbTypes.flatType(layer.wkbType()) == QgsWkbTypes.MultiPolygon
    assert layer.featureCount() == 2


def test_empty_result_gives_an_empty_valid_layer(crs):
    layer = build_memory_layer([], crs, "b")
    assert layer.isValid() and layer.featureCount() == 0


def test_memory_layer_and_geopackage_have_the_same_fields(crs, tmp_path):
    """One rule for the fields (core.output_fields.attribute_schema): a clash is attr_<key> in both."""
    from qgis.core import QgsVectorLayer

    from roof_detector.core.gpkg_writer import write_buildings

    memory = build_memory_layer(_buildings(), crs, "b")
    target = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(), target, "EPSG:32631", layer="roofs")
    written = QgsVectorLayer(f"{target}|layername=roofs", "w", "ogr")
    assert written.fields().names()[1:] == memory.fields().names()  # the GeoPackage adds its fid first
    for field in memory.fields():
        assert written.fields().field(field.name()).type() == field.type(), field.name()
    assert "attr_fid" in memory.fields().names() and gpkg_layer_names(target) == ["roofs"]


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

    from roof_detector.core.gpkg_writer import write_buildings

    first = {
        "usable_area_m2": 0.0,
        "panels": 0,
        "kwp": 0.0,
        "specific_yield": 1100.0,
        "annual_kwh": 0.0,
        "orientation_deg": None,
    }
    second = {
        "usable_area_m2": 21.5,
        "panels": 10,
        "kwp": 4.0,
        "specific_yield": 1100.0,
        "annual_kwh": 4400.0,
        "orientation_deg": 90.0,
    }
    buildings = [Building(box(0, 0, 1, 1), 1.0, 4.0, 0.9, first), Building(box(0, 0, 9, 9), 81.0, 36.0, 0.9, second)]
    memory = build_memory_layer(buildings, crs, "b")
    uri = write_buildings(buildings, str(tmp_path / "s.gpkg"), "EPSG:32631", layer="roofs") + "|layername=roofs"
    for layer in (memory, QgsVectorLayer(uri, "w", "ogr")):
        fields = layer.fields()
        assert fields.field("panels").type() in (QVariant.Int, QVariant.LongLong)
        for name in ("usable_area_m2", "kwp", "specific_yield", "annual_kwh", "orientation_deg"):
            assert fields.field(name).type() == QVariant.Double, name
        values = sorted((f["panels"], f["orientation_deg"]) for f in layer.getFeatures() if f["panels"] == 10)
        assert values == [(10, 90.0)]
    alone = build_memory_layer(buildings[:1], crs, "b")  # no orientation anywhere: still a number column
    assert alone.fields().field("orientation_deg").type() == QVariant.Double
