"""Tiny generated rasters for the detection tests: bright rectangles on dark ground.

The brightness test model (:mod:`devtools.test_model`) marks pixels
whose mean RGB exceeds 0.5 as building, so the expected buildings are known
exactly. Scenes are defined on the ground in UTM 31N near its central
meridian (3 deg E, 50 deg N), where the Web Mercator scale is ~1.55 and a
UTM rectangle stays a rectangle in EPSG:3857 and EPSG:4326.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

UTM = "EPSG:32631"
MERCATOR = "EPSG:3857"
LONLAT = "EPSG:4326"
# A point in UTM 31N on its central meridian, at about 50 deg N.
UTM_ORIGIN = (500000.0, 5539000.0)
DARK, BRIGHT = 30, 220
# The default scene: north-up 0.5 m pixels from UTM_ORIGIN; a pixel's ground area in m2 there
# (the UTM scale factor 0.9996 on the central meridian).
NORTH_UP = Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1])
PX_AREA = 0.25 / 0.9996**2


def write_raster(
    path,
    data: np.ndarray,
    crs: Optional[str],
    transform: Affine,
    nodata=None,
    mask: Optional[np.ndarray] = None,
    alpha: bool = False,
    colormap: Optional[Dict[int, Tuple[int, int, int, int]]] = None,
    colorinterp: Optional[Sequence[str]] = None,
) -> str:
    """Write ``data`` (bands x rows x cols) as a GeoTIFF; ``mask`` (rows x cols, True = valid)
    becomes an internal per-dataset mask band; ``alpha`` flags the last band as alpha;
    ``colorinterp`` names each band's colour interpretation (e.g. "undefined" for NIR)."""
    from rasterio.enums import ColorInterp

    bands, rows, cols = data.shape
    profile = dict(driver="GTiff", width=cols, height=rows, count=bands, dtype=data.dtype.name, transform=transform)
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if bands == 4:
        # GDAL would flag a 4th byte band as alpha by default; RGB+NIR files say "unspecified".
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES" if alpha else "UNSPECIFIED"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if alpha:
                ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            if colorinterp is not None:
                ds.colorinterp = [ColorInterp[name] for name in colorinterp]
            if mask is not None:
                ds.write_mask(mask.astype(np.uint8) * 255)
            if colormap is not None:
                ds.write_colormap(1, colormap)
    return str(path)


def rect_scene(
    path,
    rects_px: Sequence[Tuple[int, int, int, int]],
    shape=(200, 300),
    pixel_m: float = 0.5,
    bands: int = 3,
    dtype="uint8",
    crs: str = UTM,
    origin=UTM_ORIGIN,
    value=BRIGHT,
    ground=DARK,
    **kwargs,
) -> str:
    """A north-up raster with bright rectangles given as (row0, col0, row1, col1) pixel blocks."""
    data = np.full((bands,) + tuple(shape), ground, dtype=dtype)
    for r0, c0, r1, c1 in rects_px:
        data[:, r0:r1, c0:c1] = value
    transform = Affine(pixel_m, 0, origin[0], 0, -pixel_m, origin[1])
    return write_raster(path, data, crs, transform, **kwargs)


def touching_pair_scene(path) -> Tuple[str, int]:
    """Two 30 x 30 m roofs joined by a 2 m wide strip the test model is less sure of (p ~ 0.7).

    Returns (path, building pixel count). The roofs span rows 40-100, across the
    tile-row border at 56 of 64 px tiles with stride 56.
    """
    data = np.full((3, 200, 300), DARK, np.uint8)
    data[:, 40:100, 40:100] = BRIGHT
    data[:, 40:100, 104:164] = BRIGHT
    data[:, 60:64, 100:104] = 133  # sigmoid(40 * (133 / 255 - 0.5)) = 0.70: building, but not core
    return write_raster(path, data, UTM, NORTH_UP), 2 * 3600 + 16


def utm_rect(x0_m: float, y0_m: float, width_m: float, height_m: float) -> shapely.Polygon:
    """A ground rectangle in UTM 31N, offsets in metres from :data:`UTM_ORIGIN`."""
    x, y = UTM_ORIGIN[0] + x0_m, UTM_ORIGIN[1] + y0_m
    return shapely.box(x, y, x + width_m, y + height_m)


def scene_in_crs(
    path,
    crs: str,
    building_utm: shapely.Polygon,
    ground_px_m: float = 0.5,
    offset_px: Tuple[int, int] = (40, 60),
    shape=(200, 200),
) -> Tuple[str, shapely.Polygon]:
    """One bright building drawn in a raster of ``crs`` whose pixels measure ~``ground_px_m``.

    The pixel size is chosen so the building's edges fall exactly on pixel
    edges (an integer number of pixels across), so the drawn building is
    the ground rectangle itself, whatever the CRS. Returns the path and the
    building polygon in ``crs``.
    """
    tr = Transformer.from_crs(UTM, crs, always_xy=True)
    minx, miny, maxx, maxy = building_utm.bounds
    xs, ys = tr.transform([minx, maxx, maxx, minx], [miny, miny, maxy, maxy])
    bx0, bx1, by0, by1 = min(xs), max(xs), min(ys), max(ys)
    n_cols = int(round((maxx - minx) / ground_px_m))
    n_rows = int(round((maxy - miny) / ground_px_m))
    px_x, px_y = (bx1 - bx0) / n_cols, (by1 - by0) / n_rows
    col0, row0 = offset_px
    transform = Affine(px_x, 0, bx0 - col0 * px_x, 0, -px_y, by1 + row0 * px_y)
    data = np.full((3,) + tuple(shape), DARK, dtype=np.uint8)
    data[:, row0 : row0 + n_rows, col0 : col0 + n_cols] = BRIGHT
    write_raster(path, data, crs, transform)
    return str(path), shapely.box(bx0, by0, bx1, by1)
