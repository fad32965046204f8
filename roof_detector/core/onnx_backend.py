"""ONNX Runtime as the CPU backend of a model file.

On CPU, ONNX Runtime runs our U-Nets several times faster than TorchScript
(see the README's performance section, ``python -m devtools bench``):
its fused depthwise-convolution kernels suit the EfficientNet encoder. The
TorchScript file stays the one format users handle; the ONNX graph is
derived from it on first use, checked against TorchScript on a random batch
(max abs difference <= 1e-3) and cached by the model file's hash, with a
record of the check (:mod:`.onnx_cache`), so the next run starts at once,
without torch.

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

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .onnx_cache import entry_path, forget, mark_used, record_verified, remove_unused
from .onnx_twin import OnnxModule, file_sha256, onnxruntime_available
from .torchscript import jit_load
from .temp_files import remove_stale, temp_path
from .unet import ARCHITECTURES, ExportWrapper, build_model

__all__ = ["OnnxModule", "onnxruntime_available", "onnx_module_for"]

AGREEMENT_TOL = 1e-3


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


def _check_exportable(meta: Dict[str, Any]) -> None:
    if meta["architecture"]["name"] not in ARCHITECTURES:
        raise ValueError(f"architecture {meta['architecture']['name']!r} has no ONNX export")


def _load_script(model_path: str) -> torch.jit.ScriptModule:
    return jit_load(model_path).eval()


def _export_graph(wrapper: torch.nn.Module, tile: int, out: Path) -> None:
    """Export ``wrapper`` to ``out`` (atomically), dynamic batch and tile size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(str(out), ".onnx")  # an export killed by SIGTERM / kill -9
    tmp = temp_path(str(out), ".onnx")
    try:
        # torch 2.9+ warns that this exporter is legacy (twice, with tracebacks in QGIS's log panel);
        # the dynamo exporter needs onnxscript, which we do not ship. Nothing a user can act on.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
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


def onnx_module_for(model_path: str, meta: Dict[str, Any], script: torch.jit.ScriptModule) -> Tuple[OnnxModule, str]:
    """An ONNX Runtime module for the model, verified to agree with TorchScript within 1e-3, and
    why it is not cached ("" when it is).

    A cache that cannot be written (read-only home, full disk) costs an export on every load
    (seconds), not ONNX Runtime's speed for the whole detection: the graph is then exported
    into a private temporary folder, loaded, and deleted.
    """
    cached = entry_path(model_path)
    if cached.exists():
        try:
            return _checked(cached, script, meta)
        except Exception:  # noqa: BLE001 - a corrupt or stale entry: rebuilt below, not fallen back from forever
            _remove_quietly(cached)
    _check_exportable(meta)
    problem = _not_writable(cached.parent)
    if not problem:
        try:
            _export_graph(python_network(script, meta), int(meta["tile_size_px"]), cached)
        except OSError as exc:  # full disk, quota
            problem = exc.strerror or str(exc)
        else:
            remove_unused(cached)
    if problem:
        return _verified(_uncached_module(script, meta), script, meta), f"{cached.parent}: {problem}"
    try:
        return _checked(cached, script, meta)
    except Exception:
        _remove_quietly(cached)  # the next load tries again instead of meeting a bad entry
        raise


def _checked(entry: Path, script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> Tuple[OnnxModule, str]:
    """The cache entry's module, checked against TorchScript, and why the check could not be
    recorded ("" when it was: later loads run the entry without torch, :mod:`.onnx_cache`)."""
    forget(entry)  # until it passes again
    checked_sha256 = file_sha256(entry)  # what ONNX Runtime loads next, unless another export replaces it
    module = _verified(OnnxModule(str(entry)), script, meta)
    problem = record_verified(entry, checked_sha256)
    mark_used(entry)
    return module, problem


def _remove_quietly(path: Path) -> None:
    forget(path)
    try:
        path.unlink()
    except OSError:  # a read-only cache: its entry stays, and the export goes elsewhere (below)
        pass


def _not_writable(directory: Path) -> str:
    """Why a file cannot be created in ``directory`` ("" when it can), found by creating one."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = temp_path(str(directory / "write-check"), "")
        with open(probe, "x"):
            pass
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _uncached_module(script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> OnnxModule:
    """The graph exported into a private temporary folder and loaded (ONNX Runtime keeps it in memory)."""
    with tempfile.TemporaryDirectory(prefix="roofdet-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        _export_graph(python_network(script, meta), int(meta["tile_size_px"]), path)
        return OnnxModule(str(path))


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
