"""Detection plumbing on a real masked Web Mercator orthomosaic from ../shared/data (skipped without it)."""

import numpy as np
import pytest
import rasterio

from roof_detector.core.geo import to_lonlat
from roof_detector.core.model_io import load_model
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from devtools.test_model import make_test_model
from roof_detector.core.vector_io import rasterize_polygons

pytestmark = pytest.mark.shared_data


@pytest.mark.slow
def test_oam_mercator_raster_with_mask_band(shared_data, tmp_path):
    raster = shared_data / "oam" / "area4" / "ortho_z19.tif"  # 1536 x 768, EPSG:3857, 78 % masked
    if not raster.is_file():
        pytest.skip(f"{raster} is absent")
    model = load_model(make_test_model(str(tmp_path / "bright.pt")), "cpu")
    res = detect_buildings(str(raster), DetectOptions(), model=model)
    assert "Pseudo-Mercator" in res.crs_wkt
    # ~0.29 m ground pixels at 14 N (0.2986 Mercator units * cos(lat)), resampled to 0.5 m
    assert res.stats["raster_pixel_size_m"][0] == pytest.approx(0.2898, abs=0.001)
    assert res.stats["model_pixel_size_m"][0] == pytest.approx(0.5, abs=0.002)
    assert res.buildings, "the brightness model finds the bright roofs"
    with rasterio.open(raster) as ds:
        valid = ds.dataset_mask() > 0
        pred = rasterize_polygons([b.geometry for b in res.buildings], ds.transform, valid.shape) > 0
    # nodata (the mask band) yields nothing beyond resampling fringes at the block edges
    assert (pred & ~valid).sum() < 0.01 * pred.sum()
    # ground areas: Mercator planar area shrunk by cos^2(lat) (to 1 %, the ellipsoid's N-S scale differs)
    for b in res.buildings:
        c = b.geometry.centroid
        _, lat = to_lonlat(c.x, c.y, res.crs_wkt)
        expected = b.geometry.area * np.cos(np.radians(float(lat))) ** 2
        assert b.area_m2 == pytest.approx(expected, rel=0.01)
