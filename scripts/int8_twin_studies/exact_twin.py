# ruff: noqa: E402
"""Rule 16 (models/int8_calibration_rule.md): a twin with 7-bit weights, exact on every CPU.
Fidelity to fp32 TorchScript on rule 10's 130 tuning tiles (run twin_threshold.py first) and
speed against the fp32 export and the shipped twin.  From the repo root:

    .venv/bin/python scripts/int8_twin_studies/exact_twin.py
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from devtools.onnx_twin_cli import sample_tiles
from roof_detector.core.model_io import BUNDLED_MODEL_PATH, load_model, read_metadata
from roof_detector.core.onnx_backend import _export_graph, _exportable, _load_script
from roof_detector.core.onnx_twin import OnnxModule, int8_saturation

W = Path("out/int8_study/exact")
W.mkdir(parents=True, exist_ok=True)
meta = read_metadata(BUNDLED_MODEL_PATH)
fp32 = W / "fp32.onnx"
if not fp32.exists():
    _export_graph(_exportable(_load_script(BUNDLED_MODEL_PATH), meta), int(meta["tile_size_px"]), fp32)
pre = W / "pre.onnx"
if not pre.exists():
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
OAM = os.environ.get("ROOF_DATA", "../shared/data") + "/oam"
cal_tiles = sample_tiles([f"{OAM}/area{a}/ortho_z19.tif" for a in (1, 2, 3, 5)], meta, 64)
cal = [cal_tiles[i : i + 8] for i in range(0, len(cal_tiles), 8)]


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(cal)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {"image": np.ascontiguousarray(b, np.float32)}


def quant(out, reduce_range):
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range,
    )
    return out


X = np.load("out/int8_study/tiles.npy")
ref = np.load("out/int8_study/probs.npz")["p32"] >= 0.6


def fidelity(module):
    p = np.concatenate([module.run_numpy(X[i : i + 8])[:, 0] for i in range(0, len(X), 8)])
    a = p >= 0.6
    return round(float((a & ref).sum() / (a | ref).sum()), 5)


def speed(modules, rounds=3, batches=4):
    x = np.random.default_rng(0).random((8, 3, 256, 256), dtype=np.float32)
    rates = {k: [] for k in modules}
    for m in modules.values():
        m.run_numpy(x)
    for _ in range(rounds):
        for k, m in modules.items():
            t = time.perf_counter()
            for _ in range(batches):
                m.run_numpy(x)
            rates[k].append(8 * batches / (time.perf_counter() - t))
    return {k: round(float(np.median(v)), 1) for k, v in rates.items()}


cand = OnnxModule(str(quant(W / "r7.onnx", True)))
remade8 = OnnxModule(str(quant(W / "r8.onnx", False)))
shipped = OnnxModule("models/roof_unet.onnx")
exported = load_model(None, "cpu")  # the fp32 export where int8 saturates
out = {
    "cpu_int8": int8_saturation() or "exact",
    "calibration_tiles": int(len(cal_tiles)),
    "fidelity": {
        "r7_candidate": fidelity(cand),
        "r8_remade_here": fidelity(remade8),
        "shipped_twin_here": fidelity(shipped),
    },
    "speed_tiles_per_s": speed({"r7_candidate": cand, "fp32_export": exported.module, "shipped_twin": shipped}),
    "fp32_backend": exported.extra.get("onnx_precision"),
}
print(json.dumps(out))
