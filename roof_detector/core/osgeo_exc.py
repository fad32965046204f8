"""GDAL, OGR and OSR with Python exceptions on (None each where python3-gdal is missing).

The GeoPackage writer and the vectoriser import them from here.
"""

try:  # osgeo comes with QGIS / python3-gdal
    from osgeo import gdal, ogr, osr

    gdal.UseExceptions()
    ogr.UseExceptions()
    osr.UseExceptions()
except ImportError:  # pragma: no cover - the set-up installs it
    gdal = ogr = osr = None

__all__ = ["gdal", "ogr", "osr"]
