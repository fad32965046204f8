"""The single entry point of building detection: :func:`detect_buildings`.

Every front end (CLI, QGIS task, Processing algorithm) calls this and only
this. Stages: open the raster, load the model, lay the model grid and the
tiles, predict tiles in batches (the next batch is read on a worker thread
meanwhile) and stitch them into full-width strips of finished rows; each
finished strip is traced and its buildings measured on a second worker
thread while the model goes on with the rows below (:class:`.outline_worker.OutlineWorker`).
So reading and tracing overlap inference instead of adding to it, nothing
is written to disk, and memory holds a few strips, whatever the raster's
size.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import shapely
from shapely.geometry.base import BaseGeometry

from .building import Building
from .errors import Cancelled, InputRasterError, LargeRunError, ModelError, RoofDetectorError
from .footprints import FinishOptions
from .geo import m2_per_crs_unit2, pixel_size_m
from .inference import BatchPredictor, fitted_batch_size, predict_tiles
from .interruptible import holding
from .devices import device_description
from .model_io import BUNDLED_MODEL_PATH, LoadedModel, load_model, load_warnings
from .outline_worker import OutlineWorker, max_pending_batches
from .params import DETECT, OUTLINES, check_fields
from .raster_source import RasterSource, open_source
from .solar import SolarParams
from .strip_mosaic import StripMosaic
from .tiling import GridLattice, ModelGrid, Tile, lattice_offset, model_grid, tile_origins, tiles_on
from .vectorize import SEPARATION_MIN_CORE_FRACTION, SPLIT_CORE_PROBABILITY, StripVectorizer
from .work_estimate import WorkEstimate, estimate_grid, size_problem

__all__ = ["DetectOptions", "Building", "DetectionResult", "detect_buildings", "COARSE_PIXEL_WARN_M"]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

# Beyond this ground pixel size a house is a handful of pixels: say so.
COARSE_PIXEL_WARN_M = 2.0

# Share of the progress bar per stage (reading the model and grid is quick;
# outlines are traced while the tiles are predicted, only the last strip after).
_PREPARE_END = 0.02
_TILES_END = 0.98


@dataclass
class DetectOptions:
    """What to detect with; defaults and ranges are declared in :mod:`.params` (DETECT, OUTLINES)."""

    model_path: Optional[str] = None  # None = bundled model
    device: str = DETECT["device"].default  # auto | cpu | cuda
    threshold: Optional[float] = DETECT["threshold"].default  # None = the model's tuned threshold
    min_area_m2: float = DETECT["min_area_m2"].default  # smaller polygons are dropped
    batch_size: Optional[int] = DETECT["batch_size"].default  # None = 8 on CPU; on CUDA fitted to free memory
    aoi_wkt: Optional[str] = None  # area of interest polygon, in the raster CRS
    max_hole_area_m2: float = 4.0  # holes smaller than this are filled (speckle)
    # split touching roofs (vectorize; along the seam of a model's separation outputs if it has them)
    separate_touching: bool = DETECT["separate_touching"].default
    tta: bool = DETECT["tta"].default  # test-time augmentation: average 4 flipped passes (4x the model time)
    regularize: bool = OUTLINES["regularize"].default  # square outlines (right angles, 45-degree diagonals)
    regularize_tolerance_m: float = OUTLINES["regularize_tolerance_m"].default
    solar: Optional[SolarParams] = field(default_factory=SolarParams)  # None: no solar attributes
    confirm_large_run: bool = DETECT["confirm_large_run"].default  # run beyond the size guard (work_estimate)
    # the model-pixel lattice of the mosaic this raster is a window of (detect-many's jobs; tiling)
    grid_lattice: Optional[GridLattice] = None

    def validate(self) -> "DetectOptions":
        """Raise :class:`.params.ParameterError` naming the first unusable value; return self."""
        check_fields(self, "detect")
        check_fields(self, "outlines")
        if self.solar is not None:
            self.solar.validate()
        return self


@dataclass
class DetectionResult:
    """Buildings found in one raster, with how they were found."""

    buildings: List[Building]
    crs_wkt: str
    raster_path: str
    model_metadata: Dict[str, Any]
    seconds: float
    stats: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    @property
    def total_area_m2(self) -> float:
        """Sum of the buildings' ground areas."""
        return float(sum(b.area_m2 for b in self.buildings))

    def provenance(self, options: "DetectOptions") -> Dict[str, Any]:
        """What a written layer records about its making (GeoPackage metadata): source, model, choices."""
        meta = self.model_metadata
        return {
            "source_raster": self.raster_path,
            "model": f"{meta.get('name', '?')} {meta.get('version', '')}".strip(),
            "threshold": self.stats.get("threshold"),
            "min_area_m2": options.min_area_m2,
        }


def detect_buildings(
    source: Union[RasterSource, str, os.PathLike],
    options: Optional[DetectOptions] = None,
    progress: Optional[ProgressFn] = None,
    is_cancelled: Optional[CancelFn] = None,
    model: Optional[LoadedModel] = None,
    network_lock: Optional[threading.Lock] = None,
) -> DetectionResult:
    """Detect building footprints in ``source`` (a :class:`RasterSource` or a raster path).

    ``progress(fraction, message)`` is called as work advances,
    ``is_cancelled()`` is polled at least once per batch (and raises
    :class:`~roof_detector.core.errors.Cancelled`). A ``model`` already
    loaded is used as is (``options.model_path``/``device`` are then
    ignored), which saves reloading it for many rasters.
    ``network_lock``, shared by runs in one process, is held from the first
    tile predicted to the last: runs take turns on the model's cores, and the
    outlines a run traces after its last tile overlap the next run's network.
    """
    options = options or DetectOptions()
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    warnings: List[str] = []
    options.validate()
    report = _Progress(progress)
    report(0.0, "Opening the raster")
    check_detection_size(source, options, model)

    raster, owned = open_source(source)
    try:
        if model is None:
            model = _load_model(options)
        run = _lay_out(raster, model, options, warnings)
        warnings.extend(load_warnings(model))
        timings["prepare"] = time.perf_counter() - t_start
        report(_PREPARE_END, f"{len(run.tiles)} tiles to process")
        predictor = BatchPredictor(model, tta=options.tta)
        buildings, valid_px = _predict_and_trace(run, predictor, report, is_cancelled, timings, warnings, network_lock)
        if valid_px == 0:
            warnings.append(
                "The raster holds no valid pixels"
                + (" inside the area of interest" if run.aoi is not None else "")
                + " (all nodata / masked): nothing could be detected."
            )
        report(1.0, f"{len(buildings)} buildings")
    finally:
        if owned:
            raster.close()

    run.batch_size = predictor.batch_limit or run.batch_size  # smaller after an out-of-memory retry
    stats = _run_stats(run, valid_px, timings)
    seconds = time.perf_counter() - t_start
    return DetectionResult(buildings, raster.crs_wkt, raster.name, dict(model.metadata), seconds, stats, warnings)


@dataclass
class _Run:
    """One run's raster, model and choices, and where the model looks: the raster's pixel size,
    the model grid (whole and cut to the area of interest) and the tiles."""

    raster: RasterSource
    model: LoadedModel
    options: DetectOptions
    threshold: float
    batch_size: int
    raster_px_m: Tuple[float, float]
    full_grid: ModelGrid
    grid: ModelGrid
    aoi: Optional[BaseGeometry]
    tiles: List[Tile]


def _lay_out(raster: RasterSource, model: LoadedModel, options: DetectOptions, warnings: List[str]) -> _Run:
    """Lay the model grid over the raster (cut to the area of interest) and the tiles over the grid."""
    threshold = options.threshold if options.threshold is not None else model.threshold
    batch_size = options.batch_size or fitted_batch_size(model)
    raster_px_m = pixel_size_m(raster.crs_wkt, raster.transform, raster.width, raster.height, raster.name)
    coarse = coarse_pixel_warning(raster_px_m, model.gsd_m)
    if coarse:
        warnings.append(coarse)
    full_grid = model_grid(
        raster.transform, raster.width, raster.height, raster_px_m, model.gsd_m, options.grid_lattice
    )
    aoi = _parse_aoi(options.aoi_wkt) if options.aoi_wkt else None
    grid = _grid_for_aoi(full_grid, aoi, raster.name) if aoi is not None else full_grid
    # on a mosaic's lattice, the tiles the whole mosaic's run would lay (tiling: same context)
    all_tiles = tiles_on(grid, options.grid_lattice, model.tile_size_px, model.overlap_px)
    tiles = _tiles_in_aoi(all_tiles, grid, aoi) if aoi is not None else all_tiles
    return _Run(raster, model, options, threshold, batch_size, raster_px_m, full_grid, grid, aoi, tiles)


def _vectorizer(run: _Run, is_cancelled: Optional[CancelFn]) -> StripVectorizer:
    """The outline tracer, with the cores that split touching roofs where asked."""
    model, options = run.model, run.options
    if model.core_threshold is not None:
        # a separation model: cores of its separation score, at the threshold tuned on validation
        split_core = model.core_threshold if options.separate_touching else None
    else:
        # Cores only mean something above the threshold (a fine-tuned model's may be 0.25).
        split_core = max(SPLIT_CORE_PROBABILITY, run.threshold) if options.separate_touching else None
    return StripVectorizer(
        run.grid,
        run.raster.crs_wkt,
        _finish_options(options, run.grid, run.raster, run.raster.crs_wkt, run.aoi),
        is_cancelled,
        split_core_u8=None if split_core is None else min(255, int(round(split_core * 255))),
        min_core_fraction=SEPARATION_MIN_CORE_FRACTION if model.core_threshold is not None else 1.0,
    )


def _predict_and_trace(
    run: _Run,
    predictor: BatchPredictor,
    report: "_Progress",
    is_cancelled: Optional[CancelFn],
    timings: Dict[str, float],
    warnings: List[str],
    network_lock: Optional[threading.Lock] = None,
) -> Tuple[List[Building], int]:
    """Predict the tiles in batches while the outline thread traces finished strips; (buildings, valid pixels)."""
    grid, tiles, model = run.grid, run.tiles, run.model
    mosaic = StripMosaic(grid, tiles, run.threshold)
    vectorizer = _vectorizer(run, is_cancelled)
    tile_progress = report.span(_PREPARE_END, _TILES_END)
    tiles_per_row = len({t.col_off for t in tiles})
    with OutlineWorker(mosaic, vectorizer, max_pending_batches(tiles_per_row, run.batch_size)) as outlines:
        t0 = time.perf_counter()
        with holding(network_lock, is_cancelled):
            if network_lock is not None:
                timings["network_lock_wait"] = time.perf_counter() - t0
            for batch in predict_tiles(
                run.raster,
                grid,
                tiles,
                model,
                run.batch_size,
                tile_progress,
                is_cancelled,
                timings,
                warnings,
                predictor,
            ):
                outlines.submit(batch)
        t0 = time.perf_counter()
        report(_TILES_END, "Tracing the last building outlines")
        buildings = outlines.finish()
        if is_cancelled is not None and is_cancelled():  # also when the last strip had nothing to trace
            raise Cancelled()
        timings["outlines_after_inference"] = time.perf_counter() - t0
    timings.update(vectorizer.seconds)
    timings["write"] = outlines.stitch_s
    timings["queue_wait"] = outlines.wait_s
    if outlines.rescued_after_s is not None:
        timings["outlines_rescued_after"] = outlines.rescued_after_s
    return buildings, outlines.valid_px


def _run_stats(run: _Run, valid_px: int, timings: Dict[str, float]) -> Dict[str, Any]:
    """How the run went (``DetectionResult.stats``)."""
    batches = int(timings.pop("batches", 0))
    model, full_grid, grid = run.model, run.full_grid, run.grid
    offset = lattice_offset(full_grid, run.options.grid_lattice)
    return {
        "tiles": len(run.tiles),
        "tiles_full_raster": (
            len(tile_origins(full_grid.width_px, model.tile_size_px, model.overlap_px, offset[0]))
            * len(tile_origins(full_grid.height_px, model.tile_size_px, model.overlap_px, offset[1]))
        ),
        "batches": batches,
        "batch_size": run.batch_size,
        "device": device_description(model.device),
        "backend": model.extra.get("backend", "torch"),
        "half_precision": model.half,
        "tta_passes": 4 if run.options.tta else 1,
        "outputs": model.outputs,
        "threshold": run.threshold,
        "raster_size_px": (run.raster.width, run.raster.height),
        "raster_pixel_size_m": run.raster_px_m,
        "model_grid_px": (grid.width_px, grid.height_px),
        "model_pixel_size_m": grid.pixel_size_m,
        "valid_pixels": valid_px,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def coarse_pixel_warning(raster_px_m: Tuple[float, float], gsd_m: float) -> Optional[str]:
    """The warning for pixels far coarser than the model's, or None."""
    coarsest = max(raster_px_m)
    if coarsest <= COARSE_PIXEL_WARN_M:
        return None
    return (
        f"The raster's pixels measure {coarsest:.2f} m on the ground, far coarser than the "
        f"{gsd_m:g} m the model was trained for: buildings are only a few pixels wide and most "
        f"will be missed or misshapen. Use imagery of {COARSE_PIXEL_WARN_M:g} m/pixel or finer."
    )


def estimate_detection(
    source: Union[RasterSource, str, os.PathLike],
    options: Optional[DetectOptions] = None,
    model: Optional[LoadedModel] = None,
) -> Optional[WorkEstimate]:
    """The size of a run, from the raster's header and the model's metadata alone (nothing is read).

    None when the raster or model cannot be opened: the run itself then says why.
    """
    from .model_io import read_metadata

    options = options or DetectOptions()
    try:
        meta = model.metadata if model is not None else read_metadata(options.model_path or BUNDLED_MODEL_PATH)
    except RoofDetectorError:
        return None
    if isinstance(source, RasterSource):
        name, crs_wkt, transform, width, height = (
            source.name,
            source.crs_wkt,
            source.transform,
            source.width,
            source.height,
        )
    else:
        import rasterio

        name = str(source)
        try:
            with rasterio.open(name) as ds:
                if ds.crs is None:
                    return None
                crs_wkt, transform, width, height = ds.crs.to_wkt(), ds.transform, ds.width, ds.height
        except Exception:  # noqa: BLE001 - opening it again in the run names the problem
            return None
    try:
        raster_px_m = pixel_size_m(crs_wkt, transform, width, height)
        grid = model_grid(transform, width, height, raster_px_m, float(meta["gsd_m"]), options.grid_lattice)
        if options.aoi_wkt:
            grid = _grid_for_aoi(grid, _parse_aoi(options.aoi_wkt), name)
    except (RoofDetectorError, ValueError):
        return None
    return estimate_grid(
        grid.width_px,
        grid.height_px,
        int(meta["tile_size_px"]),
        int(meta["overlap_px"]),
        raster_px_m,
        coarse_pixel_warning(raster_px_m, float(meta["gsd_m"])),
    )


def check_detection_size(
    source: Union[RasterSource, str, os.PathLike], options: DetectOptions, model: Optional[LoadedModel] = None
) -> Optional[WorkEstimate]:
    """Raise :class:`LargeRunError` for a run beyond the size guard (see :mod:`.work_estimate`)."""
    estimate = estimate_detection(source, options, model)
    if estimate is None:
        return None
    name = source.name if isinstance(source, RasterSource) else str(source)
    problem, confirmable = size_problem(estimate, name)
    if problem and (not confirmable or not options.confirm_large_run):
        raise LargeRunError(problem, confirmable)
    return estimate


def _finish_options(
    options: DetectOptions, grid: ModelGrid, raster: RasterSource, crs_wkt: str, aoi: Optional[BaseGeometry]
) -> FinishOptions:
    return FinishOptions(
        min_area_m2=options.min_area_m2,
        max_hole_area_m2=options.max_hole_area_m2,
        m2_per_unit2=m2_per_crs_unit2(crs_wkt, raster.transform, raster.width, raster.height),
        # half a model pixel: removes the staircase, moves no wall by more
        simplify_tolerance=0.5 * min(abs(grid.transform.a), abs(grid.transform.e)),
        clip_geometry=aoi,
        keep_within=_within(grid, aoi),
        regularize=options.regularize,
        regularize_tolerance_m=options.regularize_tolerance_m,
        solar=options.solar,
    )


class _Progress:
    """Maps stage-local fractions onto the overall [0, 1] bar (tolerates ``None``)."""

    def __init__(self, callback: Optional[ProgressFn], start: float = 0.0, end: float = 1.0):
        self.callback, self.start, self.end = callback, start, end

    def __call__(self, fraction: float, message: str) -> None:
        if self.callback is not None:
            self.callback(self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0), message)

    def span(self, start: float, end: float) -> "_Progress":
        return _Progress(self.callback, start, end)


def _load_model(options: DetectOptions) -> LoadedModel:
    if options.model_path is None and not BUNDLED_MODEL_PATH.is_file():
        raise ModelError(
            f"The bundled model {BUNDLED_MODEL_PATH} is missing; train it with "
            "`python -m devtools train` or pass a model file (--model PATH)"
        )
    return load_model(options.model_path, options.device)


def _parse_aoi(aoi_wkt: str) -> BaseGeometry:
    try:
        aoi = shapely.from_wkt(aoi_wkt)
    except Exception as exc:  # noqa: BLE001 - shapely.errors.GEOSException
        raise InputRasterError(f"The area of interest is not valid WKT ({exc})") from None
    if not aoi.is_valid:
        aoi = shapely.make_valid(aoi)
    if aoi.is_empty or aoi.area <= 0:
        raise InputRasterError(
            "The area of interest must be a polygon with a non-zero area (in the raster's coordinate reference system)"
        )
    return aoi


def _grid_for_aoi(grid: ModelGrid, aoi: BaseGeometry, name: str) -> ModelGrid:
    """Cut the model grid down to the AOI's bounding box: no work, no disk, outside it."""
    block = grid.pixel_bounds(aoi.bounds)
    if block is None or not aoi.intersects(shapely.box(*_grid_bounds(grid))):
        raise InputRasterError(
            f"The area of interest does not overlap {name}; draw it over the raster (coordinates in the raster's CRS)"
        )
    c0, r0, c1, r1 = block
    return grid.subgrid(c0, r0, c1 - c0, r1 - r0)


def _within(grid: ModelGrid, aoi: Optional[BaseGeometry]) -> BaseGeometry:
    """The ground a detection's buildings stay on: the model grid, cut to the area of interest."""
    box = shapely.box(*_grid_bounds(grid))
    return box if aoi is None else shapely.intersection(box, aoi)


def _grid_bounds(grid: ModelGrid):
    t = grid.transform
    x0, y0 = t * (0, 0)
    x1, y1 = t * (grid.width_px, grid.height_px)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _tiles_in_aoi(tiles: List[Tile], grid: ModelGrid, aoi: BaseGeometry) -> List[Tile]:
    """Only the tiles whose kept block touches the AOI are run."""
    shapely.prepare(aoi)
    t = grid.transform
    out = []
    for tile in tiles:
        c0, r0, c1, r1 = tile.keep
        x0, y0 = t * (c0, r1)
        x1, y1 = t * (c1, r0)
        if aoi.intersects(shapely.box(x0, y0, x1, y1)):
            out.append(tile)
    return out
