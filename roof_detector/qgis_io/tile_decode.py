"""Web tile bytes (PNG, JPEG, WebP, GIF) to an RGBA array, with GDAL (rasterio), not Qt.

Why not ``QImage.fromData``: the tile workers are QThreads that decode
while their neighbours make network requests, and a PyQt call keeps the GIL
for its whole duration. ``QImage.fromData`` probes every image plugin; the
SVG one connects signals, which takes Qt's signal-slot mutexes while the
GIL is held. A thread that holds one of those mutexes and needs the GIL
(any QObject made from Python does, in its connect/disconnect hooks) then
deadlocks with it: QGIS would freeze. GDAL takes no Qt lock and releases
the GIL while it decodes, so the workers also decode in parallel.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile

from .resample import resample_rgba

# Tiles carry no georeferencing, and rasterio warns about that on every open
# (here: MemoryFile.open in rasterio.io). Narrow, and set once: a
# catch_warnings() per tile would race between the worker threads.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module=r"rasterio\.io")


def _palette_rgba(ds: "rasterio.io.DatasetReader", index: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, colour in ds.colormap(1).items():
        if 0 <= value < 256:
            lut[value] = (tuple(colour) + (255,))[:4]
    return lut[index.astype(np.uint8)]


def _to_uint8(bands: np.ndarray) -> np.ndarray:
    if bands.dtype == np.uint8:
        return bands
    if bands.dtype == np.uint16:  # 16-bit PNG: keep the high byte
        return (bands >> 8).astype(np.uint8)
    return np.clip(bands, 0, 255).astype(np.uint8)


def _as_rgba(ds: "rasterio.io.DatasetReader") -> np.ndarray:
    """The dataset's pixels as rows x cols x 4 RGBA uint8, whatever its band layout."""
    raw = ds.read()
    if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
        return _palette_rgba(ds, raw[0])
    bands = _to_uint8(raw)
    rows, cols = bands.shape[1:]
    rgba = np.full((rows, cols, 4), 255, dtype=np.uint8)
    colour = bands[:1].repeat(3, axis=0) if ds.count <= 2 else bands[:3]
    rgba[..., :3] = np.moveaxis(colour, 0, -1)
    if ds.count in (2, 4):
        rgba[..., 3] = bands[ds.count - 1]
    elif all(v is not None for v in ds.nodatavals):  # a tRNS colour key
        key = np.array(ds.nodatavals, dtype=raw.dtype).reshape(-1, 1, 1)
        rgba[..., 3] = np.where((raw == key).all(axis=0), 0, 255)
    return rgba


def decode_tile(content: bytes, size_px: int) -> Optional[np.ndarray]:
    """Image bytes -> ``size_px x size_px x 4`` RGBA uint8, or None if they are not an image.

    Palette, grey, grey+alpha, RGB and RGBA images (8 or 16 bit) all come
    out as RGBA; a colour key (PNG tRNS) becomes transparency. A tile of
    another size is resampled with the engine's filter (transparent pixels
    carry no weight).
    """
    if not content:
        return None
    try:
        with MemoryFile(content) as memory, memory.open() as ds:
            rgba = _as_rgba(ds)
    except (RasterioError, ValueError):  # not an image GDAL reads (an HTML error page...)
        return None
    rows, cols = rgba.shape[:2]
    if (rows, cols) == (size_px, size_px):
        return rgba
    rgb, valid = resample_rgba(rgba, 0.0, 0.0, float(cols), float(rows), (size_px, size_px))
    out = np.zeros((size_px, size_px, 4), dtype=np.uint8)
    out[..., :3] = np.moveaxis(np.clip(np.rint(rgb * 255.0), 0, 255), 0, -1).astype(np.uint8)
    out[..., 3] = np.where(valid, 255, 0)
    return out
