"""The training loop shared by bundled-model training and fine-tuning.

One epoch is ``samples_per_epoch`` random augmented crops. After each epoch
the loss, pooled pixel IoU and accuracy are recorded for train (on the
augmented crops, at threshold 0.5) and for every validation set; the run
stops early when the validation IoU has not improved for ``patience``
epochs (as in the seed study) and keeps the best epoch. The threshold is then
tuned on validation. A checkpoint after every epoch lets a run resume.

Models with separation outputs (building, border, contact; ``out_channels``
3 in the architecture parameters) train all three heads (:func:`model_loss`)
and are also scored on objects: validation buildings are separated as the
engine does (:func:`~roof_detector.core.vectorize.label_instances`) and
matched one-to-one at IoU >= 0.5 against the label instances; with
``select_on="iou+objects"`` the best epoch is the one with the highest mean
of pixel IoU and object F1, and the core threshold of the separation is tuned
with the building threshold.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Cancelled
from ..metrics import Confusion
from ..unet import build_model, count_parameters, gflops_per_tile
from .sampling import CropSampler
from .train_state import TrainState

EvalTiles = List[Tuple[torch.Tensor, ...]]  # image, label, valid[, instances]
THRESHOLDS = tuple(round(0.25 + 0.05 * i, 2) for i in range(11))  # 0.25 .. 0.75
CORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # separation models' core score, tuned on validation
#: Loss weight of each output (building, border, contact).
OUTPUT_WEIGHTS = (1.0, 0.5, 0.5)
#: Objects smaller than this are not counted on validation tiles (as ``detect``'s default minimum area).
MIN_OBJECT_M2 = 10.0


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (all recorded in the model's metadata)."""

    architecture: str = "efflite0_unet"
    architecture_params: Dict = field(default_factory=dict)
    gsd_m: float = 0.3
    tile_px: int = 256
    overlap_px: int = 32
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    samples_per_epoch: int = 320
    max_epochs: int = 60
    patience: int = 8
    max_minutes: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    ema_decay: float = 0.995  # 0 = off; validated and exported weights are this average
    select_on: str = "iou"  # best epoch by "iou" or by "iou+objects" (mean of pixel IoU and object F1)
    # fine-tuning: keep the encoder's weights and batch-norm statistics, train decoder and head only
    freeze_encoder: bool = False

    @property
    def n_outputs(self) -> int:
        """Output channels of the network: 1 (building) or 3 (building, border, contact)."""
        return int(self.architecture_params.get("out_channels", 1))


@dataclass
class TrainResult:
    """What a run produced: best network, its epoch and threshold, and the history."""

    net: torch.nn.Module
    history: List[Dict]
    best_epoch: int
    threshold: float
    val_metrics: Dict[str, Dict[str, float]]
    minutes: float
    stopped: str  # "early-stopping", "max-epochs", "time-budget", "cancelled"
    core_threshold: Optional[float] = None  # separation models: the tuned core score threshold


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice, both over valid pixels only (thin, imbalanced masks)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    n_valid = valid.sum().clamp_min(1.0)
    bce = (bce * valid).sum() / n_valid
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).sum()
    dice = 1 - (2 * inter + 1.0) / (p.sum() + t.sum() + 1.0)
    return bce + dice


def model_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice per output channel, weighted by :data:`OUTPUT_WEIGHTS` (one channel: plain BCE + Dice)."""
    total = bce_dice_loss(logits[:, :1], target[:, :1], valid)
    for c in range(1, logits.shape[1]):
        total = total + OUTPUT_WEIGHTS[c] * bce_dice_loss(logits[:, c : c + 1], target[:, c : c + 1], valid)
    return total


def object_counts(
    prob: np.ndarray,
    ref_instances: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    core: Optional[float],
    min_px: float,
) -> Tuple[int, int, int]:
    """(predicted, reference, matched at IoU >= 0.5) buildings of one tile.

    ``prob``: C x H x W outputs; buildings are separated as the engine does
    (cores of :func:`~roof_detector.core.vectorize.separation_score` at ``core``;
    None = no separation). Objects under ``min_px`` pixels and pixels outside
    ``valid`` do not count.
    """
    from ..vectorize import SEPARATION_MIN_CORE_FRACTION, label_instances, separation_score

    building = prob[0] >= threshold
    score = None if core is None else np.round(separation_score(prob) * 255).astype(np.uint8)
    core_u8 = None if core is None else int(round(core * 255))
    # cores may be much smaller than their roof (the border is taken off), as in the engine
    pred, n_pred = label_instances(
        building, score, core_u8, min_px * (SEPARATION_MIN_CORE_FRACTION if prob.shape[0] > 1 else 1.0)
    )
    pred = np.where(valid, pred, 0)
    ref = np.where(valid, ref_instances, 0)
    p_sizes = np.bincount(pred.ravel(), minlength=n_pred + 1)
    _, ref = np.unique(ref, return_inverse=True)
    ref = ref.reshape(pred.shape)
    r_sizes = np.bincount(ref.ravel())
    keep_p = p_sizes >= min_px
    keep_r = r_sizes >= min_px
    keep_p[0] = keep_r[0] = False
    pairs = pred.astype(np.int64) * len(r_sizes) + ref
    both = (pred > 0) & (ref > 0)
    joint = np.bincount(pairs[both], minlength=1)
    idx = np.flatnonzero(joint)
    pi, ri = idx // len(r_sizes), idx % len(r_sizes)
    inter = joint[idx]
    iou = inter / (p_sizes[pi] + r_sizes[ri] - inter)
    ok = (iou >= 0.5) & keep_p[pi] & keep_r[ri]
    # one-to-one, greedily by decreasing IoU (as evaluate): only ties at exactly 0.5 can compete
    used_p, used_r, matched = set(), set(), 0
    for k in np.flatnonzero(ok)[np.argsort(-iou[ok], kind="stable")]:
        if pi[k] not in used_p and ri[k] not in used_r:
            used_p.add(pi[k])
            used_r.add(ri[k])
            matched += 1
    return int(keep_p.sum()), int(keep_r.sum()), matched


def _object_f1(n_pred: int, n_ref: int, n_match: int) -> float:
    return 2 * n_match / (n_pred + n_ref) if n_pred + n_ref else 1.0


def _confusion_t(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, thr: float) -> Confusion:
    pred = prob >= thr
    tgt = target >= 0.5
    v = valid >= 0.5
    tp = int((pred & tgt & v).sum())
    fp = int((pred & ~tgt & v).sum())
    fn = int((~pred & tgt & v).sum())
    tn = int(v.sum()) - tp - fp - fn
    return Confusion(tp, fp, fn, tn)


@torch.inference_mode()
def predict_tiles(
    net: torch.nn.Module, tiles: EvalTiles, mean, std, device: torch.device, batch_size: int = 8
) -> List[torch.Tensor]:
    """Probabilities (C x H x W, on CPU) for each evaluation tile; tiles padded to a multiple of 32."""
    net.eval()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out: List[torch.Tensor] = []
    for tile in tiles:
        img = tile[0]
        h, w = img.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        x = F.pad(img[None].to(device), (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        out.append(torch.sigmoid(net((x - m) / s))[0, :, :h, :w].float().cpu())
    return out


def evaluate_tiles(
    net,
    tiles: EvalTiles,
    cfg: TrainConfig,
    device,
    thresholds=(0.5,),
    objects: Sequence[Tuple[float, Optional[float]]] = (),
) -> Dict:
    """Pooled confusion of the net on tiles at each threshold (and mean loss under key -1).

    For each (threshold, core) in ``objects``: predicted / reference / matched
    building counts under key ``("objects", threshold, core)`` (tiles need instances).
    """
    probs = predict_tiles(net, tiles, cfg.mean, cfg.std, device)
    res: Dict = {t: Confusion() for t in thresholds}
    counts = {o: np.zeros(3, dtype=np.int64) for o in objects}
    min_px = MIN_OBJECT_M2 / cfg.gsd_m**2
    loss_sum, n = 0.0, 0
    for p, tile in zip(probs, tiles):
        lab, val = tile[1], tile[2]
        for t in thresholds:
            res[t].add(_confusion_t(p[:1], lab, val, t))
        logit = torch.logit(p[:1].clamp(1e-6, 1 - 1e-6))
        loss_sum += float(bce_dice_loss(logit[None], lab[None], val[None]))
        n += 1
        if objects:
            pn, inst, vn = p.numpy(), tile[3][0].numpy(), val[0].numpy() >= 0.5
            for o in objects:
                counts[o] += object_counts(pn, inst, vn, o[0], o[1], min_px)
    res[-1] = loss_sum / max(n, 1)  # type: ignore[assignment]
    for o, c in counts.items():
        res[("objects",) + tuple(o)] = tuple(int(v) for v in c)
    return res


def default_core(cfg: TrainConfig) -> Optional[float]:
    """Core threshold used on validation before tuning: the engine's for building-only models."""
    from ..vectorize import SPLIT_CORE_PROBABILITY

    return SPLIT_CORE_PROBABILITY if cfg.n_outputs == 1 else 0.5


def _pooled(conf: Dict[str, Confusion]) -> Confusion:
    total = Confusion()
    for c in conf.values():
        total.add(c)
    return total


def train(
    sampler: CropSampler,
    val_sets: Dict[str, EvalTiles],
    cfg: TrainConfig,
    net: Optional[torch.nn.Module] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
    on_epoch: Optional[Callable[[Dict], None]] = None,
    progress: Optional[Callable[[float, str], None]] = None,
    is_cancelled: Optional[Callable[[], bool]] = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``net`` (default: a new ``cfg.architecture``) and return the best epoch's network."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    net = net if net is not None else build_model(cfg.architecture, **cfg.architecture_params)
    if cfg.freeze_encoder:
        frozen_encoder(net).requires_grad_(False)
    # channels_last doubles CPU training speed with oneDNN (measured 5.9 -> 11.2 samples/s).
    net.to(device=device, memory_format=torch.channels_last)
    state = TrainState.start(net, cfg)
    if resume and checkpoint_path and os.path.exists(checkpoint_path):
        state.resume(checkpoint_path, log)
        sampler.rng = np.random.default_rng(cfg.seed + len(state.history))
    t0 = time.time() - state.elapsed_before
    stopped = "max-epochs"
    for epoch in range(state.start_epoch, cfg.max_epochs + 1):
        row = _train_epoch(state, sampler, cfg, device, epoch, progress, is_cancelled)
        if row is None:
            stopped = "cancelled"
            break
        score = _validate_epoch(state.eval_net, val_sets, cfg, device, row)
        row["seconds"] = time.time() - t0
        improved = state.record(row, score)
        _log_epoch(row, improved, log)
        if checkpoint_path:
            state.save(checkpoint_path, cfg, row["seconds"])
        if on_epoch:
            on_epoch({"row": row, "improved": improved, "best_state": state.best_state if improved else None})
        if epoch - state.best_epoch >= cfg.patience:
            stopped = "early-stopping"
            break
        if cfg.max_minutes and (time.time() - t0) / 60 >= cfg.max_minutes:
            stopped = "time-budget"
            break
    if stopped == "cancelled" and not state.history:
        raise Cancelled("Training cancelled before the first epoch ended; no model was written.")
    return _best_result(state, val_sets, cfg, device, t0, stopped)


def _train_epoch(
    state: TrainState,
    sampler: CropSampler,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    progress: Optional[Callable[[float, str], None]],
    is_cancelled: Optional[Callable[[], bool]],
) -> Optional[Dict]:
    """One epoch of optimiser steps on random crops; the epoch's train figures, or None when cancelled."""
    net = state.net
    net.train()
    if cfg.freeze_encoder:
        frozen_encoder(net).eval()  # its batch-norm statistics stay those of the base model
    steps = max(1, cfg.samples_per_epoch // cfg.batch_size)
    tr_conf, tr_loss = Confusion(), 0.0
    for step in range(steps):
        if is_cancelled and is_cancelled():
            return None
        x, y, v = sampler.batch(cfg.batch_size)
        x, y, v = x.to(device), y.to(device), v.to(device)
        m = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
        logits = net(((x - m) / s).contiguous(memory_format=torch.channels_last))
        loss = model_loss(logits, y, v)
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        state.opt.step()
        if state.ema is not None:
            state.ema.update_parameters(net)
        tr_loss += float(loss.detach())
        tr_conf.add(_confusion_t(torch.sigmoid(logits.detach()[:, :1]), y[:, :1], v, 0.5))
        if progress:
            done = (epoch - 1 + (step + 1) / steps) / cfg.max_epochs
            progress(done, f"epoch {epoch} step {step + 1}/{steps} loss {tr_loss / (step + 1):.3f}")
    return {
        "epoch": epoch,
        "lr": state.opt.param_groups[0]["lr"],
        "train_loss": tr_loss / steps,
        "train_iou": tr_conf.iou(),
        "train_accuracy": tr_conf.accuracy(),
    }


def frozen_encoder(net: torch.nn.Module) -> torch.nn.Module:
    """The part of ``net`` that ``freeze_encoder`` keeps fixed (its ``encoder``)."""
    enc = getattr(net, "encoder", None)
    if enc is None:
        raise ValueError(f"{type(net).__name__} has no separate encoder to freeze")
    return enc


def _validate_epoch(
    eval_net: torch.nn.Module, val_sets: Dict[str, EvalTiles], cfg: TrainConfig, device: torch.device, row: Dict
) -> float:
    """Add the validation figures to the epoch's ``row``; return the score that picks the best epoch."""
    confs = {}
    losses = []
    obj_key = (0.5, default_core(cfg))
    with_objects = cfg.select_on == "iou+objects"
    obj_total = np.zeros(3, dtype=np.int64)
    for name, tiles in val_sets.items():
        r = evaluate_tiles(eval_net, tiles, cfg, device, objects=(obj_key,) if with_objects else ())
        confs[name] = r[0.5]
        losses.append(r[-1])
        row[f"val_{name}_iou"] = r[0.5].iou()
        row[f"val_{name}_accuracy"] = r[0.5].accuracy()
        if with_objects:
            c = r[("objects",) + obj_key]
            obj_total += c
            row[f"val_{name}_object_f1"] = _object_f1(*c)
    pooled = _pooled(confs)
    row["val_loss"] = float(np.mean(losses)) if losses else float("nan")
    row["val_iou"] = pooled.iou()
    row["val_accuracy"] = pooled.accuracy()
    if not with_objects:
        return row["val_iou"]
    row["val_object_f1"] = _object_f1(*obj_total)
    row["val_score"] = (row["val_iou"] + row["val_object_f1"]) / 2
    return row["val_score"]


def _log_epoch(row: Dict, improved: bool, log: Callable[[str], None]) -> None:
    log(
        f"epoch {row['epoch']:3d}  loss {row['train_loss']:.3f}/{row['val_loss']:.3f}  "
        f"IoU {row['train_iou']:.3f}/{row['val_iou']:.3f}  acc {row['train_accuracy']:.3f}/{row['val_accuracy']:.3f}  "
        + (f"object F1 {row['val_object_f1']:.3f}  " if "val_object_f1" in row else "")
        + f"lr {row['lr']:.1e}  {row['seconds'] / 60:.1f} min"
        + ("  *best*" if improved else "")
    )


def _best_result(
    state: TrainState, val_sets: Dict[str, EvalTiles], cfg: TrainConfig, device: torch.device, t0: float, stopped: str
) -> TrainResult:
    """The best epoch's network with its threshold (and core threshold) tuned on validation."""
    net = state.net
    net.load_state_dict(state.best_state)
    threshold, val_metrics = tune_threshold(net, val_sets, cfg, device)
    core = None
    if cfg.select_on == "iou+objects" and val_sets:
        core, objects = tune_core(net, val_sets, cfg, device, threshold)
        val_metrics["objects"] = objects
    return TrainResult(
        net.cpu(),
        state.history,
        state.best_epoch,
        threshold,
        val_metrics,
        (time.time() - t0) / 60,
        stopped,
        core_threshold=core if cfg.n_outputs > 1 else None,
    )


def tune_threshold(net, val_sets: Dict[str, EvalTiles], cfg: TrainConfig, device) -> Tuple[float, Dict[str, Dict]]:
    """Threshold in 0.25..0.75 with the best pooled validation IoU, and the metrics there."""
    if not val_sets:
        return 0.5, {}
    per_set = {name: evaluate_tiles(net, tiles, cfg, device, THRESHOLDS) for name, tiles in val_sets.items()}
    best_t, best_iou = 0.5, -1.0
    for t in THRESHOLDS:
        iou = _pooled({n: r[t] for n, r in per_set.items()}).iou()
        if iou > best_iou + 1e-9:
            best_t, best_iou = t, iou
    metrics = {name: r[best_t].as_dict() for name, r in per_set.items()}
    metrics["pooled"] = _pooled({n: r[best_t] for n, r in per_set.items()}).as_dict()
    return best_t, metrics


def tune_core(
    net, val_sets: Dict[str, EvalTiles], cfg: TrainConfig, device, threshold: float
) -> Tuple[float, Dict[str, float]]:
    """Core threshold with the best pooled validation object F1 at ``threshold`` (separation
    models; building-only models keep the engine's), and the object figures there."""
    cores = CORE_THRESHOLDS if cfg.n_outputs > 1 else (default_core(cfg),)
    keys = [(threshold, c) for c in cores]
    totals = {k: np.zeros(3, dtype=np.int64) for k in keys}
    for tiles in val_sets.values():
        r = evaluate_tiles(net, tiles, cfg, device, (threshold,), objects=keys)
        for k in keys:
            totals[k] += r[("objects",) + k]
    best = max(keys, key=lambda k: (_object_f1(*totals[k]), -abs(k[1] - 0.5)))
    n_pred, n_ref, n_match = (int(v) for v in totals[best])
    return best[1], {
        "core_threshold": best[1],
        "predicted": n_pred,
        "reference": n_ref,
        "matched": n_match,
        "object_f1": _object_f1(n_pred, n_ref, n_match),
    }


def plot_curves(history: Sequence[Dict], path: str, title: str = "") -> str:
    """Training curves (loss, IoU, accuracy for train and validation per epoch) as a PNG.

    Drawn on a private Agg canvas, without pyplot: the global backend stays
    as it is (inside QGIS this runs in a worker thread, beside Qt figures).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, label in zip(axes, ("loss", "iou", "accuracy"), ("Loss (BCE + Dice)", "IoU", "Pixel accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "s-", ms=3, label="validation")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def describe_network(net: torch.nn.Module, tile_px: int) -> Dict[str, float]:
    """Parameters and GFLOP per tile, for the model card."""
    return {"parameters": count_parameters(net), "gflop_per_tile": round(gflops_per_tile(net, tile_px), 3)}


def write_json(obj, path: str) -> str:
    """Write JSON atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)
    return path


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
