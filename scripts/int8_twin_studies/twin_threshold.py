# ruff: noqa: E402, E741, N803, N806
"""Rule 10 (models/int8_calibration_rule.md): fidelity of the int8 twin's mask (p >= t) to fp32
TorchScript's (p >= 0.6) on tuning tiles.  Run from the repo root:

    .venv/bin/python scripts/int8_twin_studies/twin_threshold.py > out/int8_study/rule10.json
"""

import glob
import json
import os
import sys
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from roof_detector.core.model_io import load_model
from roof_detector.core.geo import pixel_size_m
from roof_detector.core.inference import read_tiles
from roof_detector.core.raster_source import open_source
from roof_detector.core.tiling import Tile, model_grid

D = os.environ.get("ROOF_DATA", "../shared/data")
fp32 = load_model(None, "cpu", backend="torch")
int8 = load_model(None, "cpu")
assert int8.extra.get("backend") == "onnxruntime", int8.extra
T = fp32.tile_size_px
print("tile", T, "thr", fp32.threshold, "int8 thr", int8.threshold, file=sys.stderr)

tiles, names = [], []
for area in (1, 2, 3, 5):
    src, _ = open_source(f"{D}/oam/area{area}/ortho_z19.tif")
    px = pixel_size_m(src.crs_wkt, src.transform, src.width, src.height)
    g = model_grid(src.transform, src.width, src.height, px, fp32.gsd_m)
    stride = T - fp32.overlap_px
    for r in range(T // 2, g.height_px - T, stride):
        for c in range(T // 2, g.width_px - T, stride):
            t = Tile(0, c, r, T, T, (c, r, c + T, r + T))
            rgb, valid = read_tiles(src, g, [t], T)
            if valid.mean() >= 0.9:
                tiles.append(rgb[0])
                names.append(f"oam{area}")
    src.close()


def png(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


for p in sorted(glob.glob(f"{D}/chips/inria/val/images/*.png")):
    tiles.append(png(p)[:, :T, :T])
    names.append("inria_val")
rng = np.random.default_rng(0)
for p in sorted(glob.glob(f"{D}/chips/dubai/images/*.jpg")):
    a = png(p)
    h, w = a.shape[1:]
    if h < T or w < T:
        continue
    r, c = rng.integers(0, h - T + 1), rng.integers(0, w - T + 1)
    tiles.append(a[:, r : r + T, c : c + T])
    names.append("dubai")
for p in sorted(glob.glob(f"{D}/chips/spacenet/images/*.png")):
    a = png(p)
    h, w = a.shape[1:]
    for _ in range(2):
        r, c = rng.integers(0, h - T + 1), rng.integers(0, w - T + 1)
        tiles.append(a[:, r : r + T, c : c + T])
        names.append("spacenet")
X = np.ascontiguousarray(np.stack(tiles), dtype=np.float32)
os.makedirs("out/int8_study", exist_ok=True)
np.save("out/int8_study/tiles.npy", X)  # sweep.py reads the same tiles
print("tiles", len(X), {n: names.count(n) for n in set(names)}, file=sys.stderr)

import torch


def probs(m, X):
    out = []
    for i in range(0, len(X), 8):
        x = X[i : i + 8]
        if getattr(m.module, "numpy_io", False):
            y = m.module.run_numpy(x)
        else:
            with torch.inference_mode():
                y = m.module(torch.from_numpy(x)).numpy()
        out.append(y[:, 0])
    return np.concatenate(out)


P32, P8 = probs(fp32, X), probs(int8, X)
np.savez_compressed("out/int8_study/probs.npz", p32=P32, p8=P8, names=np.array(names))
half = np.random.default_rng(1).permutation(len(X)) < len(X) // 2  # A: True
ts = np.round(np.arange(0.40, 0.801, 0.01), 2)
ref = P32 >= 0.6


def fid(sel, t):
    m = P8[sel] >= t
    r = ref[sel]
    return float((m & r).sum() / max(1, (m | r).sum()))


res = {
    "n": int(len(X)),
    "nA": int(half.sum()),
    "A": {str(t): round(fid(half, t), 5) for t in ts},
    "B": {str(t): round(fid(~half, t), 5) for t in ts},
    "all": {str(t): round(fid(np.ones(len(X), bool), t), 5) for t in ts},
}
d = P8 - P32
band = (P32 > 0.4) & (P32 < 0.8)
res["mean_diff_band"] = float(d[band].mean())
res["mean_diff_all"] = float(d.mean())
print(json.dumps(res))
