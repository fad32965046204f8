"""What a training run carries from epoch to epoch, and its checkpoint file.

:class:`TrainState` holds the network, its exponential moving average (EMA),
the optimiser, the learning-rate schedule, the history and the best epoch so
far. A checkpoint written after every epoch (:meth:`TrainState.save`) lets a
run resume (:meth:`TrainState.resume`) where it stopped.
"""

from __future__ import annotations

import copy
import io
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch


def _ema_avg(decay: float):
    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged * d + current * (1.0 - d)

    return avg


@dataclass
class TrainState:
    """Network, EMA, optimiser, schedule and the record of the epochs so far."""

    net: torch.nn.Module
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    opt: torch.optim.Optimizer
    sched: Any  # ReduceLROnPlateau
    history: List[Dict] = field(default_factory=list)
    best_iou: float = -1.0
    best_epoch: int = 0
    best_state: Dict[str, torch.Tensor] = field(default_factory=dict)
    start_epoch: int = 1
    elapsed_before: float = 0.0  # seconds of the run before a resume

    @classmethod
    def start(cls, net: torch.nn.Module, cfg) -> "TrainState":
        """A fresh run of ``net`` with the optimiser, schedule and EMA of ``cfg`` (a TrainConfig)."""
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # An exponential moving average of weights and BN statistics is what gets validated and
        # exported: single-step weights of a small-batch, heavily augmented run swing from epoch
        # to epoch (validation IoU moved by 0.2 between neighbouring epochs without it).
        # The decay warms up, (1 + n) / (10 + n) until it reaches ema_decay, so that a network trained
        # from scratch is not validated on an average still dominated by its random start.
        ema = (
            torch.optim.swa_utils.AveragedModel(net, avg_fn=_ema_avg(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay > 0
            else None
        )
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=max(2, cfg.patience // 3)
        )
        return cls(net, ema, opt, sched, best_state=copy.deepcopy(net.state_dict()))

    @property
    def eval_net(self) -> torch.nn.Module:
        """The network that is validated and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def resume(self, checkpoint_path: str, log: Callable[[str], None]) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        ck = torch.load(checkpoint_path, map_location="cpu", weights_only=True)  # no pickled code runs
        self.net.load_state_dict(ck["net"])
        if self.ema is not None:
            if ck.get("ema"):
                self.ema.load_state_dict(ck["ema"])
            else:  # a checkpoint from before EMA: start the average at the current weights
                self.ema.module.load_state_dict(ck["net"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.history, self.best_iou = ck["history"], ck["best_iou"]
        self.best_epoch, self.best_state = ck["best_epoch"], ck["best_state"]
        self.start_epoch = len(self.history) + 1
        self.elapsed_before = ck.get("seconds", 0.0)
        log(
            f"resumed from {checkpoint_path} at epoch {self.start_epoch} "
            f"(best val IoU {self.best_iou:.4f} at epoch {self.best_epoch})"
        )

    def record(self, row: Dict, score: float) -> bool:
        """Add an epoch's row; keep the EMA's weights when ``score`` is the best so far. True if it is."""
        self.history.append(row)
        improved = score > self.best_iou
        if improved:
            self.best_iou, self.best_epoch = score, row["epoch"]
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.eval_net.state_dict().items()})
        self.sched.step(score)
        return improved

    def save(self, checkpoint_path: str, cfg, seconds: float) -> None:
        """Write the checkpoint atomically (``cfg``, a TrainConfig, is recorded in it)."""
        tmp = checkpoint_path + ".tmp"
        # Into memory first: torch's zip writer aborts the process (c10::Error) on a full disk.
        buffer = io.BytesIO()
        torch.save(
            {
                "net": self.net.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
                "history": self.history,
                "best_iou": self.best_iou,
                "best_epoch": self.best_epoch,
                "best_state": self.best_state,
                "seconds": seconds,
                "config": asdict(cfg),
            },
            buffer,
        )
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        os.replace(tmp, checkpoint_path)
