"""Building outlines traced strip by strip, while the model works on the next rows.

The pipeline hands over the model grid in full-width strips of finished rows
(one row of tiles at a time, top to bottom). For each strip, joined to the
rows carried over from the strip above:

1. building pixels are grouped into 4-connected components (scipy), the
   connectivity GDAL's Polygonize uses;
2. a component that touches the last row may go on in the next strip: it is
   *deferred* and its rows are carried over (with the finished components'
   pixels cleared, so nothing is traced twice). So a building across any
   tile or strip border comes out as one polygon, and memory holds only a
   strip plus the open buildings, whatever the raster size;
3. optionally, a finished component holding two or more confident cores
   (touching roofs) is split along the valleys between them
   (:func:`split_touching`): one polygon per roof instead of one per block.
   A building-only model's cores and valleys are those of its probability; a
   separation model's are those of its separation score (building and
   neither border nor contact, :func:`separation_score`), which marks the
   seam between touching roofs of the same colour, where the probability
   has no valley;
4. each finished component gets its ``confidence`` (mean probability of its
   pixels) from one ``bincount``, and components clearly under the minimum
   area (pixel count) are dropped before tracing;
5. the rest are traced by one GDAL Polygonize call over a label raster held
   in memory (one polygon per component) and finished together by
   :func:`.footprints.finish_outlines` (holes, simplify, clip, measure,
   regularise, solar).

Polygons are in the raster CRS (the model grid shares it).
No ``qgis`` import here.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional, Tuple

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage

from .building import Building
from .errors import Cancelled
from .axes import NEIGHBOUR_RADIUS_M
from .footprints import (
    FinishOptions,
    Outlines,
    hold_for_neighbours,
    joined_outlines,
    prepare_outlines,
    settle_outlines,
    with_own_axes,
)
from .osgeo_exc import gdal, ogr
from .tiling import ModelGrid

CancelFn = Callable[[], bool]

# Components are pre-filtered on their pixel area; this margin keeps borderline
# ones for the exact check after hole filling and simplification.
_PREFILTER_MARGIN = 0.8
# Rows searched at once for the top of the open components (a 64-row band of a 20000 px strip is 1.3 MB).
_CARRY_BAND_ROWS = 64
# Outlines this many neighbour radii (ground metres, at the grid's nominal pixel size) from the
# rows still to come wait for them; the margin covers the metric frames' scale across a raster.
_HOLD_RADII = 1.5


def _first_open_row(labels: np.ndarray, open_ids: np.ndarray) -> int:
    """The first row holding a pixel of an open component (one that reaches the last row).

    A connected component has pixels on every row between its first and last, and every open one
    reaches the last row: the rows holding open pixels are one run ending at the last row. So the
    scan goes up from the bottom, a band of rows at a time (no strip-sized temporary), and stops at
    the first row without one: it reads the carried rows, not the whole strip from the top (that
    was 5 % of the outline thread's time on the bench raster).
    """
    r1 = len(labels)
    while r1 > 0:
        r0 = max(0, r1 - _CARRY_BAND_ROWS)
        rows = open_ids[labels[r0:r1]].any(axis=1)
        if not rows.all():
            return r0 + len(rows) - int(np.argmin(rows[::-1]))
        r1 = r0
    return 0


# Probability a pixel needs to belong to a building's confident core. Chosen on data the
# bundled model never tests on (OAM areas 1, 2, 3, 5 at z19 and the INRIA validation chips):
# summed object F1 2.84 unsplit, 3.12 / 3.29 / 3.23 with cores at 0.8 / 0.9 / 0.95, pixel
# IoU within 0.003 of unsplit everywhere.
SPLIT_CORE_PROBABILITY = 0.9
#: Separation models: a core's minimum size as a share of the minimum building size (a core is
#: the roof without its border rim, a quarter of a 10 m2 roof at 0.3 m). Training validation
#: counts objects the same way (training.trainer.object_counts).
SEPARATION_MIN_CORE_FRACTION = 0.25


def separation_score(outputs: np.ndarray) -> np.ndarray:
    """Per-pixel "inside one roof" score in [0, 1] from a model's outputs (C x H x W probabilities).

    A building-only model (C = 1) has the building probability itself: cores are
    where it is confident, valleys where it dips. A separation model (C = 3:
    building, border, contact, see :mod:`.training.targets`) marks the border of
    every roof and the seam between touching roofs, so a roof's core is building
    and neither border nor contact: building x (1 - border) x (1 - contact).
    """
    if outputs.shape[0] == 1:
        return outputs[0]
    return outputs[0] * (1.0 - outputs[1]) * (1.0 - outputs[2])


def label_instances(
    building: np.ndarray, score_u8: Optional[np.ndarray] = None, core_u8: Optional[int] = None, min_core_px: float = 0
) -> Tuple[np.ndarray, int]:
    """4-connected components of a building mask, split by :func:`split_touching` when
    ``score_u8`` and ``core_u8`` are given: (labels, count). For whole images (training
    validation, tests); :class:`StripVectorizer` does the same strip by strip."""
    labels, count = ndimage.label(building)
    if score_u8 is None or core_u8 is None or count == 0:
        return labels, count
    labels, count, _ = split_touching(labels, count, np.zeros(count + 1, dtype=bool), score_u8, core_u8, min_core_px)
    return labels, count


def split_touching(
    labels: np.ndarray, count: int, open_ids: np.ndarray, prob: np.ndarray, core_u8: int, min_core_px: float
) -> Tuple[np.ndarray, int, np.ndarray]:
    """Split finished components holding two or more confident cores along the probability valleys.

    Cores are 4-connected runs of ``prob >= core_u8`` of at least ``min_core_px``
    pixels; each pixel of a split component goes to the core it is reached from
    first when flooding by falling probability (``ndimage.watershed_ift``), so
    every part is 4-connected and no pixel is lost. Open components (still going
    on in the next strip) are left whole until they are finished.
    """
    # Within the building mask: with a threshold near the core probability, rounding to uint8
    # could otherwise let a core bridge two components through a non-building pixel.
    core_mask = (prob >= core_u8) & (labels > 0)
    cores, n_cores = ndimage.label(core_mask)
    if n_cores < 2:
        return labels, count, open_ids
    # Per-core figures from the core pixels only (a small share of the strip).
    core_ids, core_owner = cores[core_mask], labels[core_mask]
    del core_mask
    big = np.bincount(core_ids, minlength=n_cores + 1) >= min_core_px
    big[0] = False
    # a core is 4-connected inside the building mask, so it lies in one component
    owner = np.zeros(n_cores + 1, dtype=np.int64)
    owner[core_ids] = core_owner
    per_comp = np.bincount(owner[big], minlength=count + 1)
    split = per_comp >= 2
    split[0] = False
    split &= ~open_ids
    if not split.any():
        return labels, count, open_ids
    out = labels.copy()
    next_id = count + 1
    objs = ndimage.find_objects(labels)
    for comp in np.flatnonzero(split):
        sl = objs[comp - 1]
        mine = labels[sl] == comp
        markers = np.where(mine & big[cores[sl]], cores[sl], 0).astype(np.int32)
        ids = np.unique(markers[markers > 0])
        # Flood cost: falling probability inside the component, the maximum outside it,
        # so a path through the background never beats one inside (building pixels
        # are above the threshold, so their cost stays below 255).
        # Padded by one pixel: scipy's watershed_ift mislabels pixels on the array's border.
        cost = np.pad(np.where(mine, 255 - prob[sl], 255).astype(np.uint8), 1, constant_values=255)
        flooded = ndimage.watershed_ift(cost, np.pad(markers, 1))[1:-1, 1:-1]
        # the first core keeps the component's id, the others get new ones
        new_ids = np.zeros(int(ids[-1]) + 1, dtype=out.dtype)
        new_ids[ids] = np.concatenate([[comp], np.arange(next_id, next_id + len(ids) - 1)])
        out[sl][mine] = new_ids[flooded[mine]]
        next_id += len(ids) - 1
    n = next_id - 1
    new_open = np.zeros(n + 1, dtype=bool)
    new_open[: count + 1] = open_ids
    return out, n, new_open


class StripVectorizer:
    """Turns finished full-width strips of the model grid into :class:`Building` records.

    Call :meth:`add` with consecutive strips (a gap in rows is allowed: nothing
    connects across it), then :meth:`finish`. With ``split_core_u8`` (a uint8
    probability), touching buildings are separated (:func:`split_touching`). ``buildings`` collects the
    result; ``seconds`` the time spent tracing (``"polygonise"``) and
    finishing (``"attributes"``).
    """

    def __init__(
        self,
        grid: ModelGrid,
        crs_wkt: str,
        options: FinishOptions,
        is_cancelled: Optional[CancelFn] = None,
        split_core_u8: Optional[int] = None,
        min_core_fraction: float = 1.0,
    ):
        if gdal is None:
            from .errors import OutputError

            raise OutputError("GDAL's Python bindings (osgeo) are missing; run `make setup`")
        self.grid = grid
        self.crs_wkt = crs_wkt
        self.options = options
        self.is_cancelled = is_cancelled
        pixel_m2 = grid.pixel_size_m[0] * grid.pixel_size_m[1]
        self._min_pixels = _PREFILTER_MARGIN * options.min_area_m2 / pixel_m2
        self._carry_row0 = 0
        self._carry_prob: Optional[np.ndarray] = None
        self._carry_building: Optional[np.ndarray] = None
        self._carry_score: Optional[np.ndarray] = None
        self.buildings: List[Building] = []
        self.seconds = {"polygonise": 0.0, "attributes": 0.0}
        self.split_core_u8 = split_core_u8
        # A separation model's cores lose the roof's border: they may be far smaller than the roof.
        self._min_core_pixels = self._min_pixels * min_core_fraction
        self._held: Optional[Outlines] = None  # outlines waiting for their aligned neighbours

    def add(
        self, row0: int, probability_u8: np.ndarray, building: np.ndarray, score_u8: Optional[np.ndarray] = None
    ) -> None:
        """Take rows ``[row0, row0 + len(strip))``: uint8 probability and bool/uint8 building masks,
        and for separation models the uint8 separation score (cores and valleys are then its)."""
        if self._carry_prob is not None and row0 != self._carry_row0 + len(self._carry_prob):
            self._process(final=True)  # a gap: what is open now cannot go on
        if self._carry_prob is None or len(self._carry_prob) == 0:
            self._carry_row0 = row0
            self._carry_prob = np.asarray(probability_u8, dtype=np.uint8)
            self._carry_building = np.asarray(building, dtype=bool)
            self._carry_score = None if score_u8 is None else np.asarray(score_u8, dtype=np.uint8)
        else:
            self._carry_prob = np.concatenate([self._carry_prob, probability_u8])
            self._carry_building = np.concatenate([self._carry_building, np.asarray(building, dtype=bool)])
            if score_u8 is not None:
                self._carry_score = np.concatenate([self._carry_score, score_u8])
        final = self._carry_row0 + len(self._carry_prob) >= self.grid.height_px
        self._process(final, last=final)

    def finish(self) -> List[Building]:
        """Trace whatever is still open (the raster's last rows) and return all buildings."""
        if self._carry_prob is not None and len(self._carry_prob):
            self._process(final=True, last=True)
        self._settle(None, None)
        return self.buildings

    def _process(self, final: bool, last: bool = False) -> None:
        """Trace the finished components of the carried rows (``final``: all of them); ``last``: no
        rows follow, so no outline waits for neighbours (:meth:`_settle`)."""
        t0 = time.perf_counter()
        building, prob, row0 = self._carry_building, self._carry_prob, self._carry_row0
        score = self._carry_score if self._carry_score is not None else prob
        labels, count = ndimage.label(building)
        if count == 0:
            self._carry_prob = self._carry_building = self._carry_score = None
            if last:
                self._settle(None, None)
            return
        open_ids = np.zeros(count + 1, dtype=bool)
        if not final:
            open_ids[labels[-1]] = True
            open_ids[0] = False
        carry_labels, carry_open = labels, open_ids
        if self.split_core_u8 is not None:
            labels, count, open_ids = split_touching(
                labels, count, open_ids, score, self.split_core_u8, self._min_core_pixels
            )
        # Per-component pixel count and probability sum over the building pixels only
        # (a fraction of the strip: keeps the transient memory near the strip's own size).
        on = labels[building]
        pixels = np.bincount(on, minlength=count + 1)
        prob_sum = np.bincount(on, weights=prob[building], minlength=count + 1)
        del on
        traced = ~open_ids & (pixels >= self._min_pixels)
        traced[0] = False
        outlines, ids = self._trace(labels, traced, row0) if traced.any() else ([], np.zeros(0, dtype=np.int64))
        self._carry_over(carry_labels, carry_open, prob, building, row0, self._carry_score)
        t1 = time.perf_counter()
        self.seconds["polygonise"] += t1 - t0
        ready = None
        if len(outlines):
            confidence = prob_sum[ids] / pixels[ids] / 255.0
            ready = prepare_outlines(outlines, confidence, self.crs_wkt, self.options)
        next_row = self._carry_row0 if self._carry_prob is not None else row0 + len(prob)
        self._settle(ready, None if last else next_row)
        self.seconds["attributes"] += time.perf_counter() - t1

    def _settle(self, ready: Optional[Outlines], next_row: Optional[int]) -> None:
        """Finish ``ready`` with the outlines held back so far, except those that must wait for rows
        from ``next_row`` on (:func:`.footprints.hold_for_neighbours`; None: nothing waits)."""
        if ready is not None and self.options.regularize:
            with_own_axes(ready, self.options.regularize_tolerance_m)  # the held ones have theirs
        pending = joined_outlines(self._held, ready)
        self._held = None
        if pending is not None:
            t = self.grid.transform
            hold_units = _HOLD_RADII * NEIGHBOUR_RADIUS_M * abs(t.e) / self.grid.pixel_size_m[1]
            frontier_y = None if next_row is None else t.f + next_row * t.e
            pending, self._held = hold_for_neighbours(pending, frontier_y, hold_units, self.options)
        if pending is not None:
            self.buildings.extend(settle_outlines(pending, self.options))

    def _carry_over(
        self,
        labels: np.ndarray,
        open_ids: np.ndarray,
        prob: np.ndarray,
        building: np.ndarray,
        row0: int,
        score: Optional[np.ndarray] = None,
    ) -> None:
        """Keep the rows from the top of the highest open component on, with only open pixels set."""
        if not open_ids.any():
            self._carry_prob = self._carry_building = self._carry_score = None
            return
        top = _first_open_row(labels, open_ids)
        self._carry_row0 = row0 + top
        self._carry_prob = prob[top:].copy()
        self._carry_building = open_ids[labels[top:]]
        self._carry_score = None if score is None else score[top:].copy()

    def _trace(self, labels: np.ndarray, traced: np.ndarray, row0: int) -> Tuple[np.ndarray, np.ndarray]:
        """Polygonise the components flagged in ``traced``: (polygons in the CRS, their label ids)."""
        if self.is_cancelled is not None and self.is_cancelled():
            raise Cancelled()
        height, width = labels.shape
        wanted = traced[labels]
        mem = gdal.GetDriverByName("MEM")
        ds = mem.Create("", width, height, 1, gdal.GDT_Int32)
        ds.SetGeoTransform((self.grid.transform * Affine.translation(0, row0)).to_gdal())
        ds.GetRasterBand(1).WriteArray(labels)
        mask_ds = mem.Create("", width, height, 1, gdal.GDT_Byte)
        mask_band = mask_ds.GetRasterBand(1)
        mask_band.WriteArray(wanted.view(np.uint8))
        del wanted
        layer_ds = ogr.GetDriverByName("Memory").CreateDataSource("outlines")
        layer = layer_ds.CreateLayer("outlines", geom_type=ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
        gdal.Polygonize(ds.GetRasterBand(1), mask_band, layer, 0, [])
        wkbs, ids = [], []
        for feat in layer:
            ids.append(feat.GetField(0))
            wkbs.append(bytes(feat.GetGeometryRef().ExportToWkb()))
        return shapely.from_wkb(wkbs), np.asarray(ids, dtype=np.int64)
