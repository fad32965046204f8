"""Tile grid maths: origins, flush last tile, padding, and every pixel kept from exactly one tile."""

import numpy as np
import pytest
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st

from roof_detector.core.tiling import kept_spans, model_grid, tile_grid, tile_origins


def test_origins_regular_stride_and_last_tile_flush():
    assert tile_origins(200, 64, 8) == [0, 56, 112, 136]  # 136 + 64 = 200
    assert tile_origins(120, 64, 8) == [0, 56]  # fits exactly
    assert tile_origins(65, 64, 8) == [0, 1]


def test_small_axis_gets_one_padded_tile():
    assert tile_origins(10, 64, 8) == [0]
    tiles = tile_grid(10, 30, 64, 8)
    assert len(tiles) == 1
    t = tiles[0]
    assert (t.col_off, t.row_off, t.width, t.height, t.keep) == (0, 0, 10, 30, (0, 0, 10, 30))


def test_overlap_is_split_in_the_middle():
    spans = kept_spans([0, 56, 112, 136], 200, 64)
    assert spans == [(0, 60), (60, 116), (116, 156), (156, 200)]
    # regular neighbours drop overlap/2 = 4 px each at the inner border
    assert 64 - spans[0][1] == 4 and spans[1][0] - 56 == 4


@given(length=st.integers(1, 3000), tile_k=st.integers(1, 16), overlap_frac=st.floats(0, 0.49))
def test_kept_spans_partition_the_axis(length, tile_k, overlap_frac):
    tile = 32 * tile_k
    overlap = int(tile * overlap_frac)
    origins = tile_origins(length, tile, overlap)
    spans = kept_spans(origins, length, tile)
    assert origins[0] == 0
    assert all(b > a for a, b in zip(origins, origins[1:]))
    if length > tile:
        assert origins[-1] + tile == length  # last tile flush with the edge
        assert all(b - a <= tile - overlap for a, b in zip(origins, origins[1:]))
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 == b0  # contiguous: no gap, no double
    for i, ((s0, s1), o) in enumerate(zip(spans, origins)):
        assert o <= s0 < s1 <= o + tile  # kept part lies inside its tile
        if i > 0:
            assert s0 - o >= overlap // 2  # inner borders are cropped
        if i < len(origins) - 1:
            assert o + tile - s1 >= overlap // 2


def test_tile_keeps_cover_every_pixel_once():
    w, h = 300, 170
    cover = np.zeros((h, w), int)
    for t in tile_grid(w, h, 64, 8):
        c0, r0, c1, r1 = t.keep
        assert t.col_off <= c0 and c1 <= t.col_off + t.width
        assert t.row_off <= r0 and r1 <= t.row_off + t.height
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()


def test_model_grid_scales_x_and_y_separately_and_covers_the_raster():
    # degrees at 50 N: 1e-5 deg is ~0.72 m in x and ~1.11 m in y
    t = Affine(1e-5, 0, 3.0, 0, -1e-5, 50.0)
    grid = model_grid(t, 400, 300, (0.7169, 1.1123), gsd_m=0.5)
    assert grid.width_px == round(400 * 0.7169 / 0.5) and grid.height_px == round(300 * 1.1123 / 0.5)
    assert grid.pixel_size_m[0] == pytest.approx(0.5, abs=0.002)
    assert grid.pixel_size_m[1] == pytest.approx(0.5, abs=0.002)
    # same extent: the model grid's far corner is the raster's
    assert grid.transform * (grid.width_px, grid.height_px) == pytest.approx(t * (400, 300))
    win = grid.source_window(0, 0, grid.width_px, grid.height_px)
    assert (win.width, win.height) == pytest.approx((400, 300))


def test_subgrid_maps_back_to_source_pixels():
    grid = model_grid(Affine(0.25, 0, 0, 0, -0.25, 100), 800, 400, (0.25, 0.25), gsd_m=0.5)
    assert (grid.width_px, grid.height_px) == (400, 200)
    sub = grid.subgrid(10, 20, 50, 60)
    win = sub.source_window(0, 0, 50, 60)
    assert win == pytest.approx((20, 40, 100, 120))
    assert sub.transform * (0, 0) == pytest.approx(grid.transform * (10, 20))
    assert grid.pixel_bounds((5.0, 80.0, 10.0, 90.0)) == (10, 20, 20, 40)
    assert grid.pixel_bounds((1000.0, 1000.0, 1001.0, 1001.0)) is None


def test_model_grid_keeps_native_pixels_within_tolerance_and_resamples_beyond():
    t = Affine(0.3, 0, 500000, 0, -0.3, 5000000)
    # UTM's scale factor: 0.3 CRS units are 0.29988 m on the ground -> used as they are
    native = model_grid(t, 1000, 800, (0.29988, 0.29988), gsd_m=0.3)
    assert (native.width_px, native.height_px, native.scale_x, native.scale_y) == (1000, 800, 1.0, 1.0)
    assert native.transform == t and native.pixel_size_m == (0.29988, 0.29988)
    assert native.source_window(256, 512, 256, 256) == (256, 512, 256, 256)
    # one axis beyond 3 %: resampled
    coarse = model_grid(t, 1000, 800, (0.29988, 0.3 * 1.031), gsd_m=0.3)
    assert coarse.height_px == round(800 * 0.3 * 1.031 / 0.3) and coarse.width_px == 1000


@pytest.mark.parametrize("pixel_m", [0.5, 0.3, 0.7])
def test_tiles_read_as_row_runs_equal_tiles_read_one_by_one(tmp_path, pixel_m):
    """read_tiles reads neighbouring tiles of a row as one window: the same pixels as a read per tile,
    native (0.5 m) or resampled to the 0.5 m model grid, at the raster's edge too."""
    from roof_detector.core.inference import _row_runs, read_tiles
    from roof_detector.core.raster_source import open_source

    from .synthetic_rasters import UTM, UTM_ORIGIN, write_raster

    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 333, 517), dtype=np.uint8)
    transform = Affine(pixel_m, 0, UTM_ORIGIN[0], 0, -pixel_m, UTM_ORIGIN[1])
    path = write_raster(str(tmp_path / "r.tif"), data, UTM, transform)
    src, _ = open_source(path)
    try:
        grid = model_grid(src.transform, src.width, src.height, (pixel_m, pixel_m), 0.5)
        tiles = tile_grid(grid.width_px, grid.height_px, 64, 16)
        per_row = len(tile_origins(grid.width_px, 64, 16))
        batch = tiles[per_row - 3 : per_row + 2]  # the end of the first row (its edge tile) and two of the next
        assert [len(r) for r in _row_runs(batch)] == [3, 2]
        rgb, valid = read_tiles(src, grid, batch, 64)
        one_by_one = [read_tiles(src, grid, [t], 64) for t in batch]
    finally:
        src.close()
    # GDAL resamples a window's pixels from the same source positions, whatever the window's extent
    assert np.array_equal(rgb, np.concatenate([r for r, _ in one_by_one]))
    assert np.array_equal(valid, np.concatenate([v for _, v in one_by_one]))


def test_row_runs_join_neighbours_only():
    from roof_detector.core.inference import _row_runs

    tiles = tile_grid(500, 200, 64, 16)  # 10 x 4 tiles
    per_row = len(tile_origins(500, 64, 16))
    assert [len(r) for r in _row_runs(tiles)] == [per_row] * (len(tiles) // per_row)
    gap = [tiles[0], tiles[1], tiles[3], tiles[4]]  # an area of interest left tile 2 out
    assert _row_runs(gap) == [[0, 1], [2, 3]]


@given(
    st.floats(0.1, 0.45),  # source pixel size (m); the model's GSD is 0.5
    st.integers(0, 5000),  # window offset in source pixels
    st.integers(0, 5000),
    st.integers(40, 900),  # window size in source pixels
    st.integers(40, 900),
)
def test_a_window_on_the_mosaics_lattice_has_the_mosaics_model_pixels(res, col, row, w, h):
    """Every model pixel of the window's grid is one of the whole mosaic's, and the grid holds every
    mosaic model pixel that lies wholly inside the window."""
    from roof_detector.core.tiling import grid_lattice

    x0, y0 = 500000.0, 5500000.0
    whole = model_grid(Affine(res, 0, x0, 0, -res, y0), 6000, 6000, (res, res), 0.5)
    lattice = grid_lattice(whole)
    window = Affine(res, 0, x0 + col * res, 0, -res, y0 - row * res)
    grid = model_grid(window, w, h, (res, res), 0.5, lattice)
    step_x, step_y = whole.transform.a, -whole.transform.e
    assert (grid.transform.a, grid.transform.e) == pytest.approx((step_x, -step_y), rel=1e-12)
    # its first pixel is a lattice pixel: a whole number of steps from the mosaic's corner
    k = (grid.transform.c - x0) / step_x
    r = (y0 - grid.transform.f) / step_y
    assert abs(k - round(k)) < 1e-6 and abs(r - round(r)) < 1e-6
    # inside the window, and the next lattice pixel along each axis would not be
    left, top = window.c, window.f
    right, bottom = left + w * res, top - h * res
    assert grid.transform.c >= left - 1e-6 and grid.transform.c - step_x < left + 1e-6
    assert grid.transform.f <= top + 1e-6 and grid.transform.f + step_y > top - 1e-6
    end_x = grid.transform.c + grid.width_px * step_x
    end_y = grid.transform.f - grid.height_px * step_y
    assert end_x <= right + 1e-6 < end_x + step_x
    assert end_y >= bottom - 1e-6 > end_y - step_y
    # the source window of its pixels is the same stretch of ground
    sw = grid.source_window(0, 0, grid.width_px, grid.height_px)
    assert left + sw.col_off * res == pytest.approx(grid.transform.c, abs=1e-6)


def test_a_grid_at_the_rasters_own_resolution_lies_on_the_rasters_pixels():
    from roof_detector.core.tiling import GridLattice, grid_lattice

    native = model_grid(Affine(0.3, 0, 10, 0, -0.3, 20), 100, 100, (0.3, 0.3), 0.3)
    assert grid_lattice(native) == GridLattice(10, 20, 0.3, 0.3, 100, 100)  # with the whole grid's size
    resampled = grid_lattice(model_grid(Affine(0.3, 0, 10, 0, -0.3, 20), 100, 100, (0.3, 0.3), 0.5))
    assert (resampled.x0, resampled.y0) == (10, 20) and resampled.step_x == pytest.approx(0.5, rel=0.01)


def test_a_window_where_the_lattice_is_off_the_gsd_gets_its_own_grid():
    """Far from a Web Mercator mosaic's centre a lattice pixel is no longer the model's GSD on the
    ground: the window's own grid is laid there (its pixels measure the GSD), near it the lattice's."""
    from roof_detector.core.tiling import GridLattice

    lattice = GridLattice(0.0, 0.0, 0.5, 0.5)  # 0.5 CRS units = 0.3 m at the mosaic's centre
    window = Affine(0.25, 0, 1000.0, 0, -0.25, -1000.0)
    near = model_grid(window, 400, 400, (0.15 * 1.01, 0.15 * 1.01), 0.3, lattice)  # 1 % off: lattice
    assert (near.transform.a, near.scale_x) == (0.5, 2.0)
    far = model_grid(window, 400, 400, (0.15 * 0.9, 0.15 * 0.9), 0.3, lattice)  # 10 % off: its own grid
    assert far.width_px == round(400 * 0.135 / 0.3) and far.transform.c == 1000.0


@given(
    length=st.integers(1, 3000),
    tile=st.sampled_from([64, 256]),
    overlap=st.sampled_from([0, 8, 32]),
    offset=st.integers(0, 5000),
)
def test_tiles_on_a_lattice_lie_where_the_whole_mosaics_run_lays_them(length, tile, overlap, offset):
    """Every tile origin but the grid's first and last is a whole-mosaic tile origin (a multiple of
    the stride on the lattice); the kept spans still partition the axis; offset 0 is the plain tiling."""
    stride = tile - overlap
    origins = tile_origins(length, tile, overlap, offset)
    assert origins == sorted(set(origins)) and origins[0] == 0
    assert origins[-1] == max(0, length - tile)
    assert all((offset + o) % stride == 0 for o in origins[1:-1])
    # no gap a whole-mosaic tile would fill: consecutive origins at most a stride apart
    assert all(b - a <= stride for a, b in zip(origins, origins[1:]))
    spans = kept_spans(origins, length, tile)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    plain = tile_origins(length, tile, overlap)
    if length > tile:
        assert plain == [min(i * stride, length - tile) for i in range(len(plain))]
    assert tile_origins(length, tile, overlap, 0) == plain


@given(
    x0=st.floats(-500, 500),
    width=st.floats(1, 900),
    y1=st.floats(-500, 500),
    height=st.floats(1, 900),
    step=st.sampled_from([0.5, 0.3, 1.0 / 3.0]),
)
def test_bounds_grown_to_whole_lattice_tiles(x0, width, y1, height, step):
    from roof_detector.core.tiling import GridLattice, tile_aligned_bounds

    lattice = GridLattice(10.0, 20.0, step, step)
    tile, overlap = 64, 8
    stride = tile - overlap
    b = tile_aligned_bounds((x0, y1 - height, x0 + width, y1), lattice, tile, overlap)
    assert b[0] <= x0 + 1e-9 and b[2] >= x0 + width - 1e-9 and b[1] <= y1 - height + 1e-9 and b[3] >= y1 - 1e-9
    c0, c1 = (b[0] - 10.0) / step, (b[2] - 10.0) / step
    r0, r1 = (20.0 - b[3]) / step, (20.0 - b[1]) / step
    for start, stop in ((c0, c1), (r0, r1)):
        assert abs(start - round(start)) < 1e-6 and round(start) % stride == 0  # a lattice tile origin
        n = round(stop - start)
        assert (n - tile) % stride == 0 and n >= tile  # whole tiles: the last one is a lattice tile too
    # grown by less than a stride before, and after by less than a stride (and a pixel), or to one tile
    assert x0 - b[0] < stride * step + 1e-6
    assert b[2] - (x0 + width) < stride * step + step + 1e-6 or round(c1 - c0) == tile


def test_a_window_off_the_lattice_keeps_from_its_extra_tiles_only_what_the_whole_run_lacks():
    """A window of a coarse raster (0.5 m pixels, 0.3 m model) widened to whole pixels starts 2
    lattice pixels before a lattice tile and ends 1 after one: its first and last tiles are not
    the whole run's. The whole run (tiles at 0, 224, 448, ... of a 2000 px grid) keeps lattice
    pixels [464, 688) from its tile at 448 and [688, 912) from its tile at 672."""
    # the window: lattice pixels 446 .. 446 + 2 + 256 + 224 + 1 = 929
    offset, length = 446, 2 + 256 + 224 + 1
    origins = tile_origins(length, 256, 32, offset)
    assert [o + offset for o in origins] == [446, 448, 672, 673]
    spans = kept_spans(origins, length, 256, 32, offset, 2000)
    lattice = [(a + offset, b + offset) for a, b in spans]
    # the extra tiles keep only what lies outside the whole run's tiles at 448 and 672 here
    assert lattice == [(446, 464), (464, 688), (688, 912), (912, 929)]
    # without the whole grid's size (a single raster), the overlaps split at their middle
    assert [(a + offset, b + offset) for a, b in kept_spans(origins, length, 256, 32)] == [
        (446, 575),
        (575, 688),
        (688, 800),
        (800, 929),
    ]


def test_the_whole_runs_own_last_tile_keeps_what_it_keeps_in_the_whole_run():
    """A window reaching the whole grid's end holds the whole run's last (flush) tile: it keeps the
    same pixels as in the whole run, from the middle of its overlap with the tile before."""
    whole = tile_origins(1000, 256, 32)
    whole_spans = kept_spans(whole, 1000, 256)
    offset = 448
    origins = tile_origins(1000 - offset, 256, 32, offset)
    spans = kept_spans(origins, 1000 - offset, 256, 32, offset, 1000)
    got = [(a + offset, b + offset) for a, b in spans]
    # the window's first tile keeps from the window's start (its margin); every other span as whole
    assert got[1:] == whole_spans[-len(spans) + 1 :] and got[0][1] == whole_spans[-len(spans)][1]
    assert got[-1] == (836, 1000)  # (tile at 672 + flush tile at 744 + 256) // 2
