"""GeoPackage writing: fields, other layers kept, no clobber, nothing partial after a failure or a kill."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import shapely
from osgeo import ogr

from roof_detector.core.building import Building
from roof_detector.core.errors import OutputError
from roof_detector.core import gpkg_writer
from roof_detector.core.gpkg_writer import check_output, write_buildings

CRS = "EPSG:32631"


def _buildings(n=3, **attrs):
    return [
        Building(shapely.box(500000 + 20 * i, 5539000, 500010 + 20 * i, 5539010), 100.0 + i, 40.0, 0.9, dict(attrs))
        for i in range(n)
    ]


def _layers(path):
    ds = ogr.Open(str(path))
    out = {ds.GetLayerByIndex(i).GetName(): ds.GetLayerByIndex(i).GetFeatureCount() for i in range(ds.GetLayerCount())}
    ds = None
    return out


def _siblings(path):
    return sorted(p for p in os.listdir(os.path.dirname(path)) if p != os.path.basename(path))


class Exploding:
    """A geometry that fails when written (after some features went in)."""

    geom_type = "Polygon"

    def __init__(self, exc):
        self.exc = exc

    @property
    def wkb(self):
        raise self.exc


def test_new_file_has_fields_values_and_crs(tmp_path):
    path = str(tmp_path / "out.gpkg")
    bs = _buildings(2)
    bs[0].attributes = {"panels": 12, "kwp": 4.8, "orientation": "S", "fid": 7}
    bs[1].attributes = {"panels": 3.5, "kwp": None}
    write_buildings(bs, path, CRS, metadata={"model": "test 1.0"})
    assert _layers(path) == {"buildings": 2}
    assert _siblings(path) == []  # no temp / journal file left
    ds = ogr.Open(path)
    lyr = ds.GetLayerByName("buildings")
    defn = lyr.GetLayerDefn()
    types = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetTypeName() for i in range(defn.GetFieldCount())}
    assert types == {
        "area_m2": "Real",
        "perimeter_m": "Real",
        "confidence": "Real",
        "panels": "Real",
        "kwp": "Real",
        "orientation": "String",
        "attr_fid": "Integer64",
    }
    assert lyr.GetSpatialRef().GetAuthorityCode(None) == "32631"
    assert lyr.GetGeomType() == ogr.wkbPolygon
    assert lyr.GetMetadataItem("model") == "test 1.0"
    feats = [f.items() for f in lyr]
    assert feats[0]["area_m2"] == 100.0 and feats[0]["orientation"] == "S" and feats[0]["attr_fid"] == 7
    assert feats[1]["kwp"] is None and feats[1]["orientation"] is None and feats[1]["panels"] == 3.5
    first = lyr.GetFeature(1)  # keep the feature alive while using its geometry (GDAL ownership)
    geom = shapely.from_wkb(bytes(first.GetGeometryRef().ExportToWkb()))
    assert geom.equals(bs[0].geometry)


def test_empty_result_still_writes_a_layer(tmp_path):
    path = str(tmp_path / "empty.gpkg")
    write_buildings([], path, CRS)
    assert _layers(path) == {"buildings": 0}


def test_multipolygons_make_a_multipolygon_layer(tmp_path):
    path = str(tmp_path / "multi.gpkg")
    multi = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)])
    write_buildings([Building(multi, 2, 8, 0.8), Building(shapely.box(5, 5, 6, 6), 1, 4, 0.8)], path, CRS)
    ds = ogr.Open(path)
    lyr = ds.GetLayer(0)
    assert lyr.GetGeomType() == ogr.wkbMultiPolygon and lyr.GetFeatureCount() == 2


def test_other_layers_survive_adding_and_replacing(tmp_path):
    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(3), path, CRS, layer="keep_me")
    write_buildings(_buildings(2), path, CRS)
    assert _layers(path) == {"keep_me": 3, "buildings": 2}
    write_buildings(_buildings(5), path, CRS, overwrite=True)
    assert _layers(path) == {"keep_me": 3, "buildings": 5}


def test_no_clobber_without_overwrite(tmp_path):
    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(3), path, CRS)
    before = open(path, "rb").read()
    with pytest.raises(OutputError, match="already has a layer 'buildings'.*--overwrite.*--layer"):
        write_buildings(_buildings(1), path, CRS)
    with pytest.raises(OutputError, match="--overwrite"):
        write_buildings(_buildings(1), path, CRS, layer="BUILDINGS")  # GeoPackage names ignore case
    assert open(path, "rb").read() == before


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_keeps_old_layer_and_other_layers(tmp_path, exc):
    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(3), path, CRS)
    write_buildings(_buildings(2), path, CRS, layer="other")
    broken = _buildings(4) + [Building(Exploding(exc), 1, 1, 1)]
    with pytest.raises((OutputError, KeyboardInterrupt)):
        write_buildings(broken, path, CRS, overwrite=True)
    with pytest.raises((OutputError, KeyboardInterrupt)):
        write_buildings(broken, path, CRS, layer="new")
    assert _layers(path) == {"buildings": 3, "other": 2}  # old layer intact, no partial "new"
    assert _siblings(path) == []


def test_failure_on_a_new_file_leaves_nothing(tmp_path):
    path = str(tmp_path / "out.gpkg")
    with pytest.raises(OutputError, match="disk on fire"):
        write_buildings(_buildings(2) + [Building(Exploding(RuntimeError("disk on fire")), 1, 1, 1)], path, CRS)
    assert os.listdir(tmp_path) == []


def test_killed_writer_leaves_no_partial_layer(tmp_path):
    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(3), path, CRS, layer="keep_me")
    # A child process dies hard (no cleanup, no rollback) in the middle of writing features.
    script = textwrap.dedent(f"""
        import os, shapely
        from roof_detector.core.building import Building
        from roof_detector.core.gpkg_writer import write_buildings

        class Killer:
            geom_type = "Polygon"
            @property
            def wkb(self):
                os._exit(9)

        good = [Building(shapely.box(i, 0, i + 0.5, 1), 1, 1, 1) for i in range(50)]
        write_buildings(good + [Building(Killer(), 1, 1, 1)], {path!r}, "EPSG:32631", layer="half")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    assert _layers(path) == {"keep_me": 3}  # the half-written layer is not there
    # SQLite's hot journal of the killed run is rolled back by the next writer and removed
    write_buildings(_buildings(1), path, CRS, layer="after")
    assert _layers(path) == {"keep_me": 3, "after": 1}
    assert _siblings(path) == []


@pytest.mark.slow
def test_locked_file_is_reported(tmp_path, monkeypatch):
    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(1), path, CRS)
    # A lock taken after the early check (test_locked_file_is_refused_before_the_detection) must still be
    # reported by the write transaction itself.
    monkeypatch.setattr(gpkg_writer, "check_not_locked", lambda path: None)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    # (GDAL retries for its 5 s busy timeout before giving up: this test takes 5 s)
    try:
        with pytest.raises(OutputError, match="locked by another program"):
            write_buildings(_buildings(2), path, CRS, layer="second")
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert _layers(path) == {"buildings": 1}


def test_bad_output_paths(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_buildings(_buildings(1), str(tmp_path / "nowhere" / "out.gpkg"), CRS)
    with pytest.raises(OutputError, match="is a folder"):
        write_buildings(_buildings(1), str(tmp_path), CRS)
    text = tmp_path / "notes.gpkg"
    text.write_text("not a geopackage")
    with pytest.raises(OutputError, match="not a GeoPackage"):
        write_buildings(_buildings(1), str(text), CRS)
    assert text.read_text() == "not a geopackage"
    with pytest.raises(OutputError, match="layer name is empty"):
        check_output(str(tmp_path / "x.gpkg"), "")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            write_buildings(_buildings(1), str(folder / "out.gpkg"), CRS)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    "exc", [OSError(28, "No space left on device"), RuntimeError("sqlite3_step() failed: database or disk is full")]
)
def test_full_disk_mid_write_keeps_everything_else(tmp_path, exc):
    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(3), path, CRS)
    broken = _buildings(4) + [Building(Exploding(exc), 1, 1, 1)]
    for kwargs in ({"overwrite": True}, {"layer": "new"}):
        with pytest.raises(OutputError, match="The disk is full.*Nothing was written; free space"):
            write_buildings(broken, path, CRS, **kwargs)
    assert _layers(path) == {"buildings": 3}
    with pytest.raises(OutputError, match="The disk is full"):
        write_buildings(broken, str(tmp_path / "fresh.gpkg"), CRS)
    assert sorted(os.listdir(tmp_path)) == ["out.gpkg"]


def test_full_disk_when_renaming_the_new_file(tmp_path, monkeypatch):
    def no_room(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gpkg_writer.os, "replace", no_room)
    with pytest.raises(OutputError, match="The disk is full"):
        write_buildings(_buildings(2), str(tmp_path / "out.gpkg"), CRS)
    assert os.listdir(tmp_path) == []


def test_read_only_outputs_simulated(tmp_path, monkeypatch):
    """Root ignores permissions, so read-only places are simulated (a file as folder, os.access, GDAL's error)."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="notes.txt is a file, not a folder"):
        write_buildings(_buildings(1), str(blocker / "sub" / "out.gpkg"), CRS)
    existing = str(tmp_path / "existing.gpkg")
    write_buildings(_buildings(1), existing, CRS)
    real_access = os.access
    monkeypatch.setattr(gpkg_writer.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(OutputError, match="permission denied"):
        write_buildings(_buildings(1), str(tmp_path / "new.gpkg"), CRS)
    with pytest.raises(OutputError, match="existing.gpkg is read-only"):
        write_buildings(_buildings(1), existing, CRS, layer="second")
    monkeypatch.undo()
    readonly = Exploding(RuntimeError("sqlite3_exec(CREATE TABLE) failed: attempt to write a readonly database"))
    with pytest.raises(OutputError, match="cannot be written \\(read-only or permission denied\\)"):
        write_buildings(_buildings(1) + [Building(readonly, 1, 1, 1)], existing, CRS, layer="second")
    assert _layers(existing) == {"buildings": 1}
    assert sorted(os.listdir(tmp_path)) == ["existing.gpkg", "notes.txt"]


def test_locked_file_is_refused_before_the_detection(tmp_path):
    import time

    path = str(tmp_path / "out.gpkg")
    write_buildings(_buildings(1), path, CRS)
    before = open(path, "rb").read()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        with pytest.raises(OutputError, match="locked by another program.*write to another file"):
            check_output(path, "second")
        assert time.monotonic() - t0 < 3.0  # a quick probe, not the writer's busy wait
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert open(path, "rb").read() == before
    check_output(path, "second")  # released: fine again


def test_attributes_are_written_rounded(tmp_path):
    """Areas 0.01 m2, kWp 0.01, kWh 1, degrees 0.1, confidence 0.001: no 17.5581047... in the table."""
    import shapely
    from osgeo import ogr as _ogr

    from roof_detector.core.building import Building
    from roof_detector.core.gpkg_writer import write_buildings

    b = Building(
        shapely.box(0, 0, 4.19, 4.19),
        17.5581047123,
        16.76000001,
        0.87654321,
        {"kwp": 3.23456, "annual_kwh": 3881.4719, "orientation_deg": 12.3456, "panels": 8, "usable_area_m2": 9.87654},
    )
    path = str(tmp_path / "r.gpkg")
    write_buildings([b], path, "EPSG:32631")
    ds = _ogr.Open(path)  # kept: a layer outliving its dataset crashes GDAL
    f = ds.GetLayer(0).GetNextFeature()
    assert (f["area_m2"], f["perimeter_m"], f["confidence"]) == (17.56, 16.76, 0.877)
    assert (f["kwp"], f["annual_kwh"], f["orientation_deg"], f["usable_area_m2"]) == (3.23, 3881.0, 12.3, 9.88)
    assert f["panels"] == 8


FULL_DISK_WRITER = """
import sys, shapely
from roof_detector.core.building import Building
from roof_detector.core.gpkg_writer import write_buildings
from roof_detector.core.errors import OutputError
path, layer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = [Building(shapely.box(i, 0, i + 0.5, 0.5), 1.0, 1.0, 0.5, {"orientation_deg": float(i)}) for i in range(n)]
try:
    write_buildings(b, path, "EPSG:32631", layer=layer)
except OutputError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_real_full_disk_names_the_file_and_keeps_the_old_layer(tmp_path):
    """Issue 21: 0.2.0 said "orientation_deg could not be written" (the last field created) on a real ENOSPC."""
    import subprocess
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:

        def write(name, layer, n):
            return subprocess.run(
                [sys.executable, "-c", FULL_DISK_WRITER, str(disk / name), layer, str(n)],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=str(Path(__file__).resolve().parents[2]),
            )

        assert write("roofs.gpkg", "old", 1).returncode == 0
        before = (disk / "roofs.gpkg").read_bytes()
        for name, layer in (("roofs.gpkg", "new"), ("other.gpkg", "buildings")):
            proc = write(name, layer, 20000)
            assert proc.returncode == 2, proc.stderr[-1500:]
            assert proc.stdout.startswith(f"The disk is full: {disk / name} could not be written")
            assert "orientation_deg" not in proc.stdout and "Exception ignored" not in proc.stderr
        assert (disk / "roofs.gpkg").read_bytes() == before  # the transaction was rolled back
        assert sorted(os.listdir(disk)) == ["roofs.gpkg"]  # no temporary, no journal
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_geometries_in_wkb_chunks_keep_order_and_bytes(tmp_path, monkeypatch):
    # Geometries go to WKB a chunk at a time: across chunk edges nothing is lost, repeated or moved,
    # and each feature holds the very bytes of its building's geometry (a hole and a multipolygon too).
    monkeypatch.setattr(gpkg_writer, "_WKB_CHUNK", 2)
    shapes = [
        shapely.box(500000, 5539000, 500010, 5539010),
        shapely.Polygon(
            [(500020, 5539000), (500040, 5539000), (500040, 5539020), (500020, 5539020)],
            [[(500025, 5539005), (500030, 5539005), (500030, 5539010), (500025, 5539010)]],
        ),
        shapely.MultiPolygon(
            [shapely.box(500050, 5539000, 500055, 5539005), shapely.box(500060, 5539000, 500065, 5539005)]
        ),
        shapely.box(500070, 5539000, 500071.25, 5539003.5),
        shapely.box(500080, 5539000, 500090, 5539010),
    ]
    path = str(tmp_path / "out.gpkg")
    write_buildings([Building(g, float(i), 1.0, 0.5) for i, g in enumerate(shapes)], path, CRS)
    ds = ogr.Open(path)
    got = [(f.GetField("area_m2"), shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb()))) for f in ds.GetLayer(0)]
    ds = None
    assert [a for a, _ in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # written as MultiPolygon (one building has two parts): each geometry as it was, made multi
    assert all(
        g.equals_exact(shapely.MultiPolygon([s]) if s.geom_type == "Polygon" else s, 0)
        for (_, g), s in zip(got, shapes)
    )
