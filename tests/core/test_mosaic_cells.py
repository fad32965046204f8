"""Blocks of K x K rasters (detect-many's cells): only cells near a raster are visited, with the same result."""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import shapely
from affine import Affine

from roof_detector.core import mosaic_plan
from roof_detector.core.mosaic_plan import read_mosaic
from tests.core.synthetic_rasters import write_raster

REPO = Path(__file__).resolve().parents[2]
WEB_MERCATOR = "EPSG:3857"


def _rasters(folder: Path, origins_m, size_px: int = 16, res_m: float = 0.3):
    data = np.full((3, size_px, size_px), 90, np.uint8)
    return [
        write_raster(str(folder / f"r{i}.tif"), data, WEB_MERCATOR, Affine(res_m, 0, x, 0, -res_m, y))
        for i, (x, y) in enumerate(origins_m)
    ]


def _every_cell(mosaic, group_tiles, block_px, boxes, tree):
    """The cells as the code before session 16 found them: every cell of the mosaic's box."""
    import statistics

    rx, ry = mosaic.res
    mx0, my0, mx1, my1 = mosaic.bounds
    med_w = statistics.median(r.bounds[2] - r.bounds[0] for r in mosaic.rasters)
    med_h = statistics.median(r.bounds[3] - r.bounds[1] for r in mosaic.rasters)
    cw = max(1, round(group_tiles * med_w / rx)) * rx
    ch = max(1, round(group_tiles * med_h / ry)) * ry
    out = []
    for r in range(max(1, math.ceil(round((my1 - my0) / ch, 6)))):
        for c in range(max(1, math.ceil(round((mx1 - mx0) / cw, 6)))):
            cell = (mx0 + c * cw, max(my0, my1 - (r + 1) * ch), min(mx1, mx0 + (c + 1) * cw), my1 - r * ch)
            box = shapely.box(*cell)
            hits = [j for j in tree.query(box) if mosaic_plan._overlaps(boxes[j], box, mosaic.res)]
            if hits:
                data = shapely.union_all([boxes[j] for j in hits]).intersection(box).bounds
                out.append((f"block[{r},{c}] ({len(hits)} rasters)", cell, data))
    return out


def test_the_cells_near_rasters_are_the_cells_with_data(tmp_path):
    rng = np.random.default_rng(3)
    for layout in range(6):
        folder = tmp_path / f"layout{layout}"
        folder.mkdir()
        # a grid with holes, shifted by fractions of a raster: cells hold 1 to 4 rasters, some none
        origins = [
            (500000.0 + 4.8 * col + rng.uniform(-1.5, 1.5), 900000.0 - 4.8 * row + rng.uniform(-1.5, 1.5))
            for row in range(5)
            for col in range(5)
            if rng.random() < 0.6
        ]
        mosaic = read_mosaic(_rasters(folder, origins))
        boxes = [shapely.box(*r.bounds) for r in mosaic.rasters]
        tree = shapely.STRtree(boxes)
        for k in (2, 3):
            expected = _every_cell(mosaic, k, 10_000, boxes, tree)
            assert mosaic_plan._cells(mosaic, k, 10_000, boxes, tree) == expected


def test_rasters_thousands_of_km_apart_are_planned_at_once(tmp_path):
    """QA, session 16: OAM areas 2, 3 and 4 (three countries) in one detect-many run spent 77 s of
    its 94 s visiting the empty cells between them; here the box holds about 4e10 cells."""
    paths = _rasters(tmp_path, [(0.0, 0.0), (4_000_000.0, 4_000_000.0)], size_px=32)
    code = textwrap.dedent(
        f"""
        from roof_detector.core.mosaic_plan import plan_jobs, read_mosaic
        jobs = plan_jobs(read_mosaic({paths!r}), 10.0, group_tiles=2)
        print("JOBS", len(jobs))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "JOBS 2" in proc.stdout
