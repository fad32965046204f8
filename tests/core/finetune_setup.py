"""The tiny fine-tuning set-up shared by the engine and the plugin tests.

A 256 x 256 px raster at 0.5 m (EPSG:32631): dark ground (40) with bright
buildings (200) at seeded random places, their outlines, and a tiny
fine-tunable base model (plain U-Net, 4 base channels, 64 px tiles).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

ORIGIN = (500000.0, 5000000.0)  # top-left corner, EPSG:32631
GSD = 0.5
SIZE = 256

Rect = Tuple[int, int, int, int]  # row, col, rows, cols in pixels


def building_rects(n: int = 24, size_px: int = SIZE, seed: int = 0) -> List[Rect]:
    """``n`` seeded (row, col, rows, cols) buildings of 10 to 25 px inside a ``size_px`` square."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r, c = rng.integers(4, size_px - 30, 2)
        h, w = rng.integers(10, 26, 2)
        out.append((int(r), int(c), int(h), int(w)))
    return out


def ring(r: int, c: int, h: int, w: int) -> List[Tuple[float, float]]:
    """The closed outline of a (row, col, rows, cols) building in EPSG:32631."""
    x0, y0 = ORIGIN[0] + c * GSD, ORIGIN[1] - r * GSD
    x1, y1 = x0 + w * GSD, y0 - h * GSD
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def write_ortho(path: str, rects: Sequence[Rect]) -> str:
    """Write the 3-band uint8 orthophoto with ``rects`` bright to ``path``; return it."""
    import rasterio
    from rasterio.transform import from_origin

    img = np.full((3, SIZE, SIZE), 40, np.uint8)
    for r, c, h, w in rects:
        img[:, r : r + h, c : c + w] = 200
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(ORIGIN[0], ORIGIN[1], GSD, GSD),
    ) as ds:
        ds.write(img)
    return path


def write_base_model(path: str) -> str:
    """Export the untrained tiny base model ('tiny-base', threshold 0.5) to ``path``; return it."""
    from roof_detector.core.training.export import export_model
    from roof_detector.core.training.trainer import TrainConfig
    from roof_detector.core.unet import build_model

    cfg = TrainConfig(
        architecture="plain_unet", architecture_params={"base_channels": 4}, gsd_m=GSD, tile_px=64, overlap_px=8
    )
    export_model(build_model("plain_unet", base_channels=4), cfg, path, 0.5, {"name": "tiny-base"})
    return path
