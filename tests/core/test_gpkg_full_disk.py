"""A real full disk at every stage of a GeoPackage write (issue 21).

A small tmpfs is filled to leave a given number of bytes free, then 2,000 buildings
are written, as a new file and as a new layer in an existing file, with the free
space stepped so the disk fills at different stages: creating the file, the
inserts, the spatial index, the COMMIT. The writer used to leave GDAL work deferred to closing
the dataset (the spatial index, the feature-count triggers), where an ENOSPC only
printed "Exception ignored in: <built-in function delete_DataSource>": after a
failed COMMIT ("no such table"), and, worse, after a write reported as done, which
left a layer whose spatial index lacked buildings (663 of 2,000 rows, exit 0).
"""

import os
import subprocess
import sys

import pytest
import shapely
from osgeo import ogr

from roof_detector.core.building import Building
from roof_detector.core.errors import OutputError
from roof_detector.core.gpkg_writer import write_buildings

N = 2000
#: Free bytes left on the disk: from "cannot create the file" to "fits" (8 MB tmpfs).
FREE_BYTES = range(4096, 1_000_000, 45_056)


@pytest.fixture
def disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _leave_free(disk, free_bytes):
    st = os.statvfs(disk)
    with open(disk / ".filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free_bytes))


def _buildings(n):
    return [Building(shapely.box(i * 20, 0, i * 20 + 10, 10), 100.0, 40.0, 0.9, {"kwp": 1.5}) for i in range(n)]


def _layers(path):
    """{layer: (features, rows of its spatial index)} of a GeoPackage."""
    ds = ogr.Open(str(path))
    try:
        out = {}
        for i in range(ds.GetLayerCount()):
            name = ds.GetLayer(i).GetName()
            sql = ds.ExecuteSQL(f"SELECT count(*) FROM rtree_{name}_geom")
            rows = sql.GetNextFeature().GetField(0)
            ds.ReleaseResultSet(sql)
            out[name] = (ds.GetLayer(i).GetFeatureCount(), rows)
        return out
    finally:
        ds = None


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new file", "new layer in an existing file"])
def test_a_real_full_disk_at_every_stage_of_a_write(disk, monkeypatch, existing):
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(f"{u.exc_type.__name__}: {u.exc_value}"))
    out = disk / "roofs.gpkg"
    outcomes = []
    for free in FREE_BYTES:
        for name in os.listdir(disk):
            os.unlink(disk / name)
        if existing:
            write_buildings(_buildings(5), str(out), "EPSG:32631", layer="old")
        _leave_free(disk, free)
        try:
            write_buildings(_buildings(N), str(out), "EPSG:32631", layer="new")
            outcomes.append("written")
        except OutputError as exc:
            assert str(out) in str(exc), str(exc)  # names the file asked for, never a temporary
            outcomes.append("COMMIT" if "COMMIT" in str(exc) else "refused")
        os.unlink(disk / ".filler")
        assert ignored == [], f"{free} bytes free: {ignored}"
        left = sorted(os.listdir(disk))
        if outcomes[-1] == "written":
            assert _layers(out) == {**({"old": (5, 5)} if existing else {}), "new": (N, N)}, f"{free} bytes free"
        elif existing:
            assert left == ["roofs.gpkg"] and _layers(out) == {"old": (5, 5)}, f"{free} bytes free"
        else:
            assert left == [], f"{free} bytes free: {left}"
    # The steps crossed every stage: refused early, failed at COMMIT, and written.
    assert {"refused", "COMMIT", "written"} <= set(outcomes), outcomes
