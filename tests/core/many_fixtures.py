"""A generated scene cut into tiles, for the detect-many tests.

Bright rectangles on textured dark ground (the brightness test model finds
them exactly), with buildings placed on purpose across the tile seams and
on the point where four tiles meet.
"""

from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np
from affine import Affine
from osgeo import gdal, ogr

from devtools.synthetic import building_rectangles
from tests.core.synthetic_rasters import NORTH_UP, UTM, write_raster

gdal.UseExceptions()

SCENE_PX = 480
# (row, col, height, width) in pixels: across the vertical seam, the horizontal one, and the corner.
SEAM_BUILDINGS = [(40, 225, 20, 30), (300, 230, 40, 22), (228, 60, 26, 18), (232, 380, 14, 40), (226, 226, 28, 28)]


def scene(path: str, pixel_m: float = 0.5) -> str:
    """The whole raster: about 60 buildings, five of them across the seams of a 2 x 2 cut
    (``pixel_m``: its pixel size; the test model's GSD is 0.5 m)."""
    rng = np.random.default_rng(0)
    img = rng.integers(20, 60, (3, SCENE_PX, SCENE_PX), dtype=np.uint8)
    seams = (SCENE_PX // 2 - 30, SCENE_PX // 2 + 30)
    for r, c, h, w in building_rectangles(SCENE_PX, seed=3, spacing_px=60):
        near = any(seams[0] < v < seams[1] for v in (r, r + h, c, c + w))
        if not near:  # keep the generated ones clear of the planted seam buildings
            img[:, r : r + h, c : c + w] = 220
    for r, c, h, w in SEAM_BUILDINGS:
        img[:, r : r + h, c : c + w] = 220
    transform = NORTH_UP if pixel_m == 0.5 else Affine(pixel_m, 0, NORTH_UP.c, 0, -pixel_m, NORTH_UP.f)
    return write_raster(path, img, UTM, transform)


def cut(whole: str, folder: str, parts: int = 2, overlap_px: int = 0) -> List[str]:
    """Cut ``whole`` into ``parts`` x ``parts`` GeoTIFF tiles, each widened by ``overlap_px`` into its neighbours."""
    os.makedirs(folder, exist_ok=True)
    ds = gdal.Open(whole)
    w, h = ds.RasterXSize, ds.RasterYSize
    out = []
    for i in range(parts):
        for j in range(parts):
            c0, c1 = max(0, j * w // parts - overlap_px), min(w, (j + 1) * w // parts + overlap_px)
            r0, r1 = max(0, i * h // parts - overlap_px), min(h, (i + 1) * h // parts + overlap_px)
            path = os.path.join(folder, f"tile_{i}_{j}.tif")
            gdal.Translate(path, ds, srcWin=[c0, r0, c1 - c0, r1 - r0])
            out.append(path)
    return out


def read_layer(path: str, layer: str = "buildings") -> List[Tuple[object, dict]]:
    """(shapely geometry, attributes) of every feature, in fid order."""
    import shapely

    ds = ogr.Open(path)
    lyr = ds.GetLayerByName(layer)
    out = [(shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb())), f.items()) for f in lyr]
    lyr = None
    ds = None
    return out
