"""Turning a trained network into a model file, and a model file back into a trainable network."""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import ModelError
from ..model_io import read_metadata, save_model
from ..unet import SEPARATION_OUTPUTS, ExportWrapper, build_model, load_widening_head
from .trainer import TrainConfig, TrainResult, describe_network


def export_model(
    net: torch.nn.Module,
    cfg: TrainConfig,
    path: str,
    threshold: float,
    extra: Dict[str, Any],
    core_threshold: Optional[float] = None,
) -> str:
    """Save ``net`` as TorchScript (normalisation and sigmoid inside) with full metadata.

    Separation models record their outputs (``outputs``: building, border,
    contact) and the core threshold tuned on validation (``separation``).
    """
    net = net.cpu().eval()
    meta: Dict[str, Any] = {
        "name": extra.pop("name", "roof-detector-unet"),
        "version": extra.pop("version", "1.0.0"),
        "architecture": {
            "name": cfg.architecture,
            "params": dict(cfg.architecture_params),
            **describe_network(net, cfg.tile_px),
        },
        "bands": ["red", "green", "blue"],
        "normalization": {
            "input_range": [0, 1],
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "applied_in_model": True,
        },
        "output": "probability",
        "outputs": list(SEPARATION_OUTPUTS[: cfg.n_outputs]),
        "gsd_m": cfg.gsd_m,
        "tile_size_px": cfg.tile_px,
        "overlap_px": cfg.overlap_px,
        "threshold": float(threshold),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if cfg.n_outputs > 1:
        meta["separation"] = {"core_threshold": float(core_threshold if core_threshold is not None else 0.5)}
    meta.update(extra)
    return save_model(ExportWrapper(net, cfg.mean, cfg.std), path, meta)


def result_metadata(result: TrainResult, cfg: TrainConfig) -> Dict[str, Any]:
    """The training summary recorded in a model file."""
    return {
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "minutes": round(result.minutes, 1),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "samples_per_epoch": cfg.samples_per_epoch,
        "lr": cfg.lr,
        "patience": cfg.patience,
        "device": cfg.device,
        **({"frozen": "encoder"} if cfg.freeze_encoder else {}),
    }


def load_trainable(path: str, out_channels: Optional[int] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the Python network of a model file (for fine-tuning) and return it with its metadata.

    ``out_channels`` larger than the file's adds fresh output channels to the
    head (border and contact on a building-only model); the metadata returned
    then has the new count in its architecture parameters.
    """
    meta = read_metadata(path)
    arch = meta["architecture"]
    params = dict(arch.get("params", {}))
    saved_channels = int(params.get("out_channels", 1))
    if out_channels is not None and out_channels != saved_channels:
        if out_channels < saved_channels:
            raise ModelError(f"{path} has {saved_channels} outputs; a model cannot drop outputs")
        params["out_channels"] = out_channels
    try:
        net = build_model(arch["name"], **params)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: cannot fine-tune this model ({exc})") from None
    script = torch.jit.load(path, map_location="cpu")
    state = {k[len("net.") :]: v for k, v in script.state_dict().items() if k.startswith("net.")}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelError(f"{path}: weights do not match architecture {arch['name']!r} ({len(missing)} tensors missing)")
    try:
        load_widening_head(net, {k: v for k, v in state.items() if k in own})
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: weights do not match architecture {arch['name']!r} ({exc})") from None
    meta = dict(meta)
    meta["architecture"] = {**arch, "params": params}
    return net, meta


def initial_network(init_from: str, architecture: str, params: Dict[str, Any]) -> Tuple[torch.nn.Module, str]:
    """The network a run starts from: the weights of a model file (``.pt`` with metadata) or of an
    earlier run's ``checkpoint.pt`` (its best weights), with fresh head channels when ``params``
    asks for more outputs than it has. Returns the network and a line for the log."""
    try:
        meta = read_metadata(init_from)
    except ModelError:
        meta = None
    if meta is not None:
        if meta["architecture"]["name"] != architecture:
            raise ModelError(f"{init_from} is a {meta['architecture']['name']} model, not {architecture}")
        net, _ = load_trainable(init_from, int(params.get("out_channels", 1)))
        return net, f"initialised from the model file {init_from} ({meta.get('name')} {meta.get('version')})"
    ck = torch.load(init_from, map_location="cpu", weights_only=True)
    net = build_model(architecture, **params)
    added = load_widening_head(net, ck["best_state"])
    return net, (
        f"initialised from the best weights of {init_from} (epoch {ck['best_epoch']}, "
        f"val score {ck['best_iou']:.4f})" + (f", {added} new output channels" if added else "")
    )
