"""Fine-tuning a model on a user's raster and trusted building polygons.

The user gives a raster, a polygon layer of buildings and optionally the area
whose buildings are *all* labelled (default: the label layer's extent).
Inside that area every unlabelled pixel counts as "not building"; outside it
pixels are ignored. The area is cut into square blocks of one model tile;
whole blocks go to validation (``val_fraction`` of the labelled pixels), so
training and validation never share pixels (a spatial split, not random
pixels). The base model's own validation IoU and accuracy are measured on the
same blocks before training, for a before/after comparison.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import shapely

from ..errors import LabelError
from ..model_io import BUNDLED_MODEL_PATH, resolve_device
from ..params import FINETUNE, check_fields
from ..vector_io import read_polygons
from .export import export_model, load_trainable, result_metadata
from .sampling import AugmentConfig, CropSampler, scenes_to_tiles
from .scenes import Scene, scene_from_raster
from .trainer import TrainConfig, TrainResult, evaluate_tiles, plot_curves, train, write_json


@dataclass
class FinetuneOptions:
    """What the fine-tune dialog and ``python -m roof_detector finetune`` ask for."""

    raster_path: str
    labels_path: str
    output_path: str
    base_model_path: Optional[str] = None  # None = bundled model
    labels_layer: Optional[str] = None
    label_fids: Optional[List[int]] = None  # only these feature ids (QGIS "selected features only")
    area_path: Optional[str] = None  # polygon layer of the fully-labelled area
    area_wkt: Optional[str] = None  # or the area itself, in the raster CRS
    epochs: int = FINETUNE["epochs"].default
    lr: float = FINETUNE["lr"].default
    batch_size: int = FINETUNE["batch_size"].default
    val_fraction: float = FINETUNE["val_fraction"].default
    patience: int = FINETUNE["patience"].default
    samples_per_epoch: Optional[int] = FINETUNE["samples_per_epoch"].default  # None = about one pass over the training area
    device: str = "auto"
    seed: int = 0
    name: str = ""
    keep_best_on_cancel: bool = True
    overwrite: bool = False  # replace an existing output file (never the base model)

    def validate(self) -> "FinetuneOptions":
        """Raise :class:`..params.ParameterError` naming the first unusable value; return self.

        The numbers are checked by their declarations (the ranges of the CLI, the
        dialog and Processing); the device by :func:`..model_io.resolve_device`
        (``ModelError`` for an unknown or unusable one).
        """
        check_fields(self, "finetune")
        resolve_device(self.device)
        return self


@dataclass
class FinetuneResult:
    """The written model (or None when cancelled and dropped) with its figures."""

    model_path: Optional[str]
    curves_path: Optional[str]
    history: List[Dict]
    before: Dict[str, float]
    after: Dict[str, float]
    threshold: float
    stopped: str
    minutes: float
    notes: List[str] = field(default_factory=list)


def check_model_output(output_path: str, base_model_path: str, overwrite: bool) -> None:
    """Fail before any work when the new model file cannot or must not be written."""
    from ..errors import OutputError

    out = os.path.abspath(output_path)
    folder = os.path.dirname(out)
    if os.path.isdir(out):
        raise OutputError(f"{output_path} is a folder; give a model file name ending in .pt")
    if not out.lower().endswith(".pt"):
        raise OutputError(f"{output_path}: a model file name must end in .pt")
    if os.path.exists(out) and os.path.exists(base_model_path) and os.path.samefile(out, base_model_path):
        raise OutputError(f"{output_path} is the base model being fine-tuned; write the new model to another file")
    if os.path.exists(out) and not overwrite:
        raise OutputError(f"{output_path} already exists; pass --overwrite to replace it or choose another name")
    parent = folder
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"Cannot write {output_path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise OutputError(f"Cannot write {output_path} (read-only or permission denied); choose another file")
    if _read_only_mount(parent):
        raise OutputError(f"Cannot write {output_path}: {parent} is on a read-only file system")


def _read_only_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_raster(path: str) -> None:
    """The rules of detection (CRS, north-up, bands, sample type), checked before fine-tuning."""
    from ..raster_source import RasterioSource

    RasterioSource(path).close()


def _area_polygon(opts: FinetuneOptions, crs_wkt: str, label_geoms) -> Tuple[object, List[str]]:
    notes: List[str] = []
    if opts.area_wkt:
        return shapely.from_wkt(opts.area_wkt), notes
    if opts.area_path:
        layer = read_polygons(opts.area_path, target_crs_wkt=crs_wkt)
        if not layer.geometries:
            raise LabelError(f"The area layer {opts.area_path} holds no polygon; draw the labelled area first")
        return shapely.union_all(layer.geometries), notes
    notes.append("No area given: the label layer's extent is taken as fully labelled; "
                 "unlabelled buildings inside it count as 'not building'.")
    return shapely.box(*shapely.union_all(label_geoms).bounds), notes


def prepare_data(opts: FinetuneOptions, meta: Dict, log: Callable[[str], None] = print
                 ) -> Tuple[Scene, np.ndarray, List[str], object, int]:
    """Load the labelled area as a scene at the model GSD and pick validation blocks.

    Returns the scene, a boolean block mask (True = validation), notes for the
    user, the area polygon (raster CRS) and the number of label polygons used.
    """
    import rasterio

    gsd_m, tile_px = float(meta["gsd_m"]), int(meta["tile_size_px"])
    try:
        with rasterio.open(opts.raster_path) as ds:
            crs_wkt = ds.crs.to_wkt() if ds.crs else ""
            raster_bounds = tuple(ds.bounds)
    except rasterio.errors.RasterioIOError as exc:
        raise LabelError(f"{opts.raster_path} cannot be opened as a raster ({exc})") from None
    if not crs_wkt:
        raise LabelError(f"{opts.raster_path} has no CRS; assign one before fine-tuning")
    labels = read_polygons(opts.labels_path, target_crs_wkt=crs_wkt, layer=opts.labels_layer)
    geoms = labels.geometries
    if not geoms:
        what = (f"{labels.skipped} feature(s) skipped as not polygons or empty "
                f"({', '.join(sorted(set(labels.skipped_reasons)))})" if labels.skipped else "it has no features")
        raise LabelError(f"Layer {labels.layer_name!r} of {opts.labels_path} holds no building polygon: {what}. "
                         "Choose a polygon layer of building outlines")
    notes: List[str] = []
    if labels.repaired:
        notes.append(f"{labels.repaired} invalid label geometries were repaired.")
    if labels.skipped:
        notes.append(f"{labels.skipped} label features were skipped (empty or not polygons: "
                     f"{', '.join(sorted(set(labels.skipped_reasons)))}).")
    if opts.label_fids is not None:
        keep = set(opts.label_fids)
        geoms = [g for fid, g in zip(labels.fids, geoms) if fid in keep]
    inside = [g for g in geoms if g.intersects(shapely.box(*raster_bounds))]
    if not inside:
        raise LabelError("No label polygon lies inside the raster: check that the label layer covers "
                         "the raster (its CRS is reprojected automatically)")
    area, area_notes = _area_polygon(opts, crs_wkt, inside)
    notes += area_notes
    area = area.intersection(shapely.box(*raster_bounds))
    if area.is_empty:
        raise LabelError("The labelled area does not overlap the raster")
    scene = scene_from_raster(opts.raster_path, None, bbox=area.bounds, load_gsd_m=gsd_m, area_wkt=area.wkt,
                              label_geometries=inside)
    val_mask = choose_validation_blocks(scene.valid, tile_px, opts.val_fraction, opts.seed)
    for n in notes:
        log(n)
    return scene, val_mask, notes, area, len(inside)


def choose_validation_blocks(valid: np.ndarray, block_px: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Pixel mask of whole ``block_px`` blocks holding about ``fraction`` of the valid pixels.

    Raises :class:`LabelError` when the area has fewer than two blocks with
    labelled pixels (one for training, one for validation).
    """
    h, w = valid.shape
    rows, cols = -(-h // block_px), -(-w // block_px)
    counts = np.zeros((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            counts[r, c] = valid[r * block_px:(r + 1) * block_px, c * block_px:(c + 1) * block_px].sum()
    usable = np.argwhere(counts > block_px * block_px // 8)
    if len(usable) < 2:
        size_m = "one model tile"
        raise LabelError(f"The labelled area is too small for a validation block: it needs at least two "
                         f"blocks of {block_px} x {block_px} px ({size_m} each) with imagery; draw a larger area")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(usable))
    target = fraction * counts.sum()
    picked, total = [], 0
    for i in order:
        if total >= target or len(picked) == len(usable) - 1:
            break
        picked.append(tuple(usable[i]))
        total += counts[tuple(usable[i])]
    mask = np.zeros_like(valid, dtype=bool)
    for r, c in picked:
        mask[r * block_px:(r + 1) * block_px, c * block_px:(c + 1) * block_px] = True
    return mask


def _split(scene: Scene, val_mask: np.ndarray, tile_px: int) -> Tuple[Scene, List[Scene]]:
    train_scene = Scene(scene.name + "_train", scene.image, scene.label, scene.valid & ~val_mask, scene.gsd_m)
    val_scene = Scene(scene.name + "_val", scene.image, scene.label, scene.valid & val_mask, scene.gsd_m)
    tiles = []
    h, w = scene.label.shape
    for r in range(0, h, tile_px):
        for c in range(0, w, tile_px):
            t = val_scene.crop(r, c, min(tile_px, h - r), min(tile_px, w - c))
            if t.valid.any():
                tiles.append(t)
    return train_scene, tiles


def finetune(opts: FinetuneOptions, progress: Optional[Callable[[float, str], None]] = None,
             is_cancelled: Optional[Callable[[], bool]] = None,
             on_epoch: Optional[Callable[[Dict], None]] = None,
             log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune the base model on the user's data and write the new model with its curves."""
    opts.validate()
    base_path = opts.base_model_path or str(BUNDLED_MODEL_PATH)
    check_model_output(opts.output_path, base_path, opts.overwrite)
    check_raster(opts.raster_path)
    net, meta = load_trainable(base_path)
    device = resolve_device(opts.device)
    scene, val_mask, notes, area, n_labels = prepare_data(opts, meta, log)
    if not (scene.label.astype(bool) & scene.valid & val_mask).any():
        raise LabelError("The validation blocks hold no labelled building, so nothing could be measured; "
                         "label a larger area (or more buildings), or change --seed")
    tile_px = int(meta["tile_size_px"])
    train_scene, val_tiles = _split(scene, val_mask, tile_px)
    norm = meta["normalization"]
    cfg = TrainConfig(architecture=meta["architecture"]["name"], architecture_params=meta["architecture"].get("params", {}),
                      gsd_m=float(meta["gsd_m"]), tile_px=tile_px, overlap_px=int(meta["overlap_px"]),
                      batch_size=opts.batch_size, lr=opts.lr, max_epochs=opts.epochs, patience=opts.patience,
                      seed=opts.seed, device=str(device), mean=tuple(norm["mean"]), std=tuple(norm["std"]),
                      samples_per_epoch=opts.samples_per_epoch or max(
                          opts.batch_size * 4, int(train_scene.valid.sum() / tile_px ** 2) // opts.batch_size * opts.batch_size))
    val_sets = {"val": scenes_to_tiles(val_tiles, tile_px)}
    base_thr = float(meta["threshold"])
    before = evaluate_tiles(net.to(device), val_sets["val"], cfg, device, (base_thr,))[base_thr].as_dict()
    log(f"base model on the validation blocks: IoU {before['iou']:.4f}, accuracy {before['accuracy']:.4f}")
    sampler = CropSampler([train_scene], cfg.gsd_m, tile_px, seed=opts.seed, min_valid_fraction=0.3,
                          config=AugmentConfig(scale_range=(0.85, 1.2), degrade_p=0.1))
    result: TrainResult = train(sampler, val_sets, cfg, net=net, on_epoch=on_epoch, progress=progress,
                                is_cancelled=is_cancelled, log=log)
    after = result.val_metrics.get("val", {})
    if result.stopped == "cancelled" and not opts.keep_best_on_cancel:
        return FinetuneResult(None, None, result.history, before, after, result.threshold, result.stopped,
                              result.minutes, notes + ["Cancelled: the model was not kept."])
    if isinstance(after.get("iou"), float) and isinstance(before.get("iou"), float) \
            and after["iou"] <= before["iou"]:
        worse = "worse than" if after["iou"] < before["iou"] else "no better than"
        warning = (f"Warning: the fine-tuned model is {worse} the base model on the validation blocks "
                   f"(IoU {before['iou']:.4f} -> {after['iou']:.4f}); keep using the base model, or try a "
                   "smaller learning rate, more epochs or more labels")
        notes.append(warning)
        log(warning)
    out = opts.output_path
    name = opts.name or os.path.splitext(os.path.basename(out))[0]
    export_model(result.net, cfg, out, result.threshold, {
        "name": name,
        "version": "1.0.0",
        "base_model": {"path": os.path.basename(base_path), "name": meta.get("name"), "version": meta.get("version")},
        "training": {"kind": "fine-tune", "raster": os.path.basename(opts.raster_path),
                     "labels": os.path.basename(opts.labels_path),
                     "area_bounds": [round(v, 6) for v in area.bounds],
                     "label_polygons": n_labels,
                     "validation_fraction": opts.val_fraction, **result_metadata(result, cfg)},
        "metrics": {"val_before": before, "val_after": after},
    })
    curves = plot_curves(result.history, os.path.splitext(out)[0] + "_curves.png", f"fine-tune: {name}")
    write_json({"before": before, "after": after, "threshold": result.threshold, "history": result.history,
                "notes": notes}, os.path.splitext(out)[0] + "_metrics.json")
    return FinetuneResult(out, curves, result.history, before, after, result.threshold, result.stopped,
                          result.minutes, notes)


