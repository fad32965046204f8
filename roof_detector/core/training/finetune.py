"""Fine-tuning a model on a user's raster and trusted building polygons.

The user gives a raster, a polygon layer of buildings and optionally the area
whose buildings are *all* labelled (default: the label layer's extent).
Inside that area every unlabelled pixel counts as "not building"; outside it
pixels are ignored. The area is cut into square blocks of one model tile;
whole blocks go to validation (``val_fraction`` of the labelled pixels), so
training and validation never share pixels (a spatial split, not random
pixels). The base model's own validation IoU and accuracy are measured on the
same blocks before training, for a before/after comparison.

Defaults that adapt (measured on a 0.3 m suburb, issue 16): crops per epoch
scale with the labelled area (:func:`default_samples_per_epoch`), up to
the declared epochs (``core.params.FINETUNE``) with early stopping, under a time budget
(``max_minutes``); :func:`plan` gives the numbers and an estimate of the time
before training starts. Separation models (building, border, contact) train
all three heads on targets derived from the label polygons.

With labels beyond the labelled area (the label layer reaches further, or only
some features are selected), the base and the fine-tuned models are also
compared there, on ground neither trained on (:func:`compare_outside`):
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
from ..model_io import BUNDLED_MODEL_PATH, resolve_device
from ..params import FINETUNE, ParameterError, check_fields
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
    # None = scaled to the labelled area (default_samples_per_epoch)
    samples_per_epoch: Optional[int] = FINETUNE["samples_per_epoch"].default
    # time budget: training stops there, keeping the best epoch (None or 0: none)
    max_minutes: Optional[float] = FINETUNE["max_minutes"].default
    # before/after on labels outside the labelled area, when there are any
    compare_outside: bool = FINETUNE["compare_outside"].default
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


#: Crops per epoch per model tile of labelled training area, and the bounds (issue 16: on a fifth
#: of a 0.3 m suburb, 32 crops per epoch gained +0.035 IoU, 160 with early stopping +0.13).
SAMPLES_PER_TILE = 40
MIN_SAMPLES, MAX_SAMPLES = 96, 480
#: Training seconds per crop: 2 CPU threads (issue 16: 1440 crops in 2.5 min on 2 cores), a CUDA GPU.
SECONDS_PER_SAMPLE = {"cpu": 0.1, "cuda": 0.01, "mps": 0.03}
#: Largest ground the outside comparison reads at the model GSD, in pixels (about 40 MB of image).
MAX_OUTSIDE_PX = 4096 * 4096


def default_samples_per_epoch(train_px: int, tile_px: int, batch_size: int) -> int:
    """Crops per epoch for ``train_px`` labelled training pixels: :data:`SAMPLES_PER_TILE` per model tile,
    within [:data:`MIN_SAMPLES`, :data:`MAX_SAMPLES`], a whole number of batches."""
    tiles = train_px / float(tile_px * tile_px)
    n = min(MAX_SAMPLES, max(MIN_SAMPLES, int(round(SAMPLES_PER_TILE * tiles))))
    return max(batch_size, n // batch_size * batch_size)


def plan(
    train_px: int, tile_px: int, opts: "FinetuneOptions", device_type: str = "cpu", threads: Optional[int] = None
) -> Dict[str, float]:
    """What a fine-tune run will do: crops per epoch, most epochs, and the time it may take (minutes):
    ``estimate_minutes`` for every epoch at this device's usual speed, capped by ``budget_minutes``."""
    samples = opts.samples_per_epoch or default_samples_per_epoch(train_px, tile_px, opts.batch_size)
    per_sample = SECONDS_PER_SAMPLE.get(device_type, 0.1)
    if device_type == "cpu":
        per_sample *= 2.0 / max(1, threads or torch.get_num_threads())
    estimate = samples * opts.epochs * per_sample / 60.0
    return {
        "samples_per_epoch": samples,
        "epochs": opts.epochs,
        "estimate_minutes": round(estimate, 1),
        "budget_minutes": opts.max_minutes or 0.0,
        "labelled_tiles": round(train_px / tile_px**2, 1),
    }


def plan_text(p: Dict[str, float]) -> str:
    """One line for the user before training starts."""
    budget = p.get("budget_minutes") or 0
    most = min(p["estimate_minutes"], budget) if budget else p["estimate_minutes"]
    return (
        f"Plan: {int(p['samples_per_epoch'])} crops per epoch ({p['labelled_tiles']:g} tiles of labelled area), "
        f"up to {int(p['epochs'])} epochs, stopping early when validation stops improving: at most about "
        f"{most:.0f} min" + (f" (time budget {budget:g} min)" if budget else "")
    )


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
    val_mask = choose_validation_blocks(scene.valid, tile_px, opts.val_fraction, opts.seed)
    for n in notes:
        log(n)
    return scene, val_mask, notes, area, len(inside)


def outside_scene(opts: FinetuneOptions, meta: Dict, area, log: Callable[[str], None] = print) -> Optional[Scene]:
    """The labelled ground outside the training area, at the model GSD, or None (nothing there, or too large).

    Its extent is that of every polygon of the label layer (all features, selected or not); inside
    it, beyond the training area, unlabelled pixels count as "not building".
    """
    import rasterio

    with rasterio.open(opts.raster_path) as ds:
        crs_wkt = ds.crs.to_wkt()
        raster_box = shapely.box(*ds.bounds)
        gx = abs(ds.transform.a)
    geoms = [
        g
        for g in read_polygons(opts.labels_path, target_crs_wkt=crs_wkt, layer=opts.labels_layer).geometries
        if g.intersects(raster_box)
    ]
    if not geoms:
        return None
    outside = shapely.box(*shapely.union_all(geoms).bounds).intersection(raster_box).difference(area)
    labelled = [g for g in geoms if g.intersects(outside)]
    if outside.is_empty or not labelled:
        return None
    from .scenes import ground_pixel_size_m

    gsd_m = float(meta["gsd_m"])
    with rasterio.open(opts.raster_path) as ds:
        native_m = sum(ground_pixel_size_m(ds)) / 2.0
    # raster pixels of the outside ground, then as many at the model's pixel size
    px = outside.area / (gx * gx) * (native_m / gsd_m) ** 2
    if px > MAX_OUTSIDE_PX:
        log(
            f"The labelled ground outside the training area is too large to compare here ({px / 1e6:.0f} Mpx at "
            f"the model's {gsd_m:g} m); use `python -m roof_detector evaluate` on a detection there."
        )
        return None
    return scene_from_raster(
        opts.raster_path,
        None,
        bbox=outside.bounds,
        load_gsd_m=gsd_m,
        area_wkt=outside.wkt,
        label_geometries=labelled,
        name="outside",
    )


def compare_outside(
    base_net,
    new_net,
    scene: Scene,
    cfg: TrainConfig,
    base_threshold: float,
    base_core: Optional[float],
    new_threshold: float,
    new_core: Optional[float],
    device,
) -> Dict[str, Dict[str, float]]:
    """Pixel IoU and object F1 (buildings separated as the engine does) of two networks on ``scene``."""
    from ..vectorize import SPLIT_CORE_PROBABILITY
    from .scenes import tile_scene
    from .trainer import _object_f1

    tiles = scenes_to_tiles(tile_scene(scene, cfg.tile_px, 0.01), cfg.tile_px)
    out = {}
    for key, net, thr, core in (
        ("before", base_net, base_threshold, base_core),
        ("after", new_net, new_threshold, new_core),
    ):
        c = core if core is not None else max(SPLIT_CORE_PROBABILITY, thr)
        n_out = int(getattr(net.head, "out_channels", 1))
        c_cfg = TrainConfig(
            **{**cfg.__dict__, "architecture_params": {**cfg.architecture_params, "out_channels": n_out}}
        )
        r = evaluate_tiles(net.to(device), tiles, c_cfg, device, (thr,), objects=((thr, c),))
        n_pred, n_ref, n_match = r[("objects", thr, c)]
        out[key] = {
            "iou": r[thr].iou(),
            "accuracy": r[thr].accuracy(),
            "object_f1": _object_f1(n_pred, n_ref, n_match),
            "predicted": n_pred,
            "reference": n_ref,
            "matched": n_match,
        }
    return out


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
            counts[r, c] = valid[r * block_px : (r + 1) * block_px, c * block_px : (c + 1) * block_px].sum()
    usable = np.argwhere(counts > block_px * block_px // 8)
    if len(usable) < 2:
        size_m = "one model tile"
        raise LabelError(
            f"The labelled area is too small for a validation block: it needs at least two "
            f"blocks of {block_px} x {block_px} px ({size_m} each) with imagery; draw a larger area"
        )
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
        mask[r * block_px : (r + 1) * block_px, c * block_px : (c + 1) * block_px] = True
    return mask


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
    scene, val_mask, notes, area, n_labels = prepare_data(opts, meta, log)
    if not (scene.label.astype(bool) & scene.valid & val_mask).any():
        raise LabelError(
            "The validation blocks hold no labelled building, so nothing could be measured; "
            "label a larger area (or more buildings), or change --seed"
        )
    tile_px = int(meta["tile_size_px"])
    train_scene, val_tiles = _split(scene, val_mask, tile_px)
    norm = meta["normalization"]
    params = meta["architecture"].get("params", {})
    separation = int(params.get("out_channels", 1)) > 1
    the_plan = plan(int(train_scene.valid.sum()), tile_px, opts, device.type)
    log(plan_text(the_plan))
    cfg = TrainConfig(
        architecture=meta["architecture"]["name"],
        architecture_params=params,
        gsd_m=float(meta["gsd_m"]),
        tile_px=tile_px,
        overlap_px=int(meta["overlap_px"]),
        batch_size=opts.batch_size,
        lr=opts.lr,
        max_epochs=opts.epochs,
        patience=opts.patience,
        seed=opts.seed,
        device=str(device),
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        samples_per_epoch=int(the_plan["samples_per_epoch"]),
        max_minutes=opts.max_minutes or None,
        select_on="iou+objects" if separation else "iou",
    )
    val_sets = {"val": scenes_to_tiles(val_tiles, tile_px)}
    base_thr = float(meta["threshold"])
    base_core = meta.get("separation", {}).get("core_threshold") if separation else None
    base_net = copy.deepcopy(net) if opts.compare_outside else None
    before = evaluate_tiles(net.to(device), val_sets["val"], cfg, device, (base_thr,))[base_thr].as_dict()
    log(f"base model on the validation blocks: IoU {before['iou']:.4f}, accuracy {before['accuracy']:.4f}")
    sampler = CropSampler(
        [train_scene],
        cfg.gsd_m,
        tile_px,
        seed=opts.seed,
        min_valid_fraction=0.3,
        config=AugmentConfig(scale_range=(0.85, 1.2), degrade_p=0.1),
        n_outputs=cfg.n_outputs,
    )
    result: TrainResult = train(
        sampler, val_sets, cfg, net=net, on_epoch=on_epoch, progress=progress, is_cancelled=is_cancelled, log=log
    )
    after = result.val_metrics.get("val", {})
    if result.stopped == "cancelled" and not opts.keep_best_on_cancel:
        return FinetuneResult(
            None,
            None,
            result.history,
            before,
            after,
            result.threshold,
            result.stopped,
            result.minutes,
            notes + ["Cancelled: the model was not kept."],
            plan=the_plan,
        )
    outside: Dict[str, Dict[str, float]] = {}
    if opts.compare_outside and not (is_cancelled and is_cancelled()):
        other = outside_scene(opts, meta, area, log)
        if other is None:
            notes.append("No labels outside the labelled area: no before/after there.")
        else:
            outside = compare_outside(
                base_net, result.net, other, cfg, base_thr, base_core, result.threshold, result.core_threshold, device
            )
            b, a = outside["before"], outside["after"]
            log(
                f"outside the labelled area ({b['reference']} buildings): IoU {b['iou']:.4f} -> {a['iou']:.4f}, "
                f"object F1 {b['object_f1']:.4f} -> {a['object_f1']:.4f}"
            )
    if isinstance(after.get("iou"), float) and isinstance(before.get("iou"), float) and after["iou"] <= before["iou"]:
        worse = "worse than" if after["iou"] < before["iou"] else "no better than"
        warning = (
            f"Warning: the fine-tuned model is {worse} the base model on the validation blocks "
            f"(IoU {before['iou']:.4f} -> {after['iou']:.4f}); keep using the base model, or try a "
            "smaller learning rate, more epochs or more labels"
        )
        notes.append(warning)
        log(warning)
    out = opts.output_path
    name = opts.name or os.path.splitext(os.path.basename(out))[0]
    export_model(
        result.net,
        cfg,
        out,
        result.threshold,
        {
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
                "area_bounds": [round(v, 6) for v in area.bounds],
                "label_polygons": n_labels,
                "validation_fraction": opts.val_fraction,
                **result_metadata(result, cfg),
            },
            "metrics": {
                "val_before": before,
                "val_after": after,
                **({"outside_before": outside["before"], "outside_after": outside["after"]} if outside else {}),
            },
        },
        core_threshold=result.core_threshold,
    )
    curves = plot_curves(result.history, os.path.splitext(out)[0] + "_curves.png", f"fine-tune: {name}")
    write_json(
        {
            "before": before,
            "after": after,
            "outside": outside,
            "plan": the_plan,
            "threshold": result.threshold,
            "history": result.history,
            "notes": notes,
        },
        os.path.splitext(out)[0] + "_metrics.json",
    )
    return FinetuneResult(
        out,
        curves,
        result.history,
        before,
        after,
        result.threshold,
        result.stopped,
        result.minutes,
        notes,
        outside=outside,
        plan=the_plan,
    )
