"""Squared outlines share axes with aligned neighbours across strip borders (core.vectorize._settle).

A row of houses running down the model grid crosses several strips. Each strip's outlines used to
be squared on their own, so the part of the row in each strip took its own mean axis; now outlines
that may still have aligned neighbours in the rows to come wait for them, and every cluster of
aligned neighbours is squared in one batch, wherever the strips fall.
"""

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely import affinity

from roof_detector.core.footprints import FinishOptions, finish_outlines
from roof_detector.core.tiling import ModelGrid
from roof_detector.core.vectorize import StripVectorizer

GSD_M = 0.3
X0, Y0 = 500000.0, 4000000.0
CRS = pyproj.CRS.from_epsg(32633).to_wkt()
# own axes a little apart (traced walls), well within the 3 degrees that link neighbours
TURNS_DEG = (20.0, 21.2, 19.4, 20.8, 19.8, 21.0, 19.6, 20.6)


def _row_of_houses(width_px: int = 160, height_px: int = 700):
    """A column of 9 m x 14 m houses 4 m apart, turned about 20 degrees, and the mask they burn."""
    transform = Affine(GSD_M, 0, X0, 0, -GSD_M, Y0)
    houses = []
    for k, turn in enumerate(TURNS_DEG):
        cx, cy = X0 + 24.0, Y0 - 14.0 - k * 22.0
        box = shapely.box(cx - 7.0, cy - 4.5, cx + 7.0, cy + 4.5)
        houses.append(affinity.rotate(box, 90.0 + turn, origin=(cx, cy)))
    mask = rasterize(houses, out_shape=(height_px, width_px), transform=transform).astype(bool)
    grid = ModelGrid(width_px, height_px, 1.0, 1.0, transform, (GSD_M, GSD_M))
    return grid, mask


def _options(regularize: bool = True) -> FinishOptions:
    return FinishOptions(min_area_m2=10.0, simplify_tolerance=0.5 * GSD_M, regularize=regularize)


def _strip_by_strip(grid, mask, rows: int, options: FinishOptions):
    vec = StripVectorizer(grid, CRS, options)
    prob = np.where(mask, 255, 0).astype(np.uint8)
    for row0 in range(0, grid.height_px, rows):
        vec.add(row0, prob[row0 : row0 + rows], mask[row0 : row0 + rows])
    return vec.finish()


def _long_edge_deg(polygon) -> float:
    d = np.diff(np.asarray(polygon.exterior.coords), axis=0)
    return float((np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 90.0)[np.argmax(np.hypot(d[:, 0], d[:, 1]))])


def _by_position(buildings):
    return sorted((b.geometry for b in buildings), key=lambda g: -g.centroid.y)


def test_a_row_of_houses_across_strips_shares_one_axis_as_in_one_batch():
    grid, mask = _row_of_houses()
    whole = _by_position(_strip_by_strip(grid, mask, grid.height_px, _options()))
    assert len(whole) == len(TURNS_DEG)
    axes = [_long_edge_deg(g) for g in whole]
    assert max(axes) - min(axes) < 1e-5  # one cluster, one axis (UTM and the metric frame turn by 1e-7 degree)
    for rows in (56, 64, 100, 224):  # strips cut the row of houses at different places
        strips = _by_position(_strip_by_strip(grid, mask, rows, _options()))
        assert [g.wkb for g in strips] == [g.wkb for g in whole], rows


def test_strip_outlines_equal_one_batch_of_the_same_raw_outlines():
    grid, mask = _row_of_houses()
    raw = _strip_by_strip(grid, mask, 64, _options(regularize=False))
    # the raw outlines are already simplified; squaring them in one batch gives the detection's outlines
    batch = _by_position(finish_outlines([b.geometry for b in raw], [1.0] * len(raw), CRS, _options()))
    strips = _by_position(_strip_by_strip(grid, mask, 64, _options()))
    assert len(strips) == len(batch) == len(TURNS_DEG)
    for got, want in zip(strips, batch):
        assert shapely.equals_exact(got, want, 1e-6)


def test_houses_far_from_the_rows_to_come_are_not_held_back():
    grid, mask = _row_of_houses()
    vec = StripVectorizer(grid, CRS, _options())
    prob = np.where(mask, 255, 0).astype(np.uint8)
    vec.add(0, prob[:300], mask[:300])
    # the row is one cluster reaching the strip's end: all of it waits for the next rows
    assert vec.buildings == [] and vec._held is not None
    vec.add(300, prob[300:], mask[300:])  # the last rows: nothing waits any more
    assert len(vec.buildings) == len(TURNS_DEG) and vec._held is None


def test_without_squaring_nothing_waits():
    grid, mask = _row_of_houses()
    vec = StripVectorizer(grid, CRS, _options(regularize=False))
    prob = np.where(mask, 255, 0).astype(np.uint8)
    vec.add(0, prob[:300], mask[:300])
    assert len(vec.buildings) >= 3 and vec._held is None


def test_two_metric_batches_joined_are_one_batch_of_both():
    """Held outlines join the next strip's without being projected again (MetricBatch.joined)."""
    from roof_detector.core.metric_frame import to_local_metric_many

    wgs84 = pyproj.CRS.from_epsg(4326).to_wkt()
    # three 0.25-degree cells: one in both batches, one in each alone
    a = [shapely.box(10.01, 45.01, 10.0102, 45.0101), shapely.box(10.30, 45.01, 10.3002, 45.0101)]
    b = [shapely.box(10.02, 45.02, 10.0202, 45.0201), shapely.box(10.01, 45.30, 10.0102, 45.3001)]
    joined = to_local_metric_many(a, wgs84).joined(to_local_metric_many(b, wgs84))
    whole = to_local_metric_many(a + b, wgs84)
    assert all(shapely.equals_exact(g, h, 0.0) for g, h in zip(joined.metric, whole.metric))
    assert len(joined.frames) == len(whole.frames) == 3
    keys = [(joined.frames[k].lon0, joined.frames[k].lat0) for k in joined.frame_index]
    assert keys == [(whole.frames[k].lon0, whole.frames[k].lat0) for k in whole.frame_index]
    assert list(joined.frame_index) == [0, 1, 0, 2]
