"""Geometries that 0.2.0 mis-measured or could not read (issue 21): antimeridian, curves."""

import pytest
import shapely
from osgeo import ogr, osr
from pyproj import Geod

from roof_detector.cli import main
from roof_detector.core.evaluate import evaluate_files
from roof_detector.core.footprints import measure_polygons
from roof_detector.core.solar import SolarParams, rooftop_attributes
from roof_detector.core.vector_io import read_polygons

ogr.UseExceptions()
WGS84 = "EPSG:4326"


def test_a_roof_across_the_antimeridian_is_sized_geodesically():
    """0.2.0 measured it in a frame on the other side of the Earth: 537 m² for 118 m²."""
    d, lat = 0.00005, -16.8  # Fiji: ~10.6 x 11.1 m across 180°
    roof = shapely.Polygon([(180 - d, lat), (-180 + d, lat), (-180 + d, lat + 0.0001), (180 - d, lat + 0.0001)])
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(roof)[0])
    assert rooftop_attributes(roof, WGS84)["area_m2"] == pytest.approx(geodesic, rel=1e-4)
    # the batched sizing of every front end (CLI solar, Processing, the Rooftop Report)
    assert measure_polygons([roof], WGS84, SolarParams())[1][0]["area_m2"] == pytest.approx(geodesic, rel=1e-4)
    # the same roof drawn east of 180° (continuous longitudes) measures the same
    east = shapely.Polygon([(180 - d, lat), (180 + d, lat), (180 + d, lat + 0.0001), (180 - d, lat + 0.0001)])
    assert rooftop_attributes(east, WGS84)["area_m2"] == pytest.approx(geodesic, rel=1e-4)


CURVED = "CURVEPOLYGON(CIRCULARSTRING(500000 5000000,500010 5000010,500020 5000000,500010 4999990,500000 5000000))"


def _curved_layer(path):
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    lyr = ds.CreateLayer("parcels", srs, ogr.wkbCurvePolygon)
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt(CURVED))
    lyr.CreateFeature(f)
    f = lyr = ds = None
    return str(path)


def test_curved_polygons_are_linearised(tmp_path):
    """0.2.0: `Unknown WKB type 10` in solar, finetune and evaluate (all read through read_polygons)."""
    layer = read_polygons(_curved_layer(tmp_path / "curved.gpkg"))
    assert len(layer.geometries) == 1 and layer.geometries[0].geom_type == "Polygon"
    assert layer.geometries[0].area == pytest.approx(3.14159 * 100, rel=0.01)  # a circle of radius 10 m


def test_solar_and_evaluate_take_curved_polygons(tmp_path, capsys):
    path = _curved_layer(tmp_path / "curved.gpkg")
    assert main(["solar", path, "-o", str(tmp_path / "out.gpkg"), "--yield", "1000"]) == 0
    assert "1 buildings: footprint 314" in capsys.readouterr().out
    result = evaluate_files(path, path, extent=(499990, 4999980, 500030, 5000020), pixel_size=1.0)
    assert result.as_dict()["pixel"]["iou"] == 1.0 and result.n_matched == 1
