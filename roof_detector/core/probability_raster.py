"""The on-disk probability mosaic: stitching tiles with bounded memory.

A 20000 x 20000 px raster would need 1.6 GB as a float mosaic, so tiles
are stitched straight into a temporary GeoTIFF on the model grid instead:

* band 1: probability as uint8, ``round(p * 255)``;
* band 2: building, 1 where ``p >= threshold`` on a valid pixel, else 0
  (thresholded on the float probability, so the model's threshold is exact);
* a per-dataset mask band: 255 valid, 0 nodata / outside the raster / not run.

The file is tiled (256 px blocks) and DEFLATE-compressed; blocks no tile
wrote stay sparse. Each tile writes only its kept block
(:attr:`roof_detector.core.tiling.Tile.keep`), so every pixel comes from
exactly one tile.
"""

from __future__ import annotations

import numpy as np

from .errors import OutputError
from .tiling import ModelGrid, Tile

try:  # osgeo comes with QGIS / python3-gdal
    from osgeo import gdal, osr
    gdal.UseExceptions()
    osr.UseExceptions()
except ImportError:  # pragma: no cover - the set-up installs it
    gdal = osr = None

PROBABILITY_BAND = 1
BUILDING_BAND = 2
BLOCK_PX = 256


class ProbabilityRaster:
    """A temporary GeoTIFF holding the stitched probabilities of a run."""

    def __init__(self, path: str, grid: ModelGrid, crs_wkt: str, threshold: float):
        if gdal is None:
            raise OutputError("GDAL's Python bindings (osgeo) are missing; run `make setup`")
        self.path = path
        self.grid = grid
        self.threshold = float(threshold)
        options = ["TILED=YES", f"BLOCKXSIZE={BLOCK_PX}", f"BLOCKYSIZE={BLOCK_PX}", "COMPRESS=DEFLATE",
                   "SPARSE_OK=TRUE", "BIGTIFF=IF_SAFER", "INTERLEAVE=BAND"]
        try:
            ds = gdal.GetDriverByName("GTiff").Create(path, grid.width_px, grid.height_px, 2, gdal.GDT_Byte,
                                                      options=options)
        except RuntimeError as exc:
            raise OutputError(f"Cannot create the temporary probability raster {path} ({exc}); "
                              "check free space in the temporary directory") from None
        ds.SetGeoTransform(grid.transform.to_gdal())
        srs = osr.SpatialReference()
        srs.SetFromUserInput(crs_wkt)  # WKT, or "EPSG:XXXX" from a lenient RasterSource
        ds.SetProjection(srs.ExportToWkt())
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        self.dataset = ds

    def write_tile(self, tile: Tile, probability: np.ndarray, valid: np.ndarray) -> None:
        """Write the kept block of one tile (tile-local arrays of the tile size)."""
        c0, r0, c1, r1 = tile.keep
        local = (slice(r0 - tile.row_off, r1 - tile.row_off), slice(c0 - tile.col_off, c1 - tile.col_off))
        prob = probability[local]
        ok = valid[local]
        prob_u8 = np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
        prob_u8[~ok] = 0
        building = ((prob >= self.threshold) & ok).astype(np.uint8)
        ds = self.dataset
        ds.GetRasterBand(PROBABILITY_BAND).WriteArray(prob_u8, c0, r0)
        ds.GetRasterBand(BUILDING_BAND).WriteArray(building, c0, r0)
        ds.GetRasterBand(PROBABILITY_BAND).GetMaskBand().WriteArray(ok.astype(np.uint8) * 255, c0, r0)

    def flush(self) -> None:
        """Push cached blocks to disk (before reading the file back)."""
        self.dataset.FlushCache()

    def close(self) -> None:
        """Close the file (it is deleted with the temporary directory)."""
        if self.dataset is not None:
            self.dataset.FlushCache()
            self.dataset = None
