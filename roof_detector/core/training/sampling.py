"""Random training crops at the model GSD, and their augmentation.

A crop is cut from a :class:`~.scenes.Scene` so that, after resizing to
``tile_px``, one pixel is ``gsd_m * jitter`` on the ground with ``jitter``
drawn log-uniformly from ``scale_range``: buildings then appear at the sizes
they have after the engine resamples inputs from about 0.1 to 0.6 m/px.
Inputs coarser than the model GSD reach the network upsampled, i.e. soft;
``degrade_p`` simulates that by a down-and-up resample.

Augmentations (on batches, in torch): flips and 90-degree rotations,
brightness/contrast/saturation jitter, random greyscale (panchromatic
orthophotos), hue rotation, gamma (dark and washed-out roofs), Gaussian blur
and noise, and copy-paste of labelled buildings from one crop onto another.

With ``n_outputs=3`` the targets of a crop are building, border and contact
(:mod:`.targets`), derived after the geometric augmentation and copy-paste
from the crop's building instances (label polygons; connected components of
the mask for chips without polygons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .scenes import Scene
from .targets import instance_map, target_stack


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the augmentations."""

    scale_range: Tuple[float, float] = (0.75, 1.35)
    degrade_p: float = 0.25
    degrade_range: Tuple[float, float] = (1.3, 2.2)
    color_p: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.4
    grey_p: float = 0.3
    pan_vegetation_p: float = 0.5  # of the greyscale draws: vegetation brightened as in a pan band
    blur_p: float = 0.15
    noise_p: float = 0.2
    noise_std: float = 0.03
    copy_paste_p: float = 0.2
    hue_p: float = 0.0  # rotation of the hue by a random angle (roofs are painted in any colour)
    gamma_p: float = 0.0  # share of crops given a random gamma: dark shingle and grey flat roofs
    gamma_range: Tuple[float, float] = (0.6, 1.7)  # drawn log-uniformly; > 1 darkens mid-tones


def _image_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 crop -> 1 x 3 x H x W float tensor in [0, 1]."""
    arr = np.ascontiguousarray(img)
    if not arr.flags.writeable:
        # Scenes decoded from PNG/JPEG are read-only views; torch warns on those
        # (the warning lands in the user's training log), so copy the small crop.
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


class CropSampler:
    """Draws crops from scenes, weighting each scene by its valid area times a weight."""

    def __init__(
        self,
        scenes: Sequence[Scene],
        gsd_m: float,
        tile_px: int,
        weights: Sequence[float] = (),
        config: AugmentConfig = AugmentConfig(),
        seed: int = 0,
        min_valid_fraction: float = 0.5,
        n_outputs: int = 1,
    ):
        if not scenes:
            raise ValueError("no training scenes")
        if n_outputs not in (1, 3):
            raise ValueError(f"models have 1 or 3 outputs, not {n_outputs}")
        self.n_outputs = n_outputs
        self.scenes = list(scenes)
        self.gsd_m = gsd_m
        self.tile_px = tile_px
        self.cfg = config
        self.rng = np.random.default_rng(seed)
        self.min_valid = min_valid_fraction
        w = np.array(list(weights) or [1.0] * len(self.scenes), dtype=np.float64)
        area = np.array([s.valid.sum() * s.gsd_m**2 for s in self.scenes], dtype=np.float64)
        p = w * area
        self.p = p / p.sum()
        # Valid pixel coordinates (subsampled) per scene, to centre crops on imagery.
        self._centres = []
        for s in self.scenes:
            rr, cc = np.nonzero(s.valid[::8, ::8])
            self._centres.append((rr * 8, cc * 8))

    def _one(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        cfg = self.cfg
        for _ in range(20):
            i = self.rng.choice(len(self.scenes), p=self.p)
            s = self.scenes[i]
            lo, hi = cfg.scale_range
            jitter = math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
            side = max(8, int(round(self.tile_px * self.gsd_m * jitter / s.gsd_m)))
            h, w = s.label.shape
            rr, cc = self._centres[i]
            k = self.rng.integers(len(rr))
            r0 = int(np.clip(rr[k] - side // 2, 0, max(h - side, 0)))
            c0 = int(np.clip(cc[k] - side // 2, 0, max(w - side, 0)))
            img = s.image[r0 : r0 + side, c0 : c0 + side]
            lab = s.label[r0 : r0 + side, c0 : c0 + side]
            val = s.valid[r0 : r0 + side, c0 : c0 + side]
            inst = None if s.instances is None else s.instances[r0 : r0 + side, c0 : c0 + side]
            if val.mean() >= self.min_valid or _ == 19:
                return _pad(img, lab, val, side) + (None if inst is None else _pad_2d(inst, side),)
        raise RuntimeError("unreachable")

    def batch(self, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` augmented crops: images N x 3 x T x T in [0, 1], targets N x n_outputs x T x T
        (building[, border, contact]) and valid N x 1 x T x T."""
        t = self.tile_px
        imgs, labs, insts = [], [], []
        for _ in range(n):
            img, lab, val, inst = self._one()
            x = _image_tensor(img)
            y = torch.from_numpy(np.stack([lab, val]).astype(np.float32))[None]
            down = x.shape[-1] > t
            x = F.interpolate(x, size=(t, t), mode="bilinear", antialias=down, align_corners=False)
            y = F.interpolate(y, size=(t, t), mode="bilinear", antialias=down, align_corners=False)
            if self.n_outputs > 1:
                if inst is None:
                    ids = instance_map((y[0, 0] >= 0.5).numpy())
                else:
                    ids = (
                        F.interpolate(
                            torch.from_numpy(inst.astype(np.float32))[None, None], size=(t, t), mode="nearest"
                        )[0, 0]
                        .numpy()
                        .astype(np.int64)
                    )
                    ids[(y[0, 0] < 0.5).numpy()] = 0
                insts.append(torch.from_numpy(ids.astype(np.int64))[None, None])
            if self.rng.random() < self.cfg.degrade_p:
                f = self.rng.uniform(*self.cfg.degrade_range)
                small = max(8, int(t / f))
                x = F.interpolate(x, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
                x = F.interpolate(x, size=(t, t), mode="bilinear", align_corners=False)
            imgs.append(x)
            labs.append(y)
        x = torch.cat(imgs)
        y = torch.cat(labs)
        lab = (y[:, :1] >= 0.5).float()
        val = (y[:, 1:] >= 0.5).float()
        inst = torch.cat(insts) if insts else None
        x, lab, val, inst = geometric(x, lab, val, self.rng, inst)
        if inst is None:
            x, lab = copy_paste(x, lab, val, self.rng, self.cfg.copy_paste_p)
        else:
            x, lab, inst = copy_paste(x, lab, val, self.rng, self.cfg.copy_paste_p, inst)
        x = photometric(x, self.rng, self.cfg)
        if inst is not None:
            lab = torch.from_numpy(np.stack([target_stack(i[0].numpy(), self.n_outputs) for i in inst]))
        return x.contiguous(), lab.contiguous(), val.contiguous()


def _pad(img, lab, val, side):
    h, w = lab.shape
    if h == side and w == side:
        return img, lab, val
    pi = np.zeros((side, side, 3), np.uint8)
    pl = np.zeros((side, side), np.uint8)
    pv = np.zeros((side, side), bool)
    pi[:h, :w], pl[:h, :w], pv[:h, :w] = img, lab, val
    return pi, pl, pv


def _pad_2d(a, side):
    h, w = a.shape
    if h == side and w == side:
        return a
    out = np.zeros((side, side), a.dtype)
    out[:h, :w] = a
    return out


def geometric(x, lab, val, rng, inst=None):
    """Random flips and 90-degree rotations, the same for image and masks, per sample."""
    out = []
    group = (x, lab, val) if inst is None else (x, lab, val, inst)
    for tensors in zip(*group):
        k = int(rng.integers(4))
        flip = rng.random() < 0.5
        res = []
        for t in tensors:
            t = torch.rot90(t, k, dims=(1, 2))
            if flip:
                t = torch.flip(t, dims=(2,))
            res.append(t)
        out.append(res)
    res = tuple(torch.stack([o[i] for o in out]) for i in range(len(group)))
    return res if inst is not None else res + (None,)


def copy_paste(x, lab, val, rng, p, inst=None):
    """Paste the labelled building pixels of a random other crop onto some crops.

    Pasted buildings keep their instances (given ``inst``), under new ids, over
    whatever they cover.
    """
    n = x.shape[0]
    if n < 2 or p <= 0:
        return (x, lab) if inst is None else (x, lab, inst)
    x = x.clone()
    lab = lab.clone()
    offset = int(inst.max()) + 1 if inst is not None else 0
    if inst is not None:
        inst = inst.clone()
    for i in range(n):
        if rng.random() >= p:
            continue
        j = int(rng.integers(n - 1))
        j = j + 1 if j >= i else j
        m = (lab[j] * val[j] * val[i]) > 0
        if m.any():
            x[i] = torch.where(m.expand_as(x[i]), x[j], x[i])
            lab[i] = torch.where(m, torch.ones_like(lab[i]), lab[i])
            if inst is not None:
                inst[i] = torch.where(m, inst[j] + offset * (i + 1), inst[i])
    return (x, lab) if inst is None else (x, lab, inst)


def photometric(x, rng, cfg: AugmentConfig):
    """Colour jitter, greyscale, blur and noise on a batch in [0, 1]."""
    n = x.shape[0]
    out = []
    for i in range(n):
        xi = x[i]
        if rng.random() < cfg.color_p:
            b = 1 + rng.uniform(-cfg.brightness, cfg.brightness)
            c = 1 + rng.uniform(-cfg.contrast, cfg.contrast)
            s = 1 + rng.uniform(-cfg.saturation, cfg.saturation)
            grey = xi.mean(0, keepdim=True)
            xi = grey + (xi - grey) * s
            xi = (xi - xi.mean()) * c + xi.mean()
            xi = xi * b
        if cfg.gamma_p > 0 and rng.random() < cfg.gamma_p:
            lo, hi = cfg.gamma_range
            xi = xi.clamp(0, 1) ** math.exp(rng.uniform(math.log(lo), math.log(hi)))
        greyed = rng.random() < cfg.grey_p
        if greyed:
            grey = 0.299 * xi[0] + 0.587 * xi[1] + 0.114 * xi[2]
            if rng.random() < cfg.pan_vegetation_p:
                # Panchromatic bands reach into the near infrared, where leaves are bright:
                # trees come out as light as roofs. Brighten green vegetation (excess green).
                exg = (2 * xi[1] - xi[0] - xi[2]).clamp_min(0)
                grey = grey + rng.uniform(0.8, 3.0) * exg
            xi = grey.clamp(0, 1).expand(3, -1, -1)
        elif cfg.hue_p > 0 and rng.random() < cfg.hue_p:
            xi = rotate_hue(xi, rng.uniform(-math.pi, math.pi))
        if rng.random() < cfg.blur_p:
            sigma = rng.uniform(0.5, 1.5)
            xi = _gaussian_blur(xi, sigma)
        if rng.random() < cfg.noise_p:
            xi = xi + torch.randn_like(xi) * cfg.noise_std * rng.uniform(0.3, 1.0)
        out.append(xi.clamp(0, 1))
    return torch.stack(out)


def rotate_hue(x: torch.Tensor, angle_rad: float) -> torch.Tensor:
    """Rotate the colours of a 3 x H x W image about the grey axis (a hue shift that keeps
    grey pixels grey and each pixel's mean brightness)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    k = 1.0 / 3.0
    r = math.sqrt(k)
    # Rodrigues' formula for the unit axis (1, 1, 1) / sqrt(3)
    m = torch.tensor(
        [
            [c + (1 - c) * k, (1 - c) * k - r * s, (1 - c) * k + r * s],
            [(1 - c) * k + r * s, c + (1 - c) * k, (1 - c) * k - r * s],
            [(1 - c) * k - r * s, (1 - c) * k + r * s, c + (1 - c) * k],
        ],
        dtype=x.dtype,
    )
    return torch.einsum("ij,jhw->ihw", m, x).clamp(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[0]
    y = F.conv2d(F.pad(x[None], (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def scenes_to_tiles(scenes: Sequence[Scene], tile_px: int) -> List[Tuple[torch.Tensor, ...]]:
    """Evaluation tensors of scenes already at model GSD: image 3xTxT in [0,1], label, valid and
    building instances (1xTxT ids: the label polygons', else the mask's connected components)."""
    out = []
    for s in scenes:
        h, w = s.label.shape
        inst = instance_map(s.label, s.instances)
        if h < tile_px or w < tile_px:
            side = max(tile_px, h, w)
            img, lab, val = _pad(s.image, s.label, s.valid, side)
            inst = _pad_2d(inst, side)
        else:
            img, lab, val = s.image, s.label, s.valid
        out.append(
            (
                torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float() / 255.0,
                torch.from_numpy(lab.astype(np.float32))[None],
                torch.from_numpy(val.astype(np.float32))[None],
                torch.from_numpy(np.asarray(inst).astype(np.int64))[None],
            )
        )
    return out
