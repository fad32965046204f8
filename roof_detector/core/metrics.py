"""Pixel metrics shared by training, fine-tuning and evaluation.

All metrics are pooled: confusion counts are summed over every valid pixel
of every image first, then turned into ratios (a split's IoU is not the mean
of per-image IoUs). Empty denominators give 1.0 when nothing was expected and
nothing predicted (perfect agreement), else 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Dict, Optional

import numpy as np


@dataclass
class Confusion:
    """Pixel confusion counts: true/false positives/negatives."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, other: "Confusion") -> "Confusion":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.total)

    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, empty=1.0 if self.fn == 0 else 0.0)

    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, empty=1.0 if self.fp == 0 else 0.0)

    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def as_dict(self) -> Dict[str, float]:
        d: Dict[str, float] = dict(asdict(self))
        d.update(
            iou=self.iou(), accuracy=self.accuracy(), precision=self.precision(), recall=self.recall(), f1=self.f1()
        )
        return d


def _ratio(num: int, den: int, empty: float = 1.0) -> float:
    return float(num) / float(den) if den else empty


def confusion(pred: np.ndarray, truth: np.ndarray, valid: Optional[np.ndarray] = None) -> Confusion:
    """Confusion counts of boolean ``pred`` against boolean ``truth`` over ``valid`` pixels."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        pred = pred[valid]
        truth = truth[valid]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(pred.size - tp - fp - fn)
    return Confusion(tp, fp, fn, tn)
