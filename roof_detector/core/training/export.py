"""Turning a trained network into a model file, and a model file back into a trainable network."""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any, Dict, Tuple

import torch

from ..errors import ModelError
from ..model_io import read_metadata, save_model
from ..unet import ExportWrapper, build_model
from .trainer import TrainConfig, TrainResult, describe_network


def export_model(net: torch.nn.Module, cfg: TrainConfig, path: str, threshold: float,
                 extra: Dict[str, Any]) -> str:
    """Save ``net`` as TorchScript (normalisation and sigmoid inside) with full metadata."""
    net = net.cpu().eval()
    meta: Dict[str, Any] = {
        "name": extra.pop("name", "roof-detector-unet"),
        "version": extra.pop("version", "1.0.0"),
        "architecture": {"name": cfg.architecture, "params": dict(cfg.architecture_params),
                         **describe_network(net, cfg.tile_px)},
        "bands": ["red", "green", "blue"],
        "normalization": {"input_range": [0, 1], "mean": list(cfg.mean), "std": list(cfg.std),
                          "applied_in_model": True},
        "output": "probability",
        "gsd_m": cfg.gsd_m,
        "tile_size_px": cfg.tile_px,
        "overlap_px": cfg.overlap_px,
        "threshold": float(threshold),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
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
    }


def load_trainable(path: str) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the Python network of a model file (for fine-tuning) and return it with its metadata."""
    meta = read_metadata(path)
    arch = meta["architecture"]
    try:
        net = build_model(arch["name"], **arch.get("params", {}))
    except ValueError as exc:
        raise ModelError(f"{path}: cannot fine-tune this model ({exc})") from None
    script = torch.jit.load(path, map_location="cpu")
    state = {k[len("net."):]: v for k, v in script.state_dict().items() if k.startswith("net.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing:
        raise ModelError(f"{path}: weights do not match architecture {arch['name']!r} "
                         f"({len(missing)} tensors missing)")
    return net, meta
