"""The model's pixels and tiles over a whole mosaic, which every detect-many job lays.

One run over the whole mosaic (its VRT) lays a model grid and tiles it from the
grid's first pixel (:mod:`.tiling`). A job reading a window of the mosaic lays
that grid's pixels inside its window (:func:`mosaic_lattice`, a
:class:`.tiling.GridLattice`) and the same tiles (:func:`.tiling.tile_origins`
with the window's offset on the lattice); its window is grown to whole tiles
(:func:`.mosaic_plan.plan_jobs` with :func:`mosaic_tiling`). The model then sees
each pixel a job owns with the context one run over the mosaic gives it.
:func:`model_tile_count` says what that costs in model tiles.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from .mosaic_plan import Bounds, Job, MosaicInfo, _m2_per_unit2, pixel_grid
from .tiling import GridLattice, grid_lattice, lattice_offset, model_grid, tile_origins

#: (lattice, tile size px, overlap px): what :func:`.mosaic_plan.plan_jobs` grows windows to.
MosaicTiling = Tuple[GridLattice, int, int]


def mosaic_lattice(mosaic: MosaicInfo, gsd_m: float) -> GridLattice:
    """The model-pixel lattice of a detection over the whole mosaic (its VRT), for the jobs to lay
    their grids and tiles on (the mosaic's own pixels where it is read at its own resolution)."""
    from .geo import pixel_size_m

    grid = pixel_grid(mosaic.bounds, mosaic.res)
    return grid_lattice(model_grid(*grid, pixel_size_m(mosaic.crs_wkt, *grid), gsd_m))


def mosaic_tiling(mosaic: MosaicInfo, gsd_m: float, tile_size_px: int, overlap_px: int) -> MosaicTiling:
    """The lattice and tiling of one run over the whole mosaic, for :func:`.mosaic_plan.plan_jobs`."""
    return mosaic_lattice(mosaic, gsd_m), int(tile_size_px), int(overlap_px)


def model_tile_count(
    jobs: Sequence[Job], mosaic: MosaicInfo, grid: Optional[dict] = None, tiling: Optional[MosaicTiling] = None
) -> Tuple[int, int]:
    """``(jobs_total, whole)``: model tiles the jobs run together, and one run over the whole mosaic.

    Tiling maths only (no model): ``grid`` is the model's ``gsd_m``, ``tile_size_px`` and
    ``overlap_px`` (default: the bundled model's); ``tiling``: the jobs lay the mosaic's
    (as detect-many's do), else each its own from its window's corner.
    """
    from .params import BUNDLED_MODEL_GRID

    grid = dict(grid or BUNDLED_MODEL_GRID)
    px_m = math.sqrt(_m2_per_unit2(mosaic))
    rx, ry = mosaic.res
    size, overlap = int(grid["tile_size_px"]), int(grid["overlap_px"])
    lattice = tiling[0] if tiling else None

    def count(bounds: Bounds, on: Optional[GridLattice]) -> int:
        g = model_grid(*pixel_grid(bounds, mosaic.res), (rx * px_m, ry * px_m), grid["gsd_m"], on)
        col, row = lattice_offset(g, on)
        return len(tile_origins(g.width_px, size, overlap, col)) * len(tile_origins(g.height_px, size, overlap, row))

    return sum(count(j.window, lattice) for j in jobs), count(mosaic.bounds, None)


def planned_tiling(mosaic: MosaicInfo, grid: Optional[dict] = None) -> MosaicTiling:
    """:func:`mosaic_tiling` for a model ``grid`` (default: the bundled model's), as detect-many plans."""
    from .params import BUNDLED_MODEL_GRID

    grid = dict(grid or BUNDLED_MODEL_GRID)
    return mosaic_tiling(mosaic, grid["gsd_m"], grid["tile_size_px"], grid["overlap_px"])
