# ruff: noqa: E402, E741, N803, N806
"""Rule 12 (models/int8_calibration_rule.md): quantisation-aware distillation of the int8 twin's
weights.  From the repo root, after twin_threshold.py (it writes the 130 tuning tiles):

    .venv/bin/python scripts/int8_twin_studies/qat_distill.py sim      # simulator vs the real twin
    .venv/bin/python scripts/int8_twin_studies/qat_distill.py train    # 45 min, log + checkpoints
    .venv/bin/python scripts/int8_twin_studies/qat_distill.py eval     # base and candidate twins

Work files in out/int8_study/qat/ (ignored).
"""

import glob
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from roof_detector.core.model_io import BUNDLED_MODEL_PATH, read_metadata, save_model
from roof_detector.core.training.export import load_trainable
from roof_detector.core.unet import ExportWrapper
from devtools.onnx_twin_cli import sample_tiles

D = os.environ.get("ROOF_DATA", "../shared/data")
W = Path("out/int8_study/qat")
W.mkdir(parents=True, exist_ok=True)
META = read_metadata(BUNDLED_MODEL_PATH)
T = int(META["tile_size_px"])
THR = float(META["threshold"])
MEAN = torch.tensor(META["normalization"]["mean"]).view(1, 3, 1, 1)
STD = torch.tensor(META["normalization"]["std"]).view(1, 3, 1, 1)
torch.set_num_threads(2)
torch.manual_seed(0)


from devtools.int8_distill import (
    TwinSimulator,
    distill,
    distillation_pool as _pool,
    fold_batchnorm as fold_bn,
)


class Sim(TwinSimulator):
    """The study's handle on the simulator: ``forward(x, quant)``, ``exact`` keys for attribution."""

    def __init__(self, net):
        super().__init__(net, META["normalization"]["mean"], META["normalization"]["std"])
        self.exact = set()

    def _q(self, key, x, fixed=None):
        if key in self.exact and self._mode == "quant":
            return x
        return super()._q(key, x, fixed)

    def forward(self, x, quant=True):
        if "weights" in self.exact and quant:
            import devtools.int8_distill as d

            keep, d.fake_quant_weight = d.fake_quant_weight, lambda w: w
            try:
                return self.logits(x, quant)
            finally:
                d.fake_quant_weight = keep
        return self.logits(x, quant)

    def run(self, x):
        return self._run(x)


def teacher_and_student():
    teacher, _ = load_trainable(BUNDLED_MODEL_PATH)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, _ = load_trainable(BUNDLED_MODEL_PATH)
    fold_bn(student).eval()
    return teacher, student


def calibration_batches():
    f = W / "calibration.npy"
    if not f.exists():
        tiles = sample_tiles([f"{D}/oam/area{a}/ortho_z19.tif" for a in (1, 2, 3, 5)], META, 64)
        np.save(f, tiles)
    tiles = np.load(f)
    return [tiles[i : i + 8] for i in range(0, len(tiles), 8)]


def check_split():
    """Rule 10's 130 tiles and which of them are check tiles (scenes never distilled on)."""
    X = np.load("out/int8_study/tiles.npy")
    names = list(np.load("out/int8_study/probs.npz")["names"])
    dubai = sorted(glob.glob(f"{D}/chips/dubai/images/*.jpg"))
    dubai = [p for p in dubai if min(Image.open(p).size) >= T]
    is_check, k = [], 0
    for n in names:
        if n == "dubai":
            src_tile = int(os.path.basename(dubai[k]).split("_")[0][4:])
            is_check.append(src_tile >= 5)
            k += 1
        else:
            is_check.append(n in ("oam3", "oam5", "inria_val", "spacenet"))
    assert k == len(dubai), (k, len(dubai))
    return X, np.array(names), np.array(is_check)


def fidelity(mask, ref):
    return float((mask & ref).sum() / max(1, (mask | ref).sum()))


@torch.no_grad()
def sim_probs(sim, X, quant=True):
    sim.net.eval()
    return np.concatenate(
        [torch.sigmoid(sim.forward(torch.from_numpy(X[i : i + 8]), quant))[:, 0].numpy() for i in range(0, len(X), 8)]
    )


def distillation_pool():
    f = W / "pool.npy"
    if not f.exists():
        np.save(f, _pool(D, T, float(META["gsd_m"])))
    return np.load(f)


# --- the three steps -----------------------------------------------------------------------------


def twin_probs(path, X):
    from roof_detector.core.onnx_twin import OnnxModule

    m = OnnxModule(str(path))
    return np.concatenate([m.run_numpy(np.ascontiguousarray(X[i : i + 8]))[:, 0] for i in range(0, len(X), 8)])


def cmd_sim():
    """How closely the simulated student tracks the shipped twin (before any training)."""
    X, names, chk = check_split()
    P32 = np.load("out/int8_study/probs.npz")["p32"]
    P8 = twin_probs(Path(BUNDLED_MODEL_PATH).with_suffix(".onnx"), X)
    _, student = teacher_and_student()
    sim = Sim(student)
    sim.calibrate(calibration_batches())
    PF = sim_probs(sim, X, quant=False)
    PS = sim_probs(sim, X, quant=True)
    ref = P32 >= THR
    out = {
        "tiles": int(len(X)),
        "check_tiles": int(chk.sum()),
        "folded_fp32_max_abs_diff": float(np.abs(PF - P32).max()),
        "fidelity_twin_check": fidelity((P8 >= THR)[chk], ref[chk]),
        "fidelity_sim_check": fidelity((PS >= THR)[chk], ref[chk]),
        "fidelity_twin_all": fidelity(P8 >= THR, ref),
        "fidelity_sim_all": fidelity(PS >= THR, ref),
        "sim_vs_twin_iou": fidelity(PS >= THR, P8 >= THR),
        "sim_vs_twin_mean_abs_p": float(np.abs(PS - P8).mean()),
        "fp32_vs_twin_mean_abs_p": float(np.abs(P32 - P8).mean()),
    }
    print(json.dumps(out, indent=1))


def cmd_monitor():
    """The simulated student's fidelity on the distillation scenes' tuning tiles only (never the check)."""
    X, names, chk = check_split()
    ref = np.load("out/int8_study/probs.npz")["p32"][~chk] >= THR
    _, student = teacher_and_student()
    sims = {}
    for name in ("start", "now"):
        if name == "now":
            student.load_state_dict(torch.load(W / "student.pt"))
        sim = Sim(student)
        sim.calibrate(calibration_batches())
        sims[name] = round(fidelity(sim_probs(sim, X[~chk]) >= THR, ref), 5)
    print(json.dumps(sims))


def cmd_attribute():
    """Diagnosis, not a rule: the simulated twin's fidelity with one quantised tensor left exact at a
    time (distillation scenes' tuning tiles only, never the check tiles)."""
    X, names, chk = check_split()
    ref = np.load("out/int8_study/probs.npz")["p32"][~chk] >= THR
    _, student = teacher_and_student()
    sim = Sim(student)
    sim.calibrate(calibration_batches())
    keys = ["weights", "stem"] + list(sim.ranges)
    base = fidelity(sim_probs(sim, X[~chk]) >= THR, ref)
    gains = {}
    for k in keys:
        sim.exact = {k}
        gains[k] = round(fidelity(sim_probs(sim, X[~chk]) >= THR, ref) - base, 5)
    sim.exact = set()
    print(json.dumps({"base": round(base, 5), "gains": dict(sorted(gains.items(), key=lambda kv: -kv[1]))}, indent=0))


def cmd_train14():
    """Rule 14: rule 12 at Adam 1e-6 with the BN scales frozen."""
    distill(
        BUNDLED_MODEL_PATH,
        str(W / "adapted14.pt"),
        distillation_pool(),
        calibration_batches(),
        constant_steps=0,
        lr=1e-6,
        train_bn_scale=False,
        log=lambda m: print(m, file=open(W / "train14.log", "a"), flush=True),
    )


def cmd_eval14():
    """Rule 14: base and candidate twins."""
    res = twin_fidelities({"base": BUNDLED_MODEL_PATH, "candidate14": W / "adapted14.pt"})
    res["gain_check"] = round(res["candidate14"]["check"] - res["base"]["check"], 5)
    res["adopt"] = res["gain_check"] >= 0.005
    print(json.dumps(res, indent=1))


def cmd_train():
    """Rule 12's run repeated with devtools.int8_distill's defaults (the run itself timed 10 steps, then 1,786)."""
    distill(
        BUNDLED_MODEL_PATH,
        str(W / "adapted.pt"),
        distillation_pool(),
        calibration_batches(),
        log=lambda m: print(m, file=open(W / "train.log", "a"), flush=True),
    )


# --- rule 13: range balancing at the decoder's concatenations -----------------------------------


def block_key(e, j):
    """The Sim range key of encoder block j's output."""
    return f"b{j}a" if e._blocks[j].residual else f"b{j}p"


@torch.no_grad()
def balance_concats(net, batches):
    """Scale each decoder stage's upsampled half so its calibrated range fills the skip's (exact in fp32).
    Returns the factors s_i."""
    e = net.encoder
    sim = Sim(net)
    sim.calibrate(batches)
    skips = [e.skip_ids[3 - i] for i in range(4)]  # the skip each stage concatenates
    factors = []
    for i, blk in enumerate(net.decoder):
        if i == 0:
            lo, hi = sim.ranges[block_key(e, e.skip_ids[4])]
            bn = e._blocks[e.skip_ids[4]]._bn2
        else:
            lo, hi = sim.ranges[f"d{i - 1}2"]
            bn = net.decoder[i - 1].conv2[1]
        slo, shi = sim.ranges[block_key(e, skips[i])]
        cand = [shi / hi] if hi > 0 else []
        cand += [slo / lo] if lo < 0 else []
        s_i = max(1.0, min(cand))  # never shrink: that would coarsen the decoder half
        bn.weight.mul_(s_i)
        bn.bias.mul_(s_i)
        conv = blk.conv1[0]
        c_y = conv.in_channels - e._blocks[skips[i]]._bn2.num_features
        conv.weight[:, :c_y] /= s_i
        factors.append(round(s_i, 4))
    return factors


def twin_fidelities(models, rebuild=True):
    """{name: {check, distill_scenes, all}} of the int8 twins of ``models`` ({name: model file}), each
    quantised as `make onnx-twin` does."""
    from devtools.onnx_twin import make_twin

    X, names, chk = check_split()
    ref = np.load("out/int8_study/probs.npz")["p32"] >= THR
    cal = calibration_batches()
    res = {}
    for name, model in models.items():
        out = W / f"{name}.onnx"
        if rebuild or not out.exists():
            make_twin(str(model), str(out), "int8", cal, np.concatenate(cal)[:16])
        P = twin_probs(out, X) >= THR
        res[name] = {
            "check": round(fidelity(P[chk], ref[chk]), 5),
            "distill_scenes": round(fidelity(P[~chk], ref[~chk]), 5),
            "all": round(fidelity(P, ref), 5),
        }
    return res


def cmd_balance():
    """Rule 13: base and balanced twins, fidelity on the check tiles and on all 130."""
    X, names, chk = check_split()
    P32 = np.load("out/int8_study/probs.npz")["p32"]
    net, _ = load_trainable(BUNDLED_MODEL_PATH)
    net.eval()
    factors = balance_concats(net, calibration_batches())
    path = W / "balanced.pt"
    save_model(ExportWrapper(net, META["normalization"]["mean"], META["normalization"]["std"]), str(path), dict(META))
    with torch.no_grad():
        pb = np.concatenate(
            [
                torch.sigmoid(net((torch.from_numpy(X[i : i + 8]) - MEAN) / STD))[:, 0].numpy()
                for i in range(0, len(X), 8)
            ]
        )
    res = {"factors": factors, "fp32_max_abs_diff": float(np.abs(pb - P32).max())}
    res.update(twin_fidelities({"base": BUNDLED_MODEL_PATH, "balanced": path}, rebuild=False))
    res["gain_check"] = round(res["balanced"]["check"] - res["base"]["check"], 5)
    res["gain_all"] = round(res["balanced"]["all"] - res["base"]["all"], 5)
    res["adopt"] = res["fp32_max_abs_diff"] <= 1e-4 and res["gain_check"] >= 0.005 and res["gain_all"] >= 0.003
    print(json.dumps(res, indent=1))


def cmd_eval():
    """Rule 12: base and candidate twins."""
    res = twin_fidelities({"base": BUNDLED_MODEL_PATH, "candidate": W / "adapted.pt"})
    res["gain_check"] = round(res["candidate"]["check"] - res["base"]["check"], 5)
    res["adopt"] = res["gain_check"] >= 0.005
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    {
        "sim": cmd_sim,
        "monitor": cmd_monitor,
        "balance": cmd_balance,
        "attribute": cmd_attribute,
        "train": cmd_train,
        "train14": cmd_train14,
        "eval14": cmd_eval14,
        "eval": cmd_eval,
    }[sys.argv[1]]()
