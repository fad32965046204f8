"""detect-many's merge: parts streamed, in job order, into the output layer (core/many_merge.py)."""

from types import SimpleNamespace

import pytest
import shapely

from roof_detector.core.building import Building
from roof_detector.core.gpkg_writer import write_buildings
from roof_detector.core.many_merge import merge_parts
from roof_detector.core.osgeo_exc import ogr

from .many_fixtures import read_layer

UTM = "EPSG:32631"


def _building(i: int, multi: bool = False, **attrs) -> Building:
    box = shapely.box(500000 + 20 * i, 5000000, 500010 + 20 * i, 5000008)
    geom = (
        shapely.MultiPolygon([box, shapely.box(*(c + 12 if k % 2 == 0 else c for k, c in enumerate(box.bounds)))])
        if multi
        else box
    )
    return Building(geom, 80.0 + i + 0.123456, 36.0 + i, 0.5 + i / 100, dict(attrs))


def _merge(tmp_path, parts, out="merged.gpkg"):
    """Write each list of buildings as a part, merge them; (count, area, layer rows, fids, geometry type)."""
    paths = []
    for k, buildings in enumerate(parts):
        paths.append(str(tmp_path / f"part-{k}.gpkg"))
        write_buildings(buildings, paths[-1], UTM, layer="buildings", overwrite=True)
    manifest = SimpleNamespace(part_path=lambda i: paths[i])
    jobs = [SimpleNamespace(index=k) for k in range(len(parts))]
    output = str(tmp_path / out)
    n, area = merge_parts(jobs, manifest, output, UTM, "buildings", False, {"source": "test"})
    ds = ogr.Open(output)
    lyr = ds.GetLayerByName("buildings")
    fids = [f.GetFID() for f in lyr]
    kinds = {
        lyr.GetLayerDefn().GetFieldDefn(i).GetName(): lyr.GetLayerDefn().GetFieldDefn(i).GetType()
        for i in range(lyr.GetLayerDefn().GetFieldCount())
    }
    geom_type, meta = ogr.GT_Flatten(lyr.GetGeomType()), lyr.GetMetadata()
    lyr = None
    ds = None
    return n, area, read_layer(output), fids, geom_type, kinds, meta


def test_parts_of_one_schema_merge_as_if_written_at_once(tmp_path, monkeypatch):
    """The C copy (parts of one schema): the same layer as writing every building in one go."""
    from roof_detector.core import many_merge

    def no_reading_back(path):
        raise AssertionError("parts of one schema are copied, not read back as buildings")

    monkeypatch.setattr(many_merge, "read_part", no_reading_back)
    parts = [
        [_building(i, roof_kwp=1.5 * i, panels=i, shape="rectilinear") for i in range(k * 3, k * 3 + 3)]
        for k in range(3)
    ]
    parts[1][1] = _building(4, multi=True, roof_kwp=6.0, panels=4, shape="curved")  # one MultiPolygon: all become multi
    n, area, rows, fids, geom_type, kinds, meta = _merge(tmp_path, parts)
    everything = [b for part in parts for b in part]
    write_buildings(everything, str(tmp_path / "once.gpkg"), UTM)
    once = read_layer(str(tmp_path / "once.gpkg"))
    assert n == 9 and area == pytest.approx(sum(round(b.area_m2, 2) for b in everything), abs=1e-6)
    assert fids == list(range(1, 10))  # job order, new fids
    assert geom_type == ogr.wkbMultiPolygon
    assert [(g.wkb, a) for g, a in rows] == [
        (shapely.MultiPolygon([g]).wkb if g.geom_type == "Polygon" else g.wkb, a) for g, a in once
    ]
    assert kinds["panels"] == ogr.OFTInteger64 and kinds["roof_kwp"] == ogr.OFTReal and kinds["shape"] == ogr.OFTString
    assert meta == {"source": "test"}


def test_parts_whose_fields_differ_are_widened(tmp_path):
    """Parts with other fields or types (not a detection's): read back and written with the wider type."""
    parts = [[_building(0, count=3)], [_building(1, count=2.5, note="x")], [_building(2)]]
    n, _, rows, fids, geom_type, kinds, _ = _merge(tmp_path, parts)
    assert n == 3 and fids == [1, 2, 3] and geom_type == ogr.wkbPolygon
    assert kinds["count"] == ogr.OFTReal and kinds["note"] == ogr.OFTString
    assert [(a["count"], a["note"]) for _, a in rows] == [(3.0, None), (2.5, "x"), (None, None)]
