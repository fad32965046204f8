# ruff: noqa: E402, E741, N803, N806
"""Rule 11 (models/int8_calibration_rule.md): per-Conv sensitivity sweep of the int8 twin
(fidelity to fp32 on rule 10's tiles; run twin_threshold.py first).  From the repo root:

    .venv/bin/python scripts/int8_twin_studies/sweep.py sweep
"""

import json
import os
import sys
import time
from pathlib import Path
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import onnx
from roof_detector.core.model_io import read_metadata, BUNDLED_MODEL_PATH
from roof_detector.core.onnx_backend import _export_graph, _exportable, _load_script
from roof_detector.core.onnx_twin import OnnxModule
from devtools.onnx_twin_cli import sample_tiles

W = Path("out/int8_study/sweep")
W.mkdir(parents=True, exist_ok=True)
meta = read_metadata(BUNDLED_MODEL_PATH)
fp32 = W / "fp32.onnx"
if not fp32.exists():
    _export_graph(_exportable(_load_script(BUNDLED_MODEL_PATH), meta), int(meta["tile_size_px"]), fp32)
pre = W / "pre.onnx"
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

if not pre.exists():
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
O = os.environ.get("ROOF_DATA", "../shared/data") + "/oam"
cal_tiles = sample_tiles([f"{O}/area{a}/ortho_z19.tif" for a in (1, 2, 3, 5)], meta, 64)
cal = [cal_tiles[i : i + 8] for i in range(0, len(cal_tiles), 8)]
print("calibration tiles", len(cal_tiles), "convs", len(convs), file=sys.stderr)


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(cal)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {"image": np.ascontiguousarray(b, np.float32)}


def quant(exclude, out, reduce_range=False):
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=list(exclude),
        reduce_range=reduce_range,  # 7-bit weights (rule 16)
    )
    return out


z = np.load("out/int8_study/probs.npz")
P32 = z["p32"]
ref = P32 >= 0.6
n = len(P32)
A = np.random.default_rng(1).permutation(n) < n // 2
X = None


def tiles():
    global X
    if X is None:
        # rebuild the same 130 tiles (twin_threshold.py's order) from its cache
        X = np.load("out/int8_study/tiles.npy")
    return X


def fid(path):
    m = OnnxModule(str(path))
    x = tiles()
    p = np.concatenate([m.run_numpy(x[i : i + 8])[:, 0] for i in range(0, len(x), 8)])
    out = {}
    for nm, sel in (("A", A), ("B", ~A)):
        a, r = p[sel] >= 0.6, ref[sel]
        out[nm] = float((a & r).sum() / (a | r).sum())
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sweep":
        res = {}
        t0 = time.time()
        base = fid(quant([], W / "base.onnx"))
        res["__base__"] = base
        print("base", base, round(time.time() - t0, 1), file=sys.stderr)
        for i, c in enumerate(convs):
            res[c] = fid(quant([c], W / "one.onnx"))
            print(i, c, res[c], round(time.time() - t0, 1), file=sys.stderr, flush=True)
            json.dump(res, open(W / "sweep.json", "w"), indent=0)
