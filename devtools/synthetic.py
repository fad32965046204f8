"""Generated orthophotos for benchmarks and tests: bright roofs on textured ground.

Written strip by strip, so a 20000 x 20000 px raster needs only one strip in
memory. The content is deterministic for a seed.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

STRIP_ROWS = 512


def building_rectangles(size_px: int, seed: int = 0, spacing_px: int = 80) -> List[Tuple[int, int, int, int]]:
    """(row, col, height, width) of buildings on a jittered grid, about one per ``spacing_px`` square."""
    rng = np.random.default_rng(seed)
    rects = []
    for r0 in range(8, size_px - spacing_px // 2, spacing_px):
        for c0 in range(8, size_px - spacing_px // 2, spacing_px):
            h, w = rng.integers(spacing_px // 5, spacing_px // 2, 2)
            dr, dc = rng.integers(0, spacing_px // 3, 2)
            r, c = r0 + int(dr), c0 + int(dc)
            if r + h < size_px and c + w < size_px:
                rects.append((r, c, int(h), int(w)))
    return rects


def write_orthophoto(
    path: str,
    size_px: int,
    gsd_m: float = 0.3,
    crs: str = "EPSG:32631",
    seed: int = 0,
    origin: Tuple[float, float] = (500000.0, 5000000.0),
) -> int:
    """Write a tiled, compressed RGB GeoTIFF of ``size_px`` square; return the number of buildings drawn."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rects = building_rectangles(size_px, seed)
    rects.sort()
    rng = np.random.default_rng(seed + 1)
    profile = dict(
        driver="GTiff",
        width=size_px,
        height=size_px,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=from_origin(origin[0], origin[1], gsd_m, gsd_m),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        photometric="RGB",
    )
    k = 0
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size_px, STRIP_ROWS):
            rows = min(STRIP_ROWS, size_px - r0)
            strip = rng.integers(25, 70, (3, rows, size_px), dtype=np.uint8)
            while k < len(rects) and rects[k][0] + rects[k][2] < r0:
                k += 1
            for r, c, h, w in rects[k:]:
                if r >= r0 + rows:
                    break
                a, b = max(r, r0), min(r + h, r0 + rows)
                if a < b:
                    strip[:, a - r0 : b - r0, c : c + w] = 215
            ds.write(strip, window=Window(0, r0, size_px, rows))
    return len(rects)
