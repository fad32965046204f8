"""Fine-tuning a model on a user's raster and trusted building polygons.

The user gives a raster, a polygon layer of buildings and optionally the area
whose buildings are *all* labelled (default: the label layer's extent).
Inside that area every unlabelled pixel counts as "not building"; outside it
pixels are ignored. The area is cut into square blocks of one model tile;
whole blocks go to validation (``val_fraction`` of the labelled pixels), so
training and validation never share pixels (a spatial split, not random
pixels). A small area is cut into 128 or 64 px blocks instead
(:mod:`.validation_blocks`). The base model's own validation IoU and accuracy
are measured on the same blocks before training, for a before/after comparison.

Defaults that adapt (measured on a 0.3 m suburb, issue 16): crops per epoch
scale with the labelled area (:func:`.finetune_plan.default_samples_per_epoch`), up to
the declared epochs (``core.params.FINETUNE``) with early stopping, under a time budget
(``max_minutes``), training the decoder and head only (``freeze_encoder``; chosen by
``models/finetune_rule.md``); :func:`.finetune_plan.plan` gives the numbers and an estimate of
the time before training starts. Separation models (building, border, contact) train
all three heads on targets derived from the label polygons.

With labels beyond the labelled area (the label layer reaches further, or only
some features are selected), the base and the fine-tuned models are also
compared there, on ground neither trained on (:func:`.outside.compare_outside`):
pixel IoU and object F1 before and after.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import shapely
import torch

from ..errors import LabelError
from ..devices import resolve_device
from ..model_io import BUNDLED_MODEL_PATH
from ..params import FINETUNE, ParameterError, check_fields
from ..vector_io import read_polygons
from .export import export_model, load_trainable, result_metadata
from .finetune_plan import plan, plan_text
from .outside import measure_outside
from .sampling import AugmentConfig, CropSampler, scenes_to_tiles
from .scenes import Scene, scene_from_raster
from .trainer import TrainConfig, TrainResult, evaluate_tiles, plot_curves, train, write_json
from .validation_blocks import choose_validation_blocks, validation_block_px


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
    # None = scaled to the labelled area (default_samples_per_epoch)
    samples_per_epoch: Optional[int] = FINETUNE["samples_per_epoch"].default
    # time budget: training stops there, keeping the best epoch (None or 0: none)
    max_minutes: Optional[float] = FINETUNE["max_minutes"].default
    # before/after on labels outside the labelled area, when there are any
    compare_outside: bool = FINETUNE["compare_outside"].default
    # train decoder and head only (base models without a separate encoder train every layer)
    freeze_encoder: bool = FINETUNE["freeze_encoder"].default
    device: str = "auto"
    seed: int = 0
    name: str = ""
    keep_best_on_cancel: bool = True
    overwrite: bool = False  # replace an existing output file (never the base model)

    def validate(self) -> "FinetuneOptions":
        """Raise :class:`..params.ParameterError` naming the first unusable value; return self.

        The numbers are checked by their declarations (the ranges of the CLI, the
        dialog and Processing); the device by :func:`..devices.resolve_device`
        (``ModelError`` for an unknown or unusable one).
        """
        check_fields(self, "finetune")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):  # numpy refuses negative seeds
            raise ParameterError(f"Seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        resolve_device(self.device)
        return self


#: Largest seed numpy's generators take from a plain int of this size (numpy refuses negative seeds).
MAX_SEED = 2**32 - 1


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
    # pixel IoU / object F1 of the base and fine-tuned models outside the labelled area ({} when not measured)
    outside: Dict[str, Dict[str, float]] = field(default_factory=dict)
    plan: Dict[str, float] = field(default_factory=dict)


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
    notes.append(
        "No area given: the label layer's extent is taken as fully labelled; "
        "unlabelled buildings inside it count as 'not building'."
    )
    return shapely.box(*shapely.union_all(label_geoms).bounds), notes


def prepare_data(
    opts: FinetuneOptions, meta: Dict, log: Callable[[str], None] = print
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
        what = (
            f"{labels.skipped} feature(s) skipped as not polygons or empty "
            f"({', '.join(sorted(set(labels.skipped_reasons)))})"
            if labels.skipped
            else "it has no features"
        )
        raise LabelError(
            f"Layer {labels.layer_name!r} of {opts.labels_path} holds no building polygon: {what}. "
            "Choose a polygon layer of building outlines"
        )
    notes: List[str] = []
    if labels.repaired:
        notes.append(f"{labels.repaired} invalid label geometries were repaired.")
    if labels.skipped:
        notes.append(
            f"{labels.skipped} label features were skipped (empty or not polygons: "
            f"{', '.join(sorted(set(labels.skipped_reasons)))})."
        )
    if opts.label_fids is not None:
        keep = set(opts.label_fids)
        geoms = [g for fid, g in zip(labels.fids, geoms) if fid in keep]
    inside = [g for g in geoms if g.intersects(shapely.box(*raster_bounds))]
    if not inside:
        raise LabelError(
            "No label polygon lies inside the raster: check that the label layer covers "
            "the raster (its CRS is reprojected automatically)"
        )
    area, area_notes = _area_polygon(opts, crs_wkt, inside)
    notes += area_notes
    area = area.intersection(shapely.box(*raster_bounds))
    if area.is_empty:
        raise LabelError("The labelled area does not overlap the raster")
    scene = scene_from_raster(
        opts.raster_path, None, bbox=area.bounds, load_gsd_m=gsd_m, area_wkt=area.wkt, label_geometries=inside
    )
    block_px = validation_block_px(scene.valid, tile_px)
    if block_px < tile_px:
        notes.append(f"Small labelled area: validation holds out blocks of {block_px} x {block_px} px.")
    val_mask = choose_validation_blocks(scene.valid, block_px, opts.val_fraction, opts.seed)
    for n in notes:
        log(n)
    return scene, val_mask, notes, area, len(inside)


def _split(scene: Scene, val_mask: np.ndarray, tile_px: int) -> Tuple[Scene, List[Scene]]:
    train_scene = Scene(
        scene.name + "_train", scene.image, scene.label, scene.valid & ~val_mask, scene.gsd_m, instances=scene.instances
    )
    val_scene = Scene(
        scene.name + "_val", scene.image, scene.label, scene.valid & val_mask, scene.gsd_m, instances=scene.instances
    )
    tiles = []
    h, w = scene.label.shape
    for r in range(0, h, tile_px):
        for c in range(0, w, tile_px):
            t = val_scene.crop(r, c, min(tile_px, h - r), min(tile_px, w - c))
            if t.valid.any():
                tiles.append(t)
    return train_scene, tiles


def finetune(
    opts: FinetuneOptions,
    progress: Optional[Callable[[float, str], None]] = None,
    is_cancelled: Optional[Callable[[], bool]] = None,
    on_epoch: Optional[Callable[[Dict], None]] = None,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune the base model on the user's data and write the new model with its curves."""
    opts.validate()
    base_path = opts.base_model_path or str(BUNDLED_MODEL_PATH)
    check_model_output(opts.output_path, base_path, opts.overwrite)
    check_raster(opts.raster_path)
    net, meta = load_trainable(base_path)
    device = resolve_device(opts.device)
    data = _prepared(opts, meta, device, log)
    cfg = data.cfg
    base_thr = float(meta["threshold"])
    base_net = copy.deepcopy(net) if opts.compare_outside else None
    before = evaluate_tiles(net.to(device), data.val_sets["val"], cfg, device, (base_thr,))[base_thr].as_dict()
    log(f"base model on the validation blocks: IoU {before['iou']:.4f}, accuracy {before['accuracy']:.4f}")
    sampler = _sampler(data.train_scene, cfg, opts.seed)
    result: TrainResult = train(
        sampler, data.val_sets, cfg, net=net, on_epoch=on_epoch, progress=progress, is_cancelled=is_cancelled, log=log
    )
    after = result.val_metrics.get("val", {})
    if result.stopped == "cancelled" and not opts.keep_best_on_cancel:
        notes = data.notes + ["Cancelled: the model was not kept."]
        return _finetune_result(result, {"before": before, "after": after}, notes, data.plan)
    outside: Dict[str, Dict[str, float]] = {}
    if opts.compare_outside and not (is_cancelled and is_cancelled()):
        outside = measure_outside(opts, meta, data.area, base_net, result, cfg, device, data.notes, log)
    _warn_if_no_better(before, after, data.notes, log)
    return _write_model(opts, meta, base_path, data, result, {"before": before, "after": after, "outside": outside})


@dataclass
class _Data:
    """The run's data: the labelled scene and its split, notes, the labelled area, the plan and the configuration."""

    scene: Scene
    val_mask: np.ndarray
    notes: List[str]
    area: object
    n_labels: int
    train_scene: Optional[Scene] = None
    val_sets: Dict[str, list] = field(default_factory=dict)
    plan: Dict[str, float] = field(default_factory=dict)
    cfg: Optional[TrainConfig] = None


def _prepared(opts: FinetuneOptions, meta: Dict, device: torch.device, log: Callable[[str], None]) -> _Data:
    """Read the data (:func:`prepare_data`), split training and validation blocks, plan the run."""
    data = _Data(*prepare_data(opts, meta, log))
    if not (data.scene.label.astype(bool) & data.scene.valid & data.val_mask).any():
        raise LabelError(
            "The validation blocks hold no labelled building, so nothing could be measured; "
            "label a larger area (or more buildings), or change --seed"
        )
    tile_px = int(meta["tile_size_px"])
    data.train_scene, val_tiles = _split(data.scene, data.val_mask, tile_px)
    data.plan = plan(int(data.train_scene.valid.sum()), tile_px, opts, device.type)
    if opts.freeze_encoder and not has_encoder(meta):
        data.notes.append("The base model has no separate encoder to keep: every layer is trained.")
    log(plan_text(data.plan))
    data.cfg = _train_config(meta, opts, str(device), int(data.plan["samples_per_epoch"]))
    data.val_sets = {"val": scenes_to_tiles(val_tiles, tile_px)}
    return data


def _write_model(
    opts: FinetuneOptions, meta: Dict, base_path: str, data: _Data, result: TrainResult, figures: Dict
) -> FinetuneResult:
    """Write the model (with its metadata), its curves and its metrics file; ``figures``: before, after, outside."""
    before, after, outside = figures["before"], figures["after"], figures["outside"]
    metrics = {"val_before": before, "val_after": after}
    if outside:
        metrics.update(outside_before=outside["before"], outside_after=outside["after"])
    out = opts.output_path
    name = opts.name or os.path.splitext(os.path.basename(out))[0]
    metadata = _model_metadata(opts, meta, base_path, name, data, result, metrics)
    export_model(result.net, data.cfg, out, result.threshold, metadata, core_threshold=result.core_threshold)
    curves = plot_curves(result.history, os.path.splitext(out)[0] + "_curves.png", f"fine-tune: {name}")
    write_json(
        {
            "before": before,
            "after": after,
            "outside": outside,
            "plan": data.plan,
            "threshold": result.threshold,
            "history": result.history,
            "notes": data.notes,
        },
        os.path.splitext(out)[0] + "_metrics.json",
    )
    return _finetune_result(result, figures, data.notes, data.plan, out, curves)


def _finetune_result(
    result: TrainResult,
    figures: Dict,
    notes: List[str],
    the_plan: Dict[str, float],
    model_path: Optional[str] = None,
    curves_path: Optional[str] = None,
) -> FinetuneResult:
    """The run's result (no model or curves file when the model was not kept)."""
    before, after = figures["before"], figures["after"]
    return FinetuneResult(
        model_path,
        curves_path,
        result.history,
        before,
        after,
        result.threshold,
        result.stopped,
        result.minutes,
        notes,
        outside=figures.get("outside", {}),
        plan=the_plan,
    )


def _sampler(train_scene: Scene, cfg: TrainConfig, seed: int) -> CropSampler:
    """Random augmented crops of the training blocks (milder scaling than training from scratch)."""
    return CropSampler(
        [train_scene],
        cfg.gsd_m,
        cfg.tile_px,
        seed=seed,
        min_valid_fraction=0.3,
        config=AugmentConfig(scale_range=(0.85, 1.2), degrade_p=0.1),
        n_outputs=cfg.n_outputs,
    )


def _train_config(meta: Dict, opts: FinetuneOptions, device: str, samples_per_epoch: int) -> TrainConfig:
    """The training run's configuration: the base model's architecture and grid, the user's choices."""
    norm = meta["normalization"]
    params = meta["architecture"].get("params", {})
    separation = int(params.get("out_channels", 1)) > 1
    return TrainConfig(
        architecture=meta["architecture"]["name"],
        architecture_params=params,
        gsd_m=float(meta["gsd_m"]),
        tile_px=int(meta["tile_size_px"]),
        overlap_px=int(meta["overlap_px"]),
        batch_size=opts.batch_size,
        lr=opts.lr,
        max_epochs=opts.epochs,
        patience=opts.patience,
        seed=opts.seed,
        device=device,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        samples_per_epoch=samples_per_epoch,
        max_minutes=opts.max_minutes or None,
        select_on="iou+objects" if separation else "iou",
        freeze_encoder=opts.freeze_encoder and has_encoder(meta),
    )


def has_encoder(meta: Dict) -> bool:
    """Whether the model's architecture has a separate (pretrained) encoder that fine-tuning can keep."""
    return meta["architecture"]["name"] in ENCODER_ARCHITECTURES


#: Architectures of ``core.unet`` with an ``encoder`` module (EfficientNet-Lite0); the plain U-Net has none.
ENCODER_ARCHITECTURES = ("efflite0_unet",)


def _warn_if_no_better(before: Dict, after: Dict, notes: List[str], log: Callable[[str], None]) -> None:
    """A note when the fine-tuned model does not beat the base model on the validation blocks."""
    if isinstance(after.get("iou"), float) and isinstance(before.get("iou"), float) and after["iou"] <= before["iou"]:
        worse = "worse than" if after["iou"] < before["iou"] else "no better than"
        warning = (
            f"Warning: the fine-tuned model is {worse} the base model on the validation blocks "
            f"(IoU {before['iou']:.4f} -> {after['iou']:.4f}); keep using the base model, or try a "
            "smaller learning rate, more epochs or more labels"
        )
        notes.append(warning)
        log(warning)


def _model_metadata(
    opts: FinetuneOptions,
    meta: Dict,
    base_path: str,
    name: str,
    data: _Data,
    result: TrainResult,
    metrics: Dict,
) -> Dict:
    """The new model's metadata record: its base, how it was trained, its validation figures."""
    return {
        "name": name,
        "version": "1.0.0",
        "base_model": {
            "path": os.path.basename(base_path),
            "name": meta.get("name"),
            "version": meta.get("version"),
        },
        "training": {
            "kind": "fine-tune",
            "raster": os.path.basename(opts.raster_path),
            "labels": os.path.basename(opts.labels_path),
            "area_bounds": [round(v, 6) for v in data.area.bounds],
            "label_polygons": data.n_labels,
            "validation_fraction": opts.val_fraction,
            **result_metadata(result, data.cfg),
        },
        "metrics": metrics,
    }
