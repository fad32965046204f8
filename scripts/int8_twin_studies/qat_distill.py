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
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from roof_detector.core.geo import pixel_size_m
from roof_detector.core.inference import read_tiles
from roof_detector.core.model_io import BUNDLED_MODEL_PATH, read_metadata, save_model
from roof_detector.core.raster_source import open_source
from roof_detector.core.tiling import Tile, model_grid
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


# --- the student: BN folded into convs, twin-like fake quantisation ---------------------------


def conv_bn_pairs(net):
    """(conv, bn) pairs in the order the network runs them."""
    pairs = []
    for mod in net.modules():
        if hasattr(mod, "_conv_stem"):
            pairs.append((mod._conv_stem, mod._bn0))
        if hasattr(mod, "_depthwise_conv"):
            if mod.has_expand:
                pairs.append((mod._expand_conv, mod._bn0))
            pairs += [(mod._depthwise_conv, mod._bn1), (mod._project_conv, mod._bn2)]
        if isinstance(mod, nn.Sequential):
            kids = list(mod)
            for a, b in zip(kids, kids[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((a, b))
    return pairs


@torch.no_grad()
def fold_bn(net):
    """Fold each BatchNorm into its conv; the BN is left as an exact `+ bias` (ONNX export folds it back)."""
    for conv, bn in conv_bn_pairs(net):
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(g.view(-1, 1, 1, 1))
        b = bn.bias - bn.running_mean * g
        if conv.bias is not None:
            b = b + conv.bias * g
            conv.bias.zero_()
        bn.weight.fill_(1.0)
        bn.bias.copy_(b)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    return net


def fq_act(x, lo, hi):
    """ONNX Runtime's u8 asymmetric quantisation of a tensor with range [lo, hi], straight-through."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = max(hi - lo, 1e-8) / 255.0
    zp = float(np.clip(round(-lo / s), 0, 255))
    q = torch.clamp(torch.round(x / s) + zp, 0, 255)
    return x + ((q - zp) * s - x).detach()


def fq_weight(w):
    """Per-output-channel symmetric int8 (scale max|w| / 127, as ONNX Runtime), straight-through."""
    s = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.clamp(torch.round(w / s), -127, 127) * s
    return w + (q - w).detach()


RELU6 = (0.0, 6.0)  # ONNX Runtime quantises a Clip(0, 6) output over its full range


class Sim:
    """The network run as the int8 twin's graph runs it: one fake-quantised copy of each tensor the
    twin quantises (checked against models/roof_unet.onnx's QuantizeLinear nodes), int8 weights."""

    def __init__(self, net):
        self.net = net
        self.convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        self.ranges = {}
        self.mode = "off"  # off | observe | quant

    def q(self, key, x, fixed=None):
        if self.mode == "observe" and fixed is None:
            lo, hi = float(x.min()), float(x.max())
            a, b = self.ranges.get(key, (lo, hi))
            self.ranges[key] = (min(a, lo), max(b, hi))
        elif self.mode == "quant":
            return fq_act(x, *(fixed or self.ranges[key]))
        return x

    def run(self, x):
        net, q = self.net, self.q
        e = net.encoder
        x = q("stem", F.relu6(e._bn0(e._conv_stem(x))), RELU6)
        feats = []
        for i, b in enumerate(e._blocks):
            y = x
            if b.has_expand:
                y = q(f"b{i}e", F.relu6(b._bn0(b._expand_conv(y))), RELU6)
            y = q(f"b{i}d", F.relu6(b._bn1(b._depthwise_conv(y))), RELU6)
            y = q(f"b{i}p", b._bn2(b._project_conv(y)))
            if b.residual:
                y = q(f"b{i}a", y + x)
            x = y
            if i in e.skip_ids:
                feats.append(x)
        y = feats[4]
        for i, (blk, skip) in enumerate(zip(net.decoder, [feats[3], feats[2], feats[1], feats[0]])):
            y = q(f"d{i}c", torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skip], dim=1))
            y = q(f"d{i}1", blk.conv1(y))
            y = q(f"d{i}2", blk.conv2(y))
        y = q("final", net.final.conv1(F.interpolate(y, scale_factor=2.0, mode="nearest")))
        return q("head", net.head(y))

    def forward(self, x, quant=True):
        """Logits of the net on RGB in [0, 1]; int8 weights and activations when `quant`."""
        x = (x - MEAN) / STD
        if not quant:
            self.mode = "off"
            return self.run(x)
        self.mode = "quant"
        x = fq_act(x, -1.0, 1.0)
        saved = [c.weight for c in self.convs]
        try:
            for c in self.convs:
                w = c.weight
                del c.weight
                c.weight = fq_weight(w)
            return self.run(x)
        finally:
            for c, w in zip(self.convs, saved):
                del c.weight
                c.weight = w
            self.mode = "off"

    @torch.no_grad()
    def calibrate(self, batches):
        """MinMax ranges over the calibration batches, on the current fp32 weights (as the quantiser sees them)."""
        self.ranges = {}
        self.mode = "observe"
        self.net.eval()
        for b in batches:
            self.run((torch.from_numpy(b) - MEAN) / STD)
        self.mode = "off"


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


# --- distillation tiles --------------------------------------------------------------------------


def png(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def distillation_pool(per_raster=120, seed=0):
    f = W / "pool.npy"
    if f.exists():
        return np.load(f)
    rng = np.random.default_rng(seed)
    tiles = []
    for area in (1, 2):
        for z in (19, 20, 21):
            src, _ = open_source(f"{D}/oam/area{area}/ortho_z{z}.tif")
            px = pixel_size_m(src.crs_wkt, src.transform, src.width, src.height)
            g = model_grid(src.transform, src.width, src.height, px, float(META["gsd_m"]))
            got, tries = 0, 0
            while got < per_raster and tries < 4000:
                tries += 1
                c, r = int(rng.integers(0, g.width_px - T)), int(rng.integers(0, g.height_px - T))
                rgb, valid = read_tiles(src, g, [Tile(0, c, r, T, T, (c, r, c + T, r + T))], T)
                if valid.mean() >= 0.9:
                    tiles.append(rgb[0])
                    got += 1
            src.close()
            print(f"area {area} z{z}: {got} tiles", file=sys.stderr)
    for p in sorted(glob.glob(f"{D}/chips/inria/train/images/*.png")):
        tiles.append(png(p)[:, :T, :T])
    for p in sorted(glob.glob(f"{D}/chips/dubai/images/*.jpg")):
        if int(os.path.basename(p).split("_")[0][4:]) >= 5:
            continue  # check scenes
        a = png(p)
        h, w = a.shape[1:]
        if h < T or w < T:
            continue
        for _ in range(4):
            r, c = rng.integers(0, h - T + 1), rng.integers(0, w - T + 1)
            tiles.append(a[:, r : r + T, c : c + T])
    pool = np.ascontiguousarray(np.stack(tiles), dtype=np.float32)
    np.save(f, pool)
    print("pool", pool.shape, file=sys.stderr)
    return pool


def augment(x, rng):
    k = int(rng.integers(0, 4))
    x = torch.rot90(x, k, dims=(2, 3))
    if rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


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


def cmd_train(minutes=45.0, lr=1e-5, batch=8):
    teacher, student = teacher_and_student()
    sim = Sim(student)
    cal = calibration_batches()
    sim.calibrate(cal)
    pool = distillation_pool()
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    log = open(W / "train.log", "a")

    def step(i, total):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * i / total)) if total else lr
        x = augment(torch.from_numpy(pool[rng.integers(0, len(pool), batch)]), rng)
        with torch.no_grad():
            target = torch.sigmoid(teacher((x - MEAN) / STD))
        student.eval()  # BN is a folded `+ bias`: no batch statistics
        logits = sim.forward(x, quant=True)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    t0 = time.perf_counter()
    for i in range(10):
        step(0, 0)  # timing steps at lr (part of the run; the schedule starts after them)
    per_step = (time.perf_counter() - t0) / 10
    total = int((minutes * 60 - (time.perf_counter() - t0)) / per_step)
    print(json.dumps({"per_step_s": round(per_step, 3), "steps": total}), file=log, flush=True)
    losses = []
    for i in range(total):
        losses.append(step(i, total))
        if (i + 1) % 250 == 0 or i + 1 == total:
            sim.calibrate(cal)
            torch.save(student.state_dict(), W / "student.pt")
            rec = {"step": i + 1, "loss": round(float(np.mean(losses[-250:])), 6), "min": round((time.perf_counter() - t0) / 60, 1)}
            print(json.dumps(rec), file=log, flush=True)
    save_adapted(student)


def save_adapted(student):
    meta = dict(META)
    meta["int8_distilled"] = "rule 12: weights adapted to int8 by distillation from roof_unet.pt"
    save_model(ExportWrapper(student.eval(), META["normalization"]["mean"], META["normalization"]["std"]), str(W / "adapted.pt"), meta)


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


def cmd_balance():
    """Rule 13: base and balanced twins, fidelity on the check tiles and on all 130."""
    from devtools.onnx_twin import make_twin

    X, names, chk = check_split()
    P32 = np.load("out/int8_study/probs.npz")["p32"]
    ref = P32 >= THR
    cal = calibration_batches()
    check = np.concatenate(cal)[:16]
    net, _ = load_trainable(BUNDLED_MODEL_PATH)
    net.eval()
    factors = balance_concats(net, cal)
    path = W / "balanced.pt"
    save_model(ExportWrapper(net, META["normalization"]["mean"], META["normalization"]["std"]), str(path), dict(META))
    with torch.no_grad():
        pb = np.concatenate([torch.sigmoid(net((torch.from_numpy(X[i : i + 8]) - MEAN) / STD))[:, 0].numpy() for i in range(0, len(X), 8)])
    res = {"factors": factors, "fp32_max_abs_diff": float(np.abs(pb - P32).max())}
    for name, model in (("base", BUNDLED_MODEL_PATH), ("balanced", path)):
        out = W / f"{name}.onnx"
        if not out.exists():
            make_twin(str(model), str(out), "int8", cal, check)
        P = twin_probs(out, X) >= THR
        res[name] = {"check": round(fidelity(P[chk], ref[chk]), 5), "all": round(fidelity(P, ref), 5)}
    res["gain_check"] = round(res["balanced"]["check"] - res["base"]["check"], 5)
    res["gain_all"] = round(res["balanced"]["all"] - res["base"]["all"], 5)
    res["adopt"] = res["fp32_max_abs_diff"] <= 1e-4 and res["gain_check"] >= 0.005 and res["gain_all"] >= 0.003
    print(json.dumps(res, indent=1))


def cmd_eval():
    from devtools.onnx_twin import make_twin

    X, names, chk = check_split()
    P32 = np.load("out/int8_study/probs.npz")["p32"]
    ref = P32 >= THR
    cal = calibration_batches()
    check = np.concatenate(cal)[:16]
    res = {}
    for name, model in (("base", BUNDLED_MODEL_PATH), ("candidate", W / "adapted.pt")):
        out = W / f"{name}.onnx"
        res[name] = {"make_twin": make_twin(str(model), str(out), "int8", cal, check)}
        P = twin_probs(out, X) >= THR
        res[name].update(
            check=round(fidelity(P[chk], ref[chk]), 5),
            distill_scenes=round(fidelity(P[~chk], ref[~chk]), 5),
            all=round(fidelity(P, ref), 5),
        )
    res["gain_check"] = round(res["candidate"]["check"] - res["base"]["check"], 5)
    res["adopt"] = res["gain_check"] >= 0.005
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    {"sim": cmd_sim, "monitor": cmd_monitor, "balance": cmd_balance, "train": cmd_train, "eval": cmd_eval}[sys.argv[1]]()
