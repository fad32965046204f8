"""The release step ``make onnx-twin``: write a model file's ONNX twin and check it against TorchScript.

The twin (``<model>.onnx`` beside the model file, see
:mod:`roof_detector.core.onnx_twin`) lets QGIS detect on the CPU with ONNX
Runtime alone. Made here, at release time, with torch and onnxruntime's
quantisation tools; the plugin only reads it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch

from roof_detector.core.model_io import read_metadata
from roof_detector.core.onnx_backend import AGREEMENT_TOL, _export_graph, _exportable, _load_script
from roof_detector.core.onnx_twin import AGREEMENT_KEY, META_KEY, PRECISION_KEY, SOURCE_KEY, OnnxModule, file_sha256


def make_twin(
    model_path: str,
    out_path: Optional[str] = None,
    precision: str = "fp32",
    calibration: Optional[Iterable[np.ndarray]] = None,
    check_tiles: Optional[np.ndarray] = None,
    max_abs_diff: float = AGREEMENT_TOL,
    min_mask_agreement: float = 0.99,
    weights_from: Optional[str] = None,
) -> Dict[str, Any]:
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

    ``weights_from``: a model file distilled from ``model_path`` for int8
    (:mod:`devtools.int8_distill`) whose network is quantised instead; the twin
    is still ``model_path``'s (its metadata, its file hash, checked against its
    TorchScript) and records the weights' hash (``weights``).
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, not {precision!r}")
    if weights_from and precision != "int8":
        raise ValueError("distilled weights are for the int8 twin only")
    meta = read_metadata(model_path)
    out = Path(out_path) if out_path else Path(model_path).with_suffix(".onnx")
    script = _load_script(model_path)
    exported, weights = _distilled(weights_from, model_path, meta) if weights_from else (script, None)
    tile = int(meta["tile_size_px"])
    with tempfile.TemporaryDirectory(
        prefix="roofdet-twin-", dir=str(out.parent) if out.parent.exists() else None
    ) as work:
        graph = Path(work) / "fp32.onnx"
        _export_graph(_exportable(exported, meta), tile, graph)
        calibrated = None
        if precision == "int8":
            graph, calibrated = _int8_graph(graph, Path(work) / "int8.onnx", calibration)
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
        figures = {
            "precision": precision,
            "max_abs_diff": round(diff, 6),
            "mask_agreement": round(agree / n, 6),
            "check_pixels": n,
        }
        if precision == "fp32" and not diff <= max_abs_diff:
            raise ValueError(f"ONNX Runtime output differs from TorchScript by {diff:.2e} (> {max_abs_diff:.0e})")
        if precision == "int8" and not agree / n >= min_mask_agreement:
            raise ValueError(
                f"int8 masks agree with TorchScript on {agree / n:.4f} of the pixels (< {min_mask_agreement})"
            )
        set_properties(
            graph,
            {
                META_KEY: json.dumps(meta, indent=1),
                SOURCE_KEY: file_sha256(model_path),
                PRECISION_KEY: precision,
                AGREEMENT_KEY: json.dumps(figures),
                **({WEIGHTS_KEY: json.dumps(weights)} if weights else {}),
                **({CALIBRATION_KEY: json.dumps(calibrated)} if calibrated else {}),
            },
        )
        os.replace(graph, out)
    os.chmod(out, 0o644)
    figures["path"] = str(out)
    figures["size_mb"] = round(out.stat().st_size / 1e6, 2)
    return figures


WEIGHTS_KEY = "weights"
CALIBRATION_KEY = "calibration"


def _int8_graph(graph: Path, out: Path, calibration) -> tuple:
    """(the int8 graph quantised from ``graph``, the record of its calibration)."""
    if calibration is None:
        raise ValueError("int8 needs calibration tiles")
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    return _quantize_int8(graph, out, batches), calibration_record(batches)


def calibration_record(batches) -> Dict[str, Any]:
    """What an int8 twin's activation ranges came from: the tiles' count and hash, and the GDAL and
    ONNX Runtime that read and quantised them (a twin made today did not reproduce the shipped
    one, and nothing said what its calibration had seen; models/README.md, session 14)."""
    import hashlib

    import onnxruntime
    import rasterio

    digest = hashlib.sha256()
    for b in batches:
        digest.update(np.ascontiguousarray(b, dtype=np.float32).tobytes())
    return {
        "tiles": int(sum(len(b) for b in batches)),
        "tiles_sha256": digest.hexdigest(),
        "gdal": rasterio.__gdal_version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _distilled(weights_from: str, model_path: str, meta: Dict[str, Any]):
    """(TorchScript of ``weights_from``, its record for the twin), refused unless it was distilled from
    ``model_path`` itself."""
    own = read_metadata(weights_from)
    record = own.get("int8_distilled") or {}
    if record.get("teacher_sha256") != file_sha256(model_path):
        raise ValueError(
            f"{weights_from} was not distilled from {model_path} (distil it again after a model change: "
            "devtools.int8_distill)"
        )
    if own["architecture"] != meta["architecture"] or own["tile_size_px"] != meta["tile_size_px"]:
        raise ValueError(f"{weights_from} is not the network of {model_path}")
    return _load_script(weights_from), {"sha256": file_sha256(weights_from), **record}


def set_properties(path: Path, props: Dict[str, str]) -> None:
    """Replace the ONNX file's metadata properties with ``props``."""
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
    quantize_static(
        str(pre),
        str(dst),
        Reader(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return dst
