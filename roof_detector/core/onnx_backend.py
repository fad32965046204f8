"""ONNX Runtime as the CPU backend of a model file.

On CPU, ONNX Runtime runs our U-Nets several times faster than TorchScript
(see the README's performance section, ``python -m devtools bench``):
its fused depthwise-convolution kernels suit the EfficientNet encoder. The
TorchScript file stays the one format users handle; the ONNX graph is
derived from it on first use, checked against TorchScript on a random batch
(max abs difference <= 1e-3) and cached by the model file's hash, so the
next run starts at once.

The ONNX graph is exported from the Python network (rebuilt from the file's
architecture metadata and weights), because the TorchScript exporter cannot
export ``interpolate`` with scale factors from a loaded script module.
Models of other architectures stay on TorchScript.

``devtools/onnx_twin.py`` (the release step ``make onnx-twin``) writes the
same graph as a model file's shipped ONNX twin (fp32, or int8 statically
quantised on calibration imagery), checked against TorchScript;
:mod:`.onnx_twin` loads it without torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .onnx_twin import OnnxModule, onnxruntime_available
from .torchscript import jit_load
from .temp_files import remove_stale, temp_path
from .unet import ARCHITECTURES, ExportWrapper, build_model

__all__ = ["OnnxModule", "onnxruntime_available", "export_onnx", "onnx_module_for"]

AGREEMENT_TOL = 1e-3


def cache_dir() -> Path:
    """Where derived ONNX files live: $ROOF_DETECTOR_CACHE or ~/.cache/roof_detector/onnx."""
    base = os.environ.get("ROOF_DETECTOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "roof_detector"
    )
    return Path(base) / "onnx"


def python_network(script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> torch.nn.Module:
    """The Python network of a model file, with the file's weights, normalisation and sigmoid."""
    arch = meta["architecture"]
    net = build_model(arch["name"], **arch.get("params", {}))
    state = {k[len("net.") :]: v for k, v in script.state_dict().items() if k.startswith("net.")}
    missing, _ = net.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"weights do not match architecture {arch['name']!r} ({len(missing)} tensors missing)")
    norm = meta["normalization"]
    return ExportWrapper(net, norm["mean"], norm["std"]).eval()


def _file_hash(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def export_onnx(model_path: str, meta: Dict[str, Any], script: Optional[torch.jit.ScriptModule] = None) -> str:
    """ONNX file for a model file (exported once, then taken from the cache)."""
    out = cache_dir() / f"{_file_hash(model_path)}.onnx"
    if out.exists():
        return str(out)
    if meta["architecture"]["name"] not in ARCHITECTURES:
        raise ValueError(f"architecture {meta['architecture']['name']!r} has no ONNX export")
    script = script if script is not None else _load_script(model_path)
    _export_graph(python_network(script, meta), int(meta["tile_size_px"]), out)
    return str(out)


def _load_script(model_path: str) -> torch.jit.ScriptModule:
    return jit_load(model_path).eval()


def _export_graph(wrapper: torch.nn.Module, tile: int, out: Path) -> None:
    """Export ``wrapper`` to ``out`` (atomically), dynamic batch and tile size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(str(out), ".onnx")  # an export killed by SIGTERM / kill -9
    tmp = temp_path(str(out), ".onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (torch.rand(2, 3, tile, tile),),
                tmp,
                input_names=["image"],
                output_names=["probability"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={
                    "image": {0: "batch", 2: "height", 3: "width"},
                    "probability": {0: "batch", 2: "height", 3: "width"},
                },
            )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_module_for(model_path: str, meta: Dict[str, Any], script: torch.jit.ScriptModule) -> OnnxModule:
    """An ONNX Runtime module for the model, verified to agree with TorchScript within 1e-3."""
    try:
        return _verified(OnnxModule(export_onnx(model_path, meta, script)), script, meta)
    except Exception:  # noqa: BLE001 - a corrupt or stale cache entry: rebuild it once, not fall back forever
        cached = cache_dir() / f"{_file_hash(model_path)}.onnx"
        if not cached.exists():
            raise
        cached.unlink()
        return _verified(OnnxModule(export_onnx(model_path, meta, script)), script, meta)


def _verified(module: OnnxModule, script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> OnnxModule:
    """``module`` when it agrees with TorchScript within :data:`AGREEMENT_TOL` on a seeded batch."""
    from .interruptible import call_interruptibly

    tile = int(meta["tile_size_px"])
    x = torch.rand(2, 3, tile, tile, generator=torch.Generator().manual_seed(0))

    def reference() -> torch.Tensor:
        with torch.inference_mode():
            return script(x)

    # Both run the model file's code, which may never return: on threads Ctrl-C can leave.
    ref = call_interruptibly(reference)
    diff = float((call_interruptibly(lambda: module(x), stop=module.stop_runs) - ref).abs().max())
    if not diff <= AGREEMENT_TOL:
        raise ValueError(f"ONNX Runtime output differs from TorchScript by {diff:.2e}")
    return module


def _exportable(script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> torch.nn.Module:
    """The module to export: the Python network for our architectures, else the script module itself."""
    if meta["architecture"]["name"] in ARCHITECTURES:
        return python_network(script, meta)
    return script
