"""The plugin refuses to run with a shapely built on another GEOS than QGIS's (it would crash QGIS)."""

from roof_detector.qgis_adapter.deps import check_dependencies, geos_mismatch


def test_matching_geos_passes():
    assert geos_mismatch("3.11.1", "3.11.1-CAPI-1.17.1") is None


def test_other_geos_is_explained_with_the_fix():
    msg = geos_mismatch("3.13.1", "3.11.1-CAPI-1.17.1")
    assert "3.13.1" in msg and "3.11.1" in msg and "--no-binary shapely" in msg


def test_this_environment_is_consistent(qgis_app):
    # make setup builds shapely against the system GEOS, so the real check passes here.
    assert check_dependencies() is None
