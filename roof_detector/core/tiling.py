"""The model grid and the tile grid laid over it.

Model grid
    The raster's own CRS and extent, resampled so that one pixel covers
    ``gsd_m`` metres on the ground (the ground sample distance the model was
    trained for). x and y are scaled separately because a degree of
    longitude is shorter than a degree of latitude. The number of model
    pixels is rounded so the grid covers the raster extent exactly::

        width_px  = max(1, round(raster_width  * pixel_x_m / gsd_m))
        scale_x   = raster_width / width_px          # source pixels per model pixel
        transform = raster_transform * Affine.scale(scale_x, scale_y)

    The real ground size of a model pixel therefore differs from ``gsd_m``
    by less than half a pixel over the whole raster width.

    A raster whose pixels are already within ``NATIVE_GSD_TOLERANCE`` (3 %)
    of ``gsd_m`` on both axes is used as it is (``scale_x = scale_y = 1``):
    a UTM orthophoto sold as 0.30 m measures 0.2999 m on the ground (scale
    factor 0.9996), and resampling it by 0.04 % would only blur it and cost
    time (bilinear reads took 2.1 ms per 256 px tile against 0.75 ms for
    plain ones). The model was trained with scale jitter of -25 % to +35 %,
    so 3 % is well inside what it has seen.

    A window of a larger mosaic (a ``detect-many`` job) is laid on the mosaic's
    own model-pixel lattice (:class:`GridLattice`) instead: its grid starts at
    the first lattice pixel inside the window and has the mosaic's scale, so
    its model pixels are exactly the whole mosaic's (a grid laid from the
    window's own corner would sit a fraction of a pixel off wherever the
    raster is resampled)::

        k         = ceil((left - lattice_x0) / step_x)      # first lattice column inside
        col_off   = (lattice_x0 + k * step_x - left) / res_x  # source pixels, in [0, scale_x)
        width_px  = floor((raster_width - col_off) / scale_x)

    A window where the lattice's pixels are more than ``NATIVE_GSD_TOLERANCE`` off
    ``gsd_m`` on the ground (far from the centre of a mosaic in degrees or Web
    Mercator spanning a large range of latitude) gets its own grid instead.

Tile grid
    Square tiles of ``tile_size_px`` with ``overlap_px`` of overlap, stride
    ``tile_size_px - overlap_px``. Along an axis of ``n`` model pixels::

        n <= T:  one tile at 0 (the part past n is padding, invalid)
        n >  T:  count = ceil((n - T) / stride) + 1
                 origin_i = min(i * stride, n - T)   # the last tile is flush with the edge

    Every model pixel is *kept* from exactly one tile: neighbouring tiles
    split their overlap at its middle, ``split = (origin_next + origin + T) // 2``.
    With regular tiles each tile drops ``overlap_px / 2`` on each inner
    side; tiles on the raster edge keep their outer edge. So tile borders,
    where a network sees least context, never reach the output, and there
    are no seams.

    A grid on a mosaic's lattice (a ``detect-many`` job) lays its tiles where the
    whole mosaic's run lays them, at lattice pixels ``0, stride, 2 stride, ...``
    counted from the mosaic's first model pixel. With grid pixel 0 at lattice
    pixel ``k`` (``lattice_offset``)::

        first = (-k) mod stride                    # the first tile origin on the lattice
        origins = [0] + [first + i * stride, while < n - T] + [n - T]   # duplicates once

    The network then sees the same tiles, with the same context, as in one run
    over the whole mosaic, and keeps each pixel from the same tile, except within
    ``T`` of a grid edge that is not a lattice tile's (:func:`tile_aligned_bounds`
    grows a job's window to whole lattice tiles, so that there is none inside the mosaic).
    A window widened to whole pixels of a raster coarser than the lattice starts (ends) a
    pixel or two before (after) a lattice tile: its first (last) tile is then not the whole
    run's, and keeps only the pixels the whole run keeps from the tile the job lacks::

        first tile keeps [0, (prev(b) + b + T) // 2)      # b: the job's second tile
        last tile keeps  [(a + next(a) + T) // 2, n)      # a: the one before its last

    (lattice pixels; ``prev``/``next``: the neighbouring tiles of the whole run, ``b - stride``
    and ``a + stride`` but next to the whole grid's flush last tile, told apart by the whole
    grid's size on the lattice, :class:`GridLattice`).
    ``lattice_offset`` 0 gives the plain tiling above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from affine import Affine

from .raster_source import PixelWindow

#: Relative difference between raster and model pixel size under which the raster is not resampled.
NATIVE_GSD_TOLERANCE = 0.03


@dataclass(frozen=True)
class ModelGrid:
    """A north-up pixel grid in the raster CRS at the model's ground resolution.

    ``col_off_src`` / ``row_off_src`` locate this grid's origin in source
    pixels (non-zero for a sub-grid cut out for an area of interest).
    """

    width_px: int
    height_px: int
    scale_x: float  # source pixels per model pixel, x
    scale_y: float  # source pixels per model pixel, y
    transform: Affine  # model pixel corners -> raster CRS
    pixel_size_m: Tuple[float, float]  # ground size of one model pixel (x, y)
    col_off_src: float = 0.0
    row_off_src: float = 0.0

    def source_window(self, col_off: int, row_off: int, width: int, height: int) -> PixelWindow:
        """The source-pixel window covered by a block of model pixels."""
        return PixelWindow(
            self.col_off_src + col_off * self.scale_x,
            self.row_off_src + row_off * self.scale_y,
            width * self.scale_x,
            height * self.scale_y,
        )

    def subgrid(self, col_off: int, row_off: int, width: int, height: int) -> "ModelGrid":
        """The part of this grid starting at (col_off, row_off), ``width`` x ``height`` pixels."""
        return ModelGrid(
            width,
            height,
            self.scale_x,
            self.scale_y,
            self.transform * Affine.translation(col_off, row_off),
            self.pixel_size_m,
            self.col_off_src + col_off * self.scale_x,
            self.row_off_src + row_off * self.scale_y,
        )

    def pixel_bounds(self, bounds: Tuple[float, float, float, float]) -> Optional[Tuple[int, int, int, int]]:
        """Model pixel block (col0, row0, col1, row1), clipped to the grid, covering CRS ``bounds``.

        ``bounds`` is (minx, miny, maxx, maxy); returns None when it misses the grid.
        """
        inv = ~self.transform
        minx, miny, maxx, maxy = bounds
        c_a, r_a = inv * (minx, maxy)
        c_b, r_b = inv * (maxx, miny)
        c0 = max(0, int(math.floor(min(c_a, c_b))))
        r0 = max(0, int(math.floor(min(r_a, r_b))))
        c1 = min(self.width_px, int(math.ceil(max(c_a, c_b))))
        r1 = min(self.height_px, int(math.ceil(max(r_a, r_b))))
        if c1 <= c0 or r1 <= r0:
            return None
        return c0, r0, c1, r1


@dataclass(frozen=True)
class GridLattice:
    """Where a larger grid's model pixels lie, in the raster CRS: the top-left corner of one
    model pixel and the model pixel's size (``step_y`` positive, rows go down)."""

    x0: float
    y0: float
    step_x: float
    step_y: float
    # the whole grid's size in lattice pixels, where known: its last tile is flush with its end
    width_px: Optional[int] = None
    height_px: Optional[int] = None


def grid_lattice(grid: ModelGrid) -> GridLattice:
    """The lattice of ``grid``'s model pixels (the raster's own pixels where it is read at its
    own resolution): what windows of the same raster lay their grids and tiles on."""
    t = grid.transform
    return GridLattice(t.c, t.f, t.a, -t.e, grid.width_px, grid.height_px)


def model_grid(
    raster_transform: Affine,
    raster_width: int,
    raster_height: int,
    raster_pixel_size_m: Tuple[float, float],
    gsd_m: float,
    lattice: Optional[GridLattice] = None,
) -> ModelGrid:
    """The model grid over a north-up raster whose pixels measure ``raster_pixel_size_m`` on the ground.

    With ``lattice`` (a window of a larger mosaic): the model pixels of that lattice that lie
    inside the raster (module docstring).
    """
    px_x_m, px_y_m = raster_pixel_size_m
    if lattice is not None and _lattice_fits(raster_transform, raster_pixel_size_m, lattice, gsd_m):
        return _on_lattice(raster_transform, raster_width, raster_height, raster_pixel_size_m, lattice)
    if abs(px_x_m / gsd_m - 1.0) <= NATIVE_GSD_TOLERANCE and abs(px_y_m / gsd_m - 1.0) <= NATIVE_GSD_TOLERANCE:
        return ModelGrid(raster_width, raster_height, 1.0, 1.0, raster_transform, (px_x_m, px_y_m))
    width_px = max(1, int(round(raster_width * px_x_m / gsd_m)))
    height_px = max(1, int(round(raster_height * px_y_m / gsd_m)))
    scale_x = raster_width / width_px
    scale_y = raster_height / height_px
    transform = raster_transform * Affine.scale(scale_x, scale_y)
    return ModelGrid(width_px, height_px, scale_x, scale_y, transform, (px_x_m * scale_x, px_y_m * scale_y))


def _lattice_fits(transform: Affine, px_m: Tuple[float, float], lattice: GridLattice, gsd_m: float) -> bool:
    """Whether the lattice's pixels measure ``gsd_m`` on the ground here, within :data:`NATIVE_GSD_TOLERANCE`.

    A degree (EPSG:4326) or a Web Mercator metre shrinks on the ground away from the equator: a
    mosaic spanning more than about 1.5 degrees of latitude at 50 degrees has a lattice whose pixels
    are more than 3 % off the model's GSD at its far ends, where a window's own grid is laid instead.
    """
    size_x = px_m[0] * lattice.step_x / transform.a
    size_y = px_m[1] * lattice.step_y / -transform.e
    return abs(size_x / gsd_m - 1.0) <= NATIVE_GSD_TOLERANCE and abs(size_y / gsd_m - 1.0) <= NATIVE_GSD_TOLERANCE


def _on_lattice(
    transform: Affine, width: int, height: int, px_m: Tuple[float, float], lattice: GridLattice
) -> ModelGrid:
    """The model pixels of ``lattice`` inside a north-up raster (see :func:`model_grid`)."""
    res_x, res_y = transform.a, -transform.e
    scale_x, scale_y = lattice.step_x / res_x, lattice.step_y / res_y
    # 1e-6 of a pixel: a window edge on a lattice line, up to float noise, starts there
    k = math.ceil((transform.c - lattice.x0) / lattice.step_x - 1e-6)
    r = math.ceil((lattice.y0 - transform.f) / lattice.step_y - 1e-6)
    col_off = max(0.0, (lattice.x0 + k * lattice.step_x - transform.c) / res_x)
    row_off = max(0.0, (transform.f - (lattice.y0 - r * lattice.step_y)) / res_y)
    width_px = max(1, int(math.floor((width - col_off) / scale_x + 1e-6)))
    height_px = max(1, int(math.floor((height - row_off) / scale_y + 1e-6)))
    grid_transform = transform * Affine.translation(col_off, row_off) * Affine.scale(scale_x, scale_y)
    size_m = (px_m[0] * scale_x, px_m[1] * scale_y)
    return ModelGrid(width_px, height_px, scale_x, scale_y, grid_transform, size_m, col_off, row_off)


def tile_origins(length_px: int, tile_size_px: int, overlap_px: int, lattice_offset: int = 0) -> List[int]:
    """Tile origins along one axis of ``length_px`` pixels whose pixel 0 is pixel ``lattice_offset``
    of a mosaic's lattice (see the module docstring)."""
    if tile_size_px <= 0 or not 0 <= overlap_px < tile_size_px:
        raise ValueError(f"bad tiling: tile_size_px={tile_size_px}, overlap_px={overlap_px}")
    if length_px <= tile_size_px:
        return [0]
    stride = tile_size_px - overlap_px
    last = length_px - tile_size_px
    inner = range((-lattice_offset) % stride, last, stride)
    return sorted({0, last, *inner})


def lattice_offset(grid: ModelGrid, lattice: Optional[GridLattice]) -> Tuple[int, int]:
    """(column, row) of ``lattice`` at ``grid``'s pixel (0, 0); (0, 0) when the grid is not on it
    (no lattice, or a grid laid with its own pixels where the lattice's do not fit)."""
    return lattice_tiling(grid, lattice).offset


@dataclass(frozen=True)
class LatticePlace:
    """A grid's (column, row) on a mosaic's lattice and the whole grid's (width, height) there."""

    offset: Tuple[int, int] = (0, 0)
    whole_px: Tuple[Optional[int], Optional[int]] = (None, None)


def lattice_tiling(grid: ModelGrid, lattice: Optional[GridLattice]) -> LatticePlace:
    """Where ``grid`` lies on ``lattice``, for :func:`tile_grid`: its offset and the whole grid's
    size (both unknown when the grid is not on the lattice)."""
    on = _offset_on(grid, lattice)
    if on is None:
        return LatticePlace()
    return LatticePlace(on, (lattice.width_px, lattice.height_px))


def _offset_on(grid: ModelGrid, lattice: Optional[GridLattice]) -> Optional[Tuple[int, int]]:
    if lattice is None:
        return None
    t = grid.transform
    if abs(t.a / lattice.step_x - 1.0) > 1e-6 or abs(-t.e / lattice.step_y - 1.0) > 1e-6:
        return None
    col = (t.c - lattice.x0) / lattice.step_x
    row = (lattice.y0 - t.f) / lattice.step_y
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        return None
    return int(round(col)), int(round(row))


def tile_aligned_bounds(
    bounds: Tuple[float, float, float, float],
    lattice: GridLattice,
    tile_size_px: int,
    overlap_px: int,
    grid_size: Optional[Tuple[int, int]] = None,
) -> Tuple[float, float, float, float]:
    """``bounds`` (minx, miny, maxx, maxy) grown to whole tiles of the lattice's tiling: it starts
    at a lattice tile origin and spans ``T + m * stride`` lattice pixels (module docstring).

    ``grid_size``: the whole grid's (width, height) in lattice pixels. Its last tile is flush with
    its end, off the lattice, and keeps pixels from ``(origin_before_it + n) // 2`` on: bounds that
    reach into those pixels are grown to hold that very tile and the one before it.
    """
    stride = tile_size_px - overlap_px

    def span(lo: float, hi: float, n: Optional[int]) -> Tuple[int, int]:
        start = math.floor(lo + 1e-6) // stride * stride
        tiles = max(0, math.ceil((math.ceil(hi - 1e-6) - start - tile_size_px) / stride))
        stop = start + tile_size_px + tiles * stride
        if n is not None:
            before, kept_from = _last_tile_split(n, tile_size_px, overlap_px)
            if stop > kept_from:
                # the last tile and the one before it, which decide where its kept pixels begin
                stop = max(stop, n)
                start = min(start, before)
        return start, stop

    n_cols, n_rows = grid_size if grid_size is not None else (None, None)
    c0, c1 = span((bounds[0] - lattice.x0) / lattice.step_x, (bounds[2] - lattice.x0) / lattice.step_x, n_cols)
    r0, r1 = span((lattice.y0 - bounds[3]) / lattice.step_y, (lattice.y0 - bounds[1]) / lattice.step_y, n_rows)
    return (
        lattice.x0 + c0 * lattice.step_x,
        lattice.y0 - r1 * lattice.step_y,
        lattice.x0 + c1 * lattice.step_x,
        lattice.y0 - r0 * lattice.step_y,
    )


def _last_tile_split(length_px: int, tile_size_px: int, overlap_px: int) -> Tuple[int, int]:
    """(origin of the tile before the last, first pixel the last tile keeps) along an axis of
    :func:`tile_origins` with offset 0, in O(1): (0, 0) for an axis of one tile."""
    if length_px <= tile_size_px:
        return 0, 0
    last = length_px - tile_size_px
    before = (last - 1) // (tile_size_px - overlap_px) * (tile_size_px - overlap_px)
    return before, (before + last + tile_size_px) // 2


def kept_spans(
    origins: Sequence[int],
    length_px: int,
    tile_size_px: int,
    overlap_px: Optional[int] = None,
    lattice_offset: int = 0,
    whole_px: Optional[int] = None,
) -> List[Tuple[int, int]]:
    """Grid span ``[start, stop)`` kept from each tile: the spans partition ``[0, length_px)``.

    Neighbouring tiles split their overlap at its middle. On a mosaic's lattice (``overlap_px``
    and ``whole_px``, the whole grid's length, given) a tile the whole run does not lay (the
    first one, off the lattice, or the last one, flush with a window's end inside the mosaic)
    keeps only what the whole run keeps from the tile it lacks there, so every other pixel is
    kept from the whole run's own tile (module docstring).
    """
    splits = [(origins[i + 1] + origins[i] + tile_size_px) // 2 for i in range(len(origins) - 1)]
    if overlap_px is not None and whole_px is not None and len(origins) > 1:
        stride = tile_size_px - overlap_px
        whole_last = max(0, whole_px - tile_size_px)

        def laid(x: int) -> bool:  # a tile origin of the whole run, in lattice pixels
            return x == whole_last or (x % stride == 0 and x < whole_last)

        def whole_split(a: int, b: int) -> int:  # between consecutive tiles of the whole run
            return (a + b + tile_size_px) // 2 - lattice_offset

        head, second = lattice_offset + origins[0], lattice_offset + origins[1]
        if not laid(head) and laid(second) and second > 0:
            # the whole run's tile before the second one (a lattice tile, or the one before its
            # flush last tile) keeps what lies before this split
            splits[0] = max(1, whole_split((second - 1) // stride * stride, second))
        tail, before = lattice_offset + origins[-1], lattice_offset + origins[-2]
        if not laid(tail) and laid(before) and before < whole_last:
            splits[-1] = min(length_px - 1, whole_split(before, min(before + stride, whole_last)))
    starts = [0] + splits
    stops = splits + [length_px]
    return list(zip(starts, stops))


@dataclass(frozen=True)
class Tile:
    """One model-sized tile on the model grid.

    ``col_off``/``row_off``: tile origin on the grid. ``width``/``height``:
    how much of the tile lies on the grid (less than the tile size only for a
    grid smaller than one tile; the rest is padding). ``keep``: the
    (col0, row0, col1, row1) grid block this tile writes to the output.
    """

    index: int
    col_off: int
    row_off: int
    width: int
    height: int
    keep: Tuple[int, int, int, int]


def tiles_on(grid: ModelGrid, lattice: Optional[GridLattice], tile_size_px: int, overlap_px: int) -> List[Tile]:
    """:func:`tile_grid` over ``grid``, laid on ``lattice`` (a mosaic's) where the grid is on it."""
    place = lattice_tiling(grid, lattice)
    return tile_grid(grid.width_px, grid.height_px, tile_size_px, overlap_px, place.offset, place.whole_px)


def tile_grid(
    width_px: int,
    height_px: int,
    tile_size_px: int,
    overlap_px: int,
    lattice_offset: Tuple[int, int] = (0, 0),
    whole_px: Tuple[Optional[int], Optional[int]] = (None, None),
) -> List[Tile]:
    """All tiles over a ``width_px`` x ``height_px`` grid, row by row (``lattice_offset``: the
    grid's (column, row) on a mosaic's lattice, ``whole_px`` the whole grid's (width, height)
    there, see the module docstring and :func:`kept_spans`)."""
    cols = tile_origins(width_px, tile_size_px, overlap_px, lattice_offset[0])
    rows = tile_origins(height_px, tile_size_px, overlap_px, lattice_offset[1])
    col_spans = kept_spans(cols, width_px, tile_size_px, overlap_px, lattice_offset[0], whole_px[0])
    row_spans = kept_spans(rows, height_px, tile_size_px, overlap_px, lattice_offset[1], whole_px[1])
    tiles: List[Tile] = []
    for r, (row_off, (r0, r1)) in enumerate(zip(rows, row_spans)):
        for c, (col_off, (c0, c1)) in enumerate(zip(cols, col_spans)):
            tiles.append(
                Tile(
                    len(tiles),
                    col_off,
                    row_off,
                    min(tile_size_px, width_px - col_off),
                    min(tile_size_px, height_px - row_off),
                    (c0, r0, c1, r1),
                )
            )
    return tiles
