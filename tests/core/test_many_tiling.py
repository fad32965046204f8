"""detect-many's jobs lay the whole mosaic's tiles: each owned pixel is kept from the tile that one
run over the whole mosaic keeps it from, so the model sees it with the same context."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from roof_detector.core.geo import pixel_size_m
from roof_detector.core.mosaic_plan import expand_inputs, pixel_grid, plan_jobs, read_mosaic
from roof_detector.core.mosaic_tiles import mosaic_lattice
from roof_detector.core.tiling import lattice_offset, model_grid, tile_grid, tiles_on
from tests.core.many_fixtures import cut, scene

TILE_PX, OVERLAP_PX, GSD_M = 64, 8, 0.5  # the test model's
SEAM_BAND_M = 3.0  # many_seams: candidates this close to a seam are traced by both jobs


def _keeper_map(width, height, tiles, offset):
    """Per lattice pixel of the grid: an id of the lattice tile that keeps it (its lattice origin)."""
    keeper = np.full((height, width), -1, dtype=np.int64)
    for t in tiles:
        c0, r0, c1, r1 = t.keep
        keeper[r0:r1, c0:c1] = (offset[1] + t.row_off) * 1_000_000 + (offset[0] + t.col_off)
    return keeper


def _mismatches(mosaic, jobs, lattice, tile=(TILE_PX, OVERLAP_PX, GSD_M)) -> int:
    """Owned pixels (and those within the seam band) a job keeps from another tile than the whole run."""
    tile_px, overlap_px, gsd_m = tile
    transform, w, h = pixel_grid(mosaic.bounds, mosaic.res)
    px_m = pixel_size_m(mosaic.crs_wkt, transform, w, h)
    whole = model_grid(transform, w, h, px_m, gsd_m)
    whole_keeper = _keeper_map(
        whole.width_px, whole.height_px, tile_grid(whole.width_px, whole.height_px, tile_px, overlap_px), (0, 0)
    )
    band = SEAM_BAND_M / px_m[0] * mosaic.res[0]  # metres -> CRS units
    bad = 0
    for job in jobs:
        jt, jw, jh = pixel_grid(job.window, mosaic.res)
        grid = model_grid(jt, jw, jh, px_m, gsd_m, lattice)
        offset = lattice_offset(grid, lattice)
        keeper = _keeper_map(grid.width_px, grid.height_px, tiles_on(grid, lattice, tile_px, overlap_px), offset)
        fx0, fy0, fx1, fy1 = job.footprint
        c0 = max(0, math.floor((fx0 - band - lattice.x0) / lattice.step_x))
        c1 = min(whole.width_px, math.ceil((fx1 + band - lattice.x0) / lattice.step_x))
        r0 = max(0, math.floor((lattice.y0 - fy1 - band) / lattice.step_y))
        r1 = min(whole.height_px, math.ceil((lattice.y0 - fy0 + band) / lattice.step_y))
        mine = keeper[r0 - offset[1] : r1 - offset[1], c0 - offset[0] : c1 - offset[0]]
        assert mine.shape == (r1 - r0, c1 - c0), f"{job.name}: its window does not cover its footprint"
        bad += int((mine != whole_keeper[r0:r1, c0:c1]).sum())
    return bad


@pytest.mark.parametrize("block_px", [256, 400, 600, 1000])
@pytest.mark.parametrize("margin_m", [10.0, 30.0])
@pytest.mark.parametrize(
    "side_px, pixel_m, model",
    [
        (2048, 0.075, (256, 32, 0.3)),
        (2000, 0.25, (256, 32, 0.3)),
        (3000, 0.3, (256, 32, 0.3)),
        (1800, 0.15, (64, 8, 0.5)),
        # coarser than the model's GSD: a window cut on whole pixels starts and ends off the lattice
        (1200, 0.5, (256, 32, 0.3)),
        (2000, 0.6, (256, 32, 0.3)),
        (1500, 0.37, (256, 32, 0.3)),
    ],
)
def test_blocks_of_one_raster_keep_their_pixels_from_the_whole_rasters_tiles(
    block_px, margin_m, side_px, pixel_m, model
):
    """Also next to the whole run's last tile, flush with the raster's end and off the lattice: a
    window reaching into the pixels it keeps is grown to hold it and the tile before it (QA,
    session 10: the demo crop in 600 px blocks split two touching roofs otherwise). Planning only
    (rasters' headers): blocks of the demo's size and resolution, and of coarser rasters down to
    the model's GSD, and coarser ones (0.5, 0.6 m for a 0.3 m model: the window, widened to whole
    pixels, starts a pixel or two before a lattice tile, and its first tile, off the lattice, kept
    pixels up to 128 px in, past a 30 m margin, until session 14)."""
    from devtools.bench_many_cli import grid_mosaic

    mosaic = grid_mosaic(1, side_px * pixel_m, pixel_m)
    lattice = mosaic_lattice(mosaic, model[2])
    jobs = plan_jobs(mosaic, margin_m=margin_m, block_px=block_px, tiles=(lattice, model[0], model[1]))
    assert len(jobs) > 1
    assert _mismatches(mosaic, jobs, lattice, model) == 0


@pytest.mark.parametrize("pixel_m", [0.5, 0.33, 0.37])
def test_every_job_keeps_its_pixels_from_the_whole_mosaics_tiles(tmp_path, pixel_m):
    whole = scene(str(tmp_path / "whole.tif"), pixel_m)
    cut(whole, str(tmp_path / "tiles"), parts=3, overlap_px=7)
    mosaic = read_mosaic(expand_inputs([str(tmp_path / "tiles")]))
    lattice = mosaic_lattice(mosaic, GSD_M)
    jobs = plan_jobs(mosaic, margin_m=10.0, tiles=(lattice, TILE_PX, OVERLAP_PX))
    assert len(jobs) == 9
    assert _mismatches(mosaic, jobs, lattice) == 0
    # windows as they were (the job's own tiling from its window's corner): pixels kept elsewhere
    plain = plan_jobs(mosaic, margin_m=10.0)
    assert _mismatches(mosaic, plain, lattice) > 0


class _ContextNet(torch.nn.Module):
    """Building where a pixel is brighter than its tile's mean by 0.25: what it finds depends on
    the tile a pixel is seen in, as a real network's context does (a mid-grey roof is found in a
    dark tile and missed in a bright one)."""

    def forward(self, x):
        grey = x.mean(dim=1, keepdim=True)
        return torch.sigmoid(60.0 * (grey - grey.mean(dim=(2, 3), keepdim=True) - 0.25))


def _context_scene(path: str) -> str:
    """The seam scene with every other 60 px square of roof mid-grey (140 instead of 220)."""
    from osgeo import gdal

    from tests.core.synthetic_rasters import UTM, write_raster

    tmp = scene(path + ".bright.tif")
    ds = gdal.Open(tmp)
    data, transform = ds.ReadAsArray(), ds.GetGeoTransform()
    ds = None
    from affine import Affine

    rows, cols = np.indices(data.shape[1:])
    mid = (data[0] == 220) & (((rows // 60) + (cols // 60)) % 2 == 0)
    data[:, mid] = 140
    return write_raster(path, data, UTM, Affine.from_gdal(*transform))


def test_a_context_dependent_model_finds_the_same_buildings_in_jobs_as_in_one_run(tmp_path):
    """With a model whose output depends on its tile, the 3 x 3 jobs' layer is the whole raster's."""
    import shapely

    from devtools.test_model import brightness_metadata
    from roof_detector.core.detect_many import detect_many
    from roof_detector.core.model_io import save_model
    from roof_detector.core.pipeline import DetectOptions, detect_buildings
    from tests.core.many_fixtures import read_layer

    model = save_model(_ContextNet(), str(tmp_path / "context.pt"), brightness_metadata())
    whole = _context_scene(str(tmp_path / "whole.tif"))
    options = DetectOptions(model_path=model, device="cpu", regularize=False)
    reference = [b.geometry for b in detect_buildings(whole, options).buildings]
    cut(whole, str(tmp_path / "tiles"), parts=3, overlap_px=7)
    out = str(tmp_path / "many.gpkg")
    detect_many([str(tmp_path / "tiles")], out, options, workers=1, processes=False, margin_m=10.0)
    got = [g for g, _ in read_layer(out)]
    assert len(reference) > 30
    assert len(got) == len(reference)
    assert shapely.union_all(got).symmetric_difference(shapely.union_all(reference)).area < 1e-6
