# ruff: noqa: E402
"""Rule 16 (models/int8_calibration_rule.md): a twin with 7-bit weights, exact on every CPU.
Fidelity to fp32 TorchScript on rule 10's 130 tuning tiles (run twin_threshold.py first; the
calibration and quantisation are sweep.py's) and speed against the fp32 export and the shipped
twin.  From the repo root:

    .venv/bin/python scripts/int8_twin_studies/exact_twin.py
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: I001 - the shared set-up: fp32 export, calibration tiles, quantisation

from roof_detector.core.model_io import load_model
from roof_detector.core.onnx_twin import OnnxModule, int8_saturation


def fidelity(module):
    """Building IoU, pooled over the 130 tiles, between the module's mask and fp32's."""
    x = sweep.tiles()
    p = np.concatenate([module.run_numpy(x[i : i + 8])[:, 0] for i in range(0, len(x), 8)])
    a = p >= 0.6
    return round(float((a & sweep.ref).sum() / (a | sweep.ref).sum()), 5)


def speed(modules, rounds=3, batches=4):
    """Median tiles/s of each module, batch 8, alternating."""
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


cand = OnnxModule(str(sweep.quant([], sweep.W / "r7.onnx", reduce_range=True)))
remade8 = OnnxModule(str(sweep.quant([], sweep.W / "r8.onnx")))
shipped = OnnxModule("models/roof_unet.onnx")
exported = load_model(None, "cpu")  # the fp32 export where int8 saturates
out = {
    "cpu_int8": int8_saturation() or "exact",
    "calibration_tiles": int(len(sweep.cal_tiles)),
    "fidelity": {
        "r7_candidate": fidelity(cand),
        "r8_remade_here": fidelity(remade8),
        "shipped_twin_here": fidelity(shipped),
    },
    "speed_tiles_per_s": speed({"r7_candidate": cand, "fp32_export": exported.module, "shipped_twin": shipped}),
    "fp32_backend": exported.extra.get("onnx_precision"),
}
print(json.dumps(out))
