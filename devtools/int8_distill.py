"""Quantisation-aware distillation for the int8 twin (``models/int8_calibration_rule.md``, rule 12).

ONNX Runtime's static quantisation rounds every weight and activation of the
network; the fp32 weights were never trained to survive that, and the twin's
masks agree with fp32's at a building IoU of ~0.968 on tuning tiles. Here a
copy of the network is trained so that its *quantised* output matches the
fp32 model's (the fp32 model as teacher): the student runs as the twin's graph
runs (:class:`TwinSimulator`), gradients pass the rounding straight through,
and only the student's weights move. ``onnx-twin --weights-from`` quantises
such weights into a twin that is still the teacher's.

Rule 12's run (1,786 steps, 45 minutes on 2 cores, Adam 1e-5) raised the
fidelity on its check tiles from 0.9685 to 0.9768; rule 14's (Adam 1e-6, BN
scales frozen: ``train_bn_scale=False``) to 0.9744, by the same on every tuning
split. The release step's held-out gate refused both twins (object F1 on OAM
area 4 z19 0.352 and 0.385 against fp32's 0.398; it refuses the shipped twin
too with today's outline code), so nothing made here ships: this is the tool
for the next study, not a release step. Adam moves every weight by about the
learning rate per step, and the folded weights span orders of magnitude: at
1e-5 the first steps disturb the network before it settles (a 4-tile check:
the int8 gap grows at 1e-5, shrinks at 1e-6).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RELU6_RANGE = (0.0, 6.0)  # ONNX Runtime quantises a Clip(0, 6) output over its whole range

# Rule 12's run: 10 steps at the full rate (they timed the run), then this many on a cosine
# schedule (as many as 45 minutes allowed on a 2-core Xeon: 1.5 s per step); repeated by
# scripts/int8_twin_studies/qat_distill.py train.
RULE12_STEPS = 1786
RULE12_CONSTANT_STEPS = 10
RULE12_LR = 1e-5


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each BatchNorm of an ``efflite0_unet`` into its conv, as the ONNX export does.

    The BN stays as an exact ``+ bias`` (weight 1, mean 0, variance 1 - eps), so
    the network keeps its structure and its model file; the weights the
    quantiser sees are then the conv's own. The output is unchanged (to float
    rounding). The BN's weight stays trainable, as in rule 12's run: the export
    folds it into the conv again, while :class:`TwinSimulator` rounds the conv's
    weight before it; after that run the BN weights differ from 1 by at most 0.4 %,
    and the twin is judged on ONNX Runtime's own quantisation, not on this one.
    """
    with torch.no_grad():
        for conv, bn in _conv_bn_pairs(net):
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


def _conv_bn_pairs(net: nn.Module):
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
            pairs += [
                (a, b) for a, b in zip(kids, kids[1:]) if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)
            ]
    return pairs


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """ONNX Runtime's unsigned 8-bit quantisation of a tensor calibrated to ``[lo, hi]`` (the range
    widened to hold 0), with straight-through gradients."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zero = float(np.clip(round(-lo / scale), 0, 255))
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    return x + ((q - zero) * scale - x).detach()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's per-output-channel symmetric int8 weights (scale max|w| / 127), straight-through."""
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127.0
    return w + (torch.clamp(torch.round(w / scale), -127, 127) * scale - w).detach()


class TwinSimulator:
    """An ``efflite0_unet`` (BN folded) computed as its int8 twin computes it: one fake-quantised copy
    of each tensor the twin's graph quantises (its QuantizeLinear nodes: every Clip(0, 6) output
    over [0, 6], the project convs' outputs, the residual sums, the decoder's concatenations and
    ReLU outputs, the head's logits) and int8 weights. Untrained, its masks agree with the bundled
    twin's at a building IoU of 0.984 (a test pins it against ONNX Runtime's twin of the bundled model)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        self.net = net
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        self.ranges: Dict[str, tuple] = {}
        self._mode = "off"  # off | observe | quant

    def _q(self, key: str, x: torch.Tensor, fixed: Optional[tuple] = None) -> torch.Tensor:
        if self._mode == "observe" and fixed is None:
            lo, hi = float(x.min()), float(x.max())
            a, b = self.ranges.get(key, (lo, hi))
            self.ranges[key] = (min(a, lo), max(b, hi))
        elif self._mode == "quant":
            return fake_quant_activation(x, *(fixed or self.ranges[key]))
        return x

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        net, q = self.net, self._q
        enc = net.encoder
        x = q("stem", F.relu6(enc._bn0(enc._conv_stem(x))), RELU6_RANGE)
        feats = []
        for i, b in enumerate(enc._blocks):
            y = x
            if b.has_expand:
                y = q(f"b{i}e", F.relu6(b._bn0(b._expand_conv(y))), RELU6_RANGE)
            y = q(f"b{i}d", F.relu6(b._bn1(b._depthwise_conv(y))), RELU6_RANGE)
            y = q(f"b{i}p", b._bn2(b._project_conv(y)))
            if b.residual:
                y = q(f"b{i}a", y + x)
            x = y
            if i in enc.skip_ids:
                feats.append(x)
        y = feats[4]
        for i, (blk, skip) in enumerate(zip(net.decoder, [feats[3], feats[2], feats[1], feats[0]])):
            y = q(f"d{i}c", torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skip], dim=1))
            y = q(f"d{i}1", blk.conv1(y))
            y = q(f"d{i}2", blk.conv2(y))
        y = q("final", net.final.conv1(F.interpolate(y, scale_factor=2.0, mode="nearest")))
        return q("head", net.head(y))

    def logits(self, rgb: torch.Tensor, quantised: bool = True) -> torch.Tensor:
        """The network's logits on RGB in [0, 1]; as the twin computes them when ``quantised``."""
        x = (rgb - self.mean) / self.std
        if not quantised:
            return self._run(x)
        self._mode = "quant"
        saved = [c.weight for c in self.convs]
        try:
            for c in self.convs:
                w = c.weight
                del c.weight  # a plain tensor in the parameter's place for this forward pass
                c.weight = fake_quant_weight(w)
            return self._run(fake_quant_activation(x, -1.0, 1.0))
        finally:
            for c, w in zip(self.convs, saved):
                del c.weight
                c.weight = w
            self._mode = "off"

    @torch.no_grad()
    def calibrate(self, batches: Sequence[np.ndarray]) -> None:
        """Min/max of every quantised tensor over ``batches`` on the current fp32 weights (ONNX Runtime's
        MinMax calibration)."""
        self.ranges = {}
        self._mode = "observe"
        try:
            for b in batches:
                self._run((torch.from_numpy(np.asarray(b, np.float32)) - self.mean) / self.std)
        finally:
            self._mode = "off"


def distill(
    model_path: str,
    out_path: str,
    pool: np.ndarray,
    calibration: Sequence[np.ndarray],
    steps: int = RULE12_STEPS,
    constant_steps: int = RULE12_CONSTANT_STEPS,
    lr: float = RULE12_LR,
    batch: int = 8,
    seed: int = 0,
    log: Callable[[str], None] = print,
    train_bn_scale: bool = True,
) -> Dict[str, Any]:
    """Train a copy of ``model_path``'s network so that its int8 simulation reproduces the fp32 model,
    and save it to ``out_path`` with ``model_path``'s metadata (plus a ``int8_distilled`` record).

    ``pool``: float32 N x 3 x T x T RGB tiles in [0, 1] (no labels; random flips and quarter turns
    are added); ``calibration``: the batches the twin's quantisation calibrates on (ranges are
    re-measured every 250 steps). Loss: binary cross-entropy of the student's probability against
    the teacher's. Adam; ``constant_steps`` at ``lr``, then ``steps`` on a cosine decay to 0.
    ``train_bn_scale`` False freezes the folded BNs' scales (rule 14): the simulator then rounds
    exactly the weights the export will fold.
    """
    from roof_detector.core.model_io import read_metadata, save_model
    from roof_detector.core.onnx_twin import file_sha256
    from roof_detector.core.training.export import load_trainable
    from roof_detector.core.unet import ExportWrapper

    meta = read_metadata(model_path)
    norm = meta["normalization"]
    teacher, _ = load_trainable(model_path)
    teacher.eval().requires_grad_(False)
    student, _ = load_trainable(model_path)
    sim = TwinSimulator(fold_batchnorm(student).eval(), norm["mean"], norm["std"])
    if not train_bn_scale:
        for m in student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
    sim.calibrate(calibration)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    losses: List[float] = []
    total = constant_steps + steps
    for i in range(total):
        k = i - constant_steps
        rate = lr if k < 0 else lr * 0.5 * (1 + math.cos(math.pi * k / steps))
        for g in opt.param_groups:
            g["lr"] = rate
        x = _augment(torch.from_numpy(pool[rng.integers(0, len(pool), batch)]), rng)
        with torch.no_grad():
            target = torch.sigmoid(teacher((x - sim.mean) / sim.std))
        loss = F.binary_cross_entropy_with_logits(sim.logits(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if k >= 0 and ((k + 1) % 250 == 0 or k + 1 == steps):
            sim.calibrate(calibration)
            log(json.dumps({"step": k + 1, "loss": round(float(np.mean(losses[-250:])), 6)}))
    record = {"teacher_sha256": file_sha256(model_path), "steps": steps, "constant_steps": constant_steps, "lr": lr}
    if not train_bn_scale:
        record["bn_scale"] = "frozen"
    meta = dict(meta, int8_distilled=record)
    save_model(ExportWrapper(student.eval(), norm["mean"], norm["std"]), out_path, meta)
    return record


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    x = torch.rot90(x, int(rng.integers(0, 4)), dims=(2, 3))
    return torch.flip(x, dims=(3,)) if rng.random() < 0.5 else x


def distillation_pool(data: str, tile_px: int, gsd_m: float, per_raster: int = 120, seed: int = 0) -> np.ndarray:
    """Rule 12's distillation tiles from ``data`` (``../shared/data``): random windows >= 90 % valid of
    OAM areas 1 and 2 (z19, z20, z21, read at ``gsd_m``), the INRIA train chips, four random crops
    of each Dubai part of source tiles 1-4. Scenes the rule's check never sees."""
    from PIL import Image

    from roof_detector.core.geo import pixel_size_m
    from roof_detector.core.inference import read_tiles
    from roof_detector.core.raster_source import open_source
    from roof_detector.core.tiling import Tile, model_grid

    rng = np.random.default_rng(seed)
    t = tile_px
    tiles = []
    for area in (1, 2):
        for z in (19, 20, 21):
            src, _ = open_source(os.path.join(data, "oam", f"area{area}", f"ortho_z{z}.tif"))
            try:
                px = pixel_size_m(src.crs_wkt, src.transform, src.width, src.height)
                g = model_grid(src.transform, src.width, src.height, px, gsd_m)
                got = tries = 0
                while got < per_raster and tries < 4000:
                    tries += 1
                    c, r = int(rng.integers(0, g.width_px - t)), int(rng.integers(0, g.height_px - t))
                    rgb, valid = read_tiles(src, g, [Tile(0, c, r, t, t, (c, r, c + t, r + t))], t)
                    if valid.mean() >= 0.9:
                        tiles.append(rgb[0])
                        got += 1
            finally:
                src.close()

    def rgb(path):
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0

    for p in sorted(glob.glob(os.path.join(data, "chips", "inria", "train", "images", "*.png"))):
        tiles.append(rgb(p)[:, :t, :t])
    for p in sorted(glob.glob(os.path.join(data, "chips", "dubai", "images", "*.jpg"))):
        if int(os.path.basename(p).split("_")[0][4:]) >= 5:
            continue  # source tiles 5-8 are the rule's check scenes
        a = rgb(p)
        h, w = a.shape[1:]
        if h < t or w < t:
            continue
        for _ in range(4):
            r, c = rng.integers(0, h - t + 1), rng.integers(0, w - t + 1)
            tiles.append(a[:, r : r + t, c : c + t])
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)
