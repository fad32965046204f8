"""The detection engine: pure Python + torch/numpy/rasterio/shapely, no ``qgis`` import."""

import os

# GDAL's block cache defaults to 5 % of RAM per GDAL library, and the engine uses two
# (rasterio's and the system one behind osgeo): on a 20000 x 20000 px raster both
# filled up and peak memory reached 3.5 GB. 256 MB each keeps memory flat; the
# tiled, sequential access pattern does not need more. Users can still override it.
os.environ.setdefault("GDAL_CACHEMAX", "256")
