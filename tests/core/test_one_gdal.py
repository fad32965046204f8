"""Every front end decodes the same pixels: rasterio runs the GDAL that osgeo (and QGIS) run.

A rasterio wheel brings its own GDAL; inside QGIS its calls land on QGIS's GDAL instead, and the
two decode YCbCr JPEG GeoTIFFs differently (the demo crop: 20 % of the values, up to 16 levels),
so the CLI and the plugin found different buildings. ``make setup`` builds rasterio against the
system GDAL; these tests fail on a wheel.
"""

import glob
import os

import numpy as np
import rasterio
from osgeo import gdal

from roof_detector.core.raster_source import PixelWindow, open_source

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "catanduanes_oam_z21.tif")


def test_rasterio_runs_the_system_gdal_and_brings_none_of_its_own():
    assert rasterio.__gdal_version__ == gdal.__version__
    assert glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*")) == []


def test_the_engine_reads_a_jpeg_ycbcr_raster_as_gdal_does():
    ds = gdal.Open(DEMO)
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "YCbCr JPEG"
    expected = ds.ReadAsArray(0, 0, 512, 512)  # uint8 RGB
    ds = None
    raster, _ = open_source(DEMO)
    try:
        rgb, valid = raster.read(PixelWindow(0, 0, 512, 512), (512, 512))  # native pixels, no resampling
    finally:
        raster.close()
    assert valid.all()
    assert np.array_equal(np.rint(rgb * 255.0).astype(np.uint8), expected)  # the engine's [0, 1] is value / 255
