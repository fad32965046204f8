"""Evaluate predicted building polygons against reference polygons.

Pixel level: both layers are burnt onto one pixel grid (a pixel is building
when its centre lies inside a polygon, :func:`.vector_io.rasterize_polygons`)
and compared over the valid pixels, pooled (:class:`.metrics.Confusion`): IoU,
accuracy, precision, recall, F1. The grid is a raster's (its nodata / mask
pixels are excluded) or an extent with a pixel size. The grid is processed in
blocks of rows, so large orthophotos fit in memory.

Object level: buildings are matched one-to-one, greedily by decreasing IoU
(polygon IoU, computed on the geometries), keeping pairs with IoU >= 0.5.
Object precision = matched / predicted, recall = matched / reference. Only
buildings whose representative point lies on a valid pixel of the grid take
part, so references outside the imagery do not count as missed.

Shape: the median vertex count and the share of regular polygons (at most 16
vertices, 90 % of the outline within 10° of the main axis or its
perpendicular; :mod:`.shape_metrics`) of the predicted and of the reference
buildings that take part, and the mean IoU of the matched buildings: how much
the outlines look like the ones a person draws.

Layers in any CRS are reprojected to the grid CRS. No ``qgis`` import here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .errors import InputRasterError, LabelError
from .metrics import Confusion, confusion
from .shape_metrics import ShapeStats, shape_stats
from .vector_io import rasterize_polygons, read_polygons

#: Rows of the grid rasterised at once.
BLOCK_ROWS = 1024
DEFAULT_IOU_THRESHOLD = 0.5


@dataclass
class Grid:
    """A pixel grid: affine ``transform`` (rasterio/affine), size, CRS, optional raster for the mask."""

    transform: Any
    width: int
    height: int
    crs_wkt: str
    raster_path: Optional[str] = None  # valid pixels are read from its mask when set

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        t = self.transform
        xs = [t.c, t.c + t.a * self.width]
        ys = [t.f, t.f + t.e * self.height]
        return min(xs), min(ys), max(xs), max(ys)


def grid_from_raster(path: str) -> Grid:
    """The pixel grid of a raster; its nodata/mask pixels are excluded from evaluation."""
    import rasterio

    if not os.path.exists(path):
        raise InputRasterError(f"Raster not found: {path}")
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise InputRasterError(f"{path} has no CRS; assign one (in QGIS: Layer Properties > Source)")
            return Grid(ds.transform, ds.width, ds.height, ds.crs.to_wkt(), path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputRasterError(f"{path} is not a readable raster ({exc})") from None


def grid_from_extent(extent: Sequence[float], pixel_size: float, crs_wkt: str) -> Grid:
    """A north-up grid covering ``extent`` = (xmin, ymin, xmax, ymax) with square pixels."""
    from affine import Affine

    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    if not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise ValueError(f"pixel size {pixel_size} must be > 0")
    if not (xmax > xmin and ymax > ymin):
        raise ValueError(f"extent {extent} is empty (need xmin < xmax and ymin < ymax)")
    width = int(math.ceil((xmax - xmin) / pixel_size - 1e-9))
    height = int(math.ceil((ymax - ymin) / pixel_size - 1e-9))
    if width * height > 2_000_000_000:
        raise ValueError(f"{width} x {height} pixels is too large a grid; use a bigger pixel size")
    return Grid(Affine(pixel_size, 0.0, xmin, 0.0, -pixel_size, ymax), width, height, crs_wkt)


@dataclass
class ObjectMatch:
    predicted: int  # index into the predicted list
    reference: int  # index into the reference list
    iou: float


@dataclass
class EvaluationResult:
    pixel: Confusion
    n_predicted: int
    n_reference: int
    matches: List[ObjectMatch] = field(default_factory=list)
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    predicted_shape: ShapeStats = field(default_factory=ShapeStats)
    reference_shape: ShapeStats = field(default_factory=ShapeStats)
    # the polygons measured (on a valid pixel), which ``matches`` index
    predicted_kept: List[BaseGeometry] = field(default_factory=list)
    reference_kept: List[BaseGeometry] = field(default_factory=list)

    def mean_matched_iou(self) -> Optional[float]:
        """Mean polygon IoU of the matched pairs; None when nothing matched."""
        return float(np.mean([m.iou for m in self.matches])) if self.matches else None

    @property
    def n_matched(self) -> int:
        return len(self.matches)

    # Nothing measured is not a perfect score: a ratio whose terms are all zero is None ("no value").
    def object_precision(self) -> Optional[float]:
        if self.n_predicted == 0:
            return None if self.n_reference == 0 else 0.0
        return self.n_matched / self.n_predicted

    def object_recall(self) -> Optional[float]:
        if self.n_reference == 0:
            return None if self.n_predicted == 0 else 0.0
        return self.n_matched / self.n_reference

    def object_f1(self) -> Optional[float]:
        den = self.n_predicted + self.n_reference
        return 2.0 * self.n_matched / den if den else None

    def as_dict(self) -> Dict[str, Any]:
        p = self.pixel
        no_buildings = p.tp + p.fp + p.fn == 0  # neither layer has a building pixel on the grid
        return {
            "pixel": {
                "iou": None if no_buildings else p.iou(),
                "accuracy": p.accuracy() if p.total else None,
                "precision": None if no_buildings else p.precision(),
                "recall": None if no_buildings else p.recall(),
                "f1": None if no_buildings else p.f1(),
                "tp": p.tp,
                "fp": p.fp,
                "fn": p.fn,
                "tn": p.tn,
                "valid_pixels": p.total,
            },
            "object": {
                "precision": self.object_precision(),
                "recall": self.object_recall(),
                "f1": self.object_f1(),
                "predicted": self.n_predicted,
                "reference": self.n_reference,
                "matched": self.n_matched,
                "iou_threshold": self.iou_threshold,
                "mean_matched_iou": self.mean_matched_iou(),
            },
            "shape": {"predicted": self.predicted_shape.as_dict(), "reference": self.reference_shape.as_dict()},
        }


def polygon_iou(a: BaseGeometry, b: BaseGeometry) -> float:
    """Intersection over union of two polygons (0 when both are empty)."""
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union > 0 else 0.0


def match_objects(
    predicted: Sequence[BaseGeometry], reference: Sequence[BaseGeometry], iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> List[ObjectMatch]:
    """One-to-one matches, greedy by decreasing IoU, keeping pairs with IoU >= ``iou_threshold``."""
    if not predicted or not reference:
        return []
    tree = shapely.STRtree(list(reference))
    pi, ri = tree.query(list(predicted), predicate="intersects")
    candidates = []
    for p, r in zip(pi.tolist(), ri.tolist()):
        iou = polygon_iou(predicted[p], reference[r])
        if iou >= iou_threshold - 1e-12:
            candidates.append((iou, p, r))
    candidates.sort(key=lambda t: (-t[0], t[1], t[2]))
    used_p, used_r = set(), set()
    out = []
    for iou, p, r in candidates:
        if p in used_p or r in used_r:
            continue
        used_p.add(p)
        used_r.add(r)
        out.append(ObjectMatch(p, r, iou))
    return out


def _valid_block(grid: Grid, ds, row0: int, rows: int) -> Optional[np.ndarray]:
    if ds is None:
        return None
    from rasterio.windows import Window

    from .raster_source import read_errors_named

    window = Window(0, row0, grid.width, rows)
    with read_errors_named(grid.raster_path, window):
        return ds.dataset_mask(window=window) > 0


def _pixel_of_points(geoms: Sequence[BaseGeometry], grid: Grid) -> np.ndarray:
    """(row, col) of each geometry's representative point; -1, -1 outside the grid."""
    out = np.full((len(geoms), 2), -1, dtype=np.int64)
    if not geoms:
        return out
    pts = shapely.get_coordinates(shapely.point_on_surface(np.asarray(geoms, dtype=object)))
    inv = ~grid.transform
    cols = inv.a * pts[:, 0] + inv.b * pts[:, 1] + inv.c
    rows = inv.d * pts[:, 0] + inv.e * pts[:, 1] + inv.f
    c, r = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
    inside = (c >= 0) & (c < grid.width) & (r >= 0) & (r < grid.height)
    out[inside, 0] = r[inside]
    out[inside, 1] = c[inside]
    return out


def _mark_valid(pix: np.ndarray, keep: np.ndarray, row0: int, valid: np.ndarray) -> None:
    """Set ``keep`` for points whose pixel lies in the block starting at ``row0``, from ``valid``."""
    sel = np.flatnonzero((pix[:, 0] >= row0) & (pix[:, 0] < row0 + valid.shape[0]))
    keep[sel] = valid[pix[sel, 0] - row0, pix[sel, 1]]


def evaluate(
    predicted: Sequence[BaseGeometry],
    reference: Sequence[BaseGeometry],
    grid: Grid,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> EvaluationResult:
    """Pixel and object metrics of ``predicted`` against ``reference`` (both in the grid CRS)."""
    predicted = [g for g in predicted if g is not None and not g.is_empty]
    reference = [g for g in reference if g is not None and not g.is_empty]
    ds = None
    if grid.raster_path:
        import rasterio

        ds = rasterio.open(grid.raster_path)
    try:
        conf = Confusion()
        p_pix, r_pix = _pixel_of_points(predicted, grid), _pixel_of_points(reference, grid)
        p_keep, r_keep = np.zeros(len(predicted), bool), np.zeros(len(reference), bool)
        p_tree = shapely.STRtree(predicted) if predicted else None
        r_tree = shapely.STRtree(reference) if reference else None
        t = grid.transform
        for row0 in range(0, grid.height, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, grid.height - row0)
            bt = t * t.translation(0, row0)
            x0, y0 = bt * (0, 0)
            x1, y1 = bt * (grid.width, rows)
            window_box = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            p_sel = [predicted[i] for i in p_tree.query(window_box)] if p_tree is not None else []
            r_sel = [reference[i] for i in r_tree.query(window_box)] if r_tree is not None else []
            pm = rasterize_polygons(p_sel, bt, (rows, grid.width)).astype(bool)
            rm = rasterize_polygons(r_sel, bt, (rows, grid.width)).astype(bool)
            valid = _valid_block(grid, ds, row0, rows)
            conf.add(confusion(pm, rm, valid))
            if valid is None:
                valid = np.ones((rows, grid.width), dtype=bool)
            _mark_valid(p_pix, p_keep, row0, valid)
            _mark_valid(r_pix, r_keep, row0, valid)
        p_in = [g for g, k in zip(predicted, p_keep) if k]
        r_in = [g for g, k in zip(reference, r_keep) if k]
    finally:
        if ds is not None:
            ds.close()
    if conf.total == 0:
        raise LabelError(
            "The evaluation grid has no valid pixel (all nodata / masked, or empty): nothing can "
            "be measured; choose a raster or an extent that covers imagery"
        )
    matches = match_objects(p_in, r_in, iou_threshold)
    return EvaluationResult(
        conf,
        len(p_in),
        len(r_in),
        matches,
        iou_threshold,
        shape_stats(p_in, grid.crs_wkt),
        shape_stats(r_in, grid.crs_wkt),
        p_in,
        r_in,
    )


def evaluate_files(
    predicted_path: str,
    reference_path: str,
    raster_path: Optional[str] = None,
    extent: Optional[Sequence[float]] = None,
    pixel_size: Optional[float] = None,
    crs: Optional[str] = None,
    predicted_layer: Optional[str] = None,
    reference_layer: Optional[str] = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> EvaluationResult:
    """:func:`evaluate` of two vector files on a raster's grid, or on ``extent`` + ``pixel_size``.

    With an extent, ``crs`` (WKT or "EPSG:n") is the grid CRS; default: the reference layer's.
    """
    if raster_path:
        grid = grid_from_raster(raster_path)
    elif extent is not None and pixel_size is not None:
        crs_wkt = _crs_wkt(crs) if crs else read_polygons(reference_path, layer=reference_layer).crs_wkt
        if not crs_wkt:
            raise LabelError("The reference layer has no CRS; give the grid CRS with --crs")
        _check_extent_units(extent, crs_wkt, crs)
        try:
            grid = grid_from_extent(extent, pixel_size, crs_wkt)
        except ValueError as exc:
            raise LabelError(f"Bad grid: {exc}") from None
    else:
        raise LabelError("Give a raster, or an extent and a pixel size, to evaluate on")
    pred = read_polygons(predicted_path, grid.crs_wkt, layer=predicted_layer)
    ref = read_polygons(reference_path, grid.crs_wkt, layer=reference_layer)
    return evaluate(pred.geometries, ref.geometries, grid, iou_threshold)


def _check_extent_units(extent: Sequence[float], crs_wkt: str, crs_name: Optional[str]) -> None:
    """Refuse an extent in a geographic CRS whose numbers cannot be degrees (metres given by mistake)."""
    from pyproj import CRS

    if not CRS.from_user_input(crs_wkt).is_geographic:
        return
    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    if not (-360 <= xmin <= 360 and -360 <= xmax <= 360 and -90 <= ymin <= 90 and -90 <= ymax <= 90):
        raise LabelError(
            f"The extent {xmin:g}, {ymin:g}, {xmax:g}, {ymax:g} is not in degrees, but its CRS "
            f"({crs_name or 'the reference layer'}'s) is geographic (longitude/latitude): give the "
            "extent's own CRS (e.g. --crs EPSG:32631) or the extent in degrees"
        )


def _crs_wkt(user_input: str) -> str:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(user_input).to_wkt()
    except CRSError as exc:
        raise LabelError(f"Unrecognised CRS {user_input!r} ({exc})") from None
