"""ONNX Runtime as the CPU backend of a model file.

On CPU, ONNX Runtime runs our U-Nets several times faster than TorchScript
(see the README's performance section, ``python -m roof_detector bench``):
its fused depthwise-convolution kernels suit the EfficientNet encoder. The
TorchScript file stays the one format users handle; the ONNX graph is
derived from it on first use, checked against TorchScript on a random batch
(max abs difference <= 1e-3) and cached by the model file's hash, so the
next run starts at once.

The ONNX graph is exported from the Python network (rebuilt from the file's
architecture metadata and weights), because the TorchScript exporter cannot
export ``interpolate`` with scale factors from a loaded script module.
Models of other architectures stay on TorchScript.

:func:`make_twin` writes the same graph as a model file's shipped ONNX
twin (fp32, or int8 statically quantised on calibration imagery), checked
against TorchScript; :mod:`.onnx_twin` loads it without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch

from .onnx_twin import (AGREEMENT_KEY, META_KEY, PRECISION_KEY, SOURCE_KEY, OnnxModule, file_sha256,
                        onnxruntime_available)
from .unet import ARCHITECTURES, ExportWrapper, build_model

__all__ = ["OnnxModule", "onnxruntime_available", "export_onnx", "onnx_module_for", "make_twin"]

AGREEMENT_TOL = 1e-3


def cache_dir() -> Path:
    """Where derived ONNX files live: $ROOF_DETECTOR_CACHE or ~/.cache/roof_detector/onnx."""
    base = os.environ.get("ROOF_DETECTOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "roof_detector")
    return Path(base) / "onnx"


def python_network(script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> torch.nn.Module:
    """The Python network of a model file, with the file's weights, normalisation and sigmoid."""
    arch = meta["architecture"]
    net = build_model(arch["name"], **arch.get("params", {}))
    state = {k[len("net."):]: v for k, v in script.state_dict().items() if k.startswith("net.")}
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
    from .model_io import _torch_jit_load

    return _torch_jit_load(model_path).eval()


def _export_graph(wrapper: torch.nn.Module, tile: int, out: Path) -> None:
    """Export ``wrapper`` to ``out`` (atomically), dynamic batch and tile size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=str(out.parent))
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (torch.rand(2, 3, tile, tile),), tmp, input_names=["image"],
                              output_names=["probability"], opset_version=17, dynamo=False,
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            "probability": {0: "batch", 2: "height", 3: "width"}})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_module_for(model_path: str, meta: Dict[str, Any], script: torch.jit.ScriptModule) -> OnnxModule:
    """An ONNX Runtime module for the model, verified to agree with TorchScript within 1e-3."""
    module = OnnxModule(export_onnx(model_path, meta, script))
    tile = int(meta["tile_size_px"])
    x = torch.rand(2, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = script(x)
    diff = float((module(x) - ref).abs().max())
    if not diff <= AGREEMENT_TOL:
        raise ValueError(f"ONNX Runtime output differs from TorchScript by {diff:.2e}")
    return module


def _exportable(script: torch.jit.ScriptModule, meta: Dict[str, Any]) -> torch.nn.Module:
    """The module to export: the Python network for our architectures, else the script module itself."""
    if meta["architecture"]["name"] in ARCHITECTURES:
        return python_network(script, meta)
    return script


def make_twin(model_path: str, out_path: Optional[str] = None, precision: str = "fp32",
              calibration: Optional[Iterable[np.ndarray]] = None, check_tiles: Optional[np.ndarray] = None,
              max_abs_diff: float = AGREEMENT_TOL, min_mask_agreement: float = 0.99) -> Dict[str, Any]:
    """Write the ONNX twin of ``model_path`` (default: beside it) and check it against TorchScript.

    ``precision`` ``fp32``: the exported graph, which must agree with
    TorchScript within ``max_abs_diff`` on random tiles and on
    ``check_tiles``. ``int8``: the graph statically quantised (QDQ, per-channel
    weights) with activation ranges from ``calibration`` (float32 N x 3 x T x T
    RGB batches in [0, 1]); its binary masks at the model threshold must agree
    with TorchScript's on at least ``min_mask_agreement`` of the pixels of
    ``check_tiles`` (its held-out quality is measured by ``score``, not here).
    Returns the check's figures; raises ValueError when the check fails
    (no twin is left behind then).
    """
    from .model_io import read_metadata

    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, not {precision!r}")
    meta = read_metadata(model_path)
    out = Path(out_path) if out_path else Path(model_path).with_suffix(".onnx")
    script = _load_script(model_path)
    tile = int(meta["tile_size_px"])
    with tempfile.TemporaryDirectory(prefix="roofdet-twin-", dir=str(out.parent) if out.parent.exists() else None) as work:
        graph = Path(work) / "fp32.onnx"
        _export_graph(_exportable(script, meta), tile, graph)
        if precision == "int8":
            if calibration is None:
                raise ValueError("int8 needs calibration tiles")
            graph = _quantize_int8(graph, Path(work) / "int8.onnx", calibration)
        module = OnnxModule(str(graph))
        x = torch.rand(2, 3, tile, tile, generator=torch.Generator().manual_seed(0)).numpy()
        batches = [x] + ([np.asarray(check_tiles, dtype=np.float32)] if check_tiles is not None else [])
        thr = float(meta["threshold"])
        diff, agree, n = 0.0, 0, 0
        for b in batches:
            with torch.inference_mode():
                ref = script(torch.from_numpy(b)).numpy()
            got = module.run_numpy(b)
            diff = max(diff, float(np.abs(got - ref).max()))
            agree += int(((got >= thr) == (ref >= thr)).sum())
            n += ref.size
        figures = {"precision": precision, "max_abs_diff": round(diff, 6), "mask_agreement": round(agree / n, 6),
                   "check_pixels": n}
        if precision == "fp32" and not diff <= max_abs_diff:
            raise ValueError(f"ONNX Runtime output differs from TorchScript by {diff:.2e} (> {max_abs_diff:.0e})")
        if precision == "int8" and not agree / n >= min_mask_agreement:
            raise ValueError(f"int8 masks agree with TorchScript on {agree / n:.4f} of the pixels "
                             f"(< {min_mask_agreement})")
        _set_properties(graph, {META_KEY: json.dumps(meta, indent=1), SOURCE_KEY: file_sha256(model_path),
                                PRECISION_KEY: precision, AGREEMENT_KEY: json.dumps(figures)})
        os.replace(graph, out)
    os.chmod(out, 0o644)
    figures["path"] = str(out)
    figures["size_mb"] = round(out.stat().st_size / 1e6, 2)
    return figures


def _set_properties(path: Path, props: Dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


class _Calibration:
    """onnxruntime's CalibrationDataReader over our float32 batches (defined lazily: onnxruntime.quantization)."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._it = iter(batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {"image": np.ascontiguousarray(b, dtype=np.float32)}


def _quantize_int8(src: Path, dst: Path, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights, u8 activations) with calibrated ranges."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    pre = dst.with_name("pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), Reader(calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return dst
