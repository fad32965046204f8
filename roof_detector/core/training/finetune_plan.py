"""How big a fine-tuning run is and how long it may take, told to the user before it starts.

Crops per epoch scale with the labelled area (:func:`default_samples_per_epoch`); :func:`plan`
gives the numbers and an estimate of the time, :func:`plan_text` the line the user reads.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

#: Crops per epoch per model tile of labelled training area, and the bounds (issue 16: on a fifth
#: of a 0.3 m suburb, 32 crops per epoch gained +0.035 IoU, 160 with early stopping +0.13).
SAMPLES_PER_TILE = 40
MIN_SAMPLES, MAX_SAMPLES = 96, 480
#: Training seconds per crop: 2 CPU threads (issue 16: 1440 crops in 2.5 min on 2 cores), a CUDA GPU.
SECONDS_PER_SAMPLE = {"cpu": 0.1, "cuda": 0.01, "mps": 0.03}


def default_samples_per_epoch(train_px: int, tile_px: int, batch_size: int) -> int:
    """Crops per epoch for ``train_px`` labelled training pixels: :data:`SAMPLES_PER_TILE` per model tile,
    within [:data:`MIN_SAMPLES`, :data:`MAX_SAMPLES`], a whole number of batches."""
    tiles = train_px / float(tile_px * tile_px)
    n = min(MAX_SAMPLES, max(MIN_SAMPLES, int(round(SAMPLES_PER_TILE * tiles))))
    return max(batch_size, n // batch_size * batch_size)


def plan(
    train_px: int, tile_px: int, opts, device_type: str = "cpu", threads: Optional[int] = None
) -> Dict[str, float]:
    """What a fine-tune run will do: crops per epoch, most epochs, and the time it may take (minutes):
    ``estimate_minutes`` for every epoch at this device's usual speed, capped by ``budget_minutes``.
    ``opts`` is the run's :class:`.finetune.FinetuneOptions`."""
    samples = opts.samples_per_epoch or default_samples_per_epoch(train_px, tile_px, opts.batch_size)
    per_sample = SECONDS_PER_SAMPLE.get(device_type, 0.1)
    if device_type == "cpu":
        per_sample *= 2.0 / max(1, threads or torch.get_num_threads())
    estimate = samples * opts.epochs * per_sample / 60.0
    return {
        "samples_per_epoch": samples,
        "epochs": opts.epochs,
        "estimate_minutes": round(estimate, 1),
        "budget_minutes": opts.max_minutes or 0.0,
        "labelled_tiles": round(train_px / tile_px**2, 1),
    }


def plan_text(p: Dict[str, float]) -> str:
    """One line for the user before training starts."""
    budget = p.get("budget_minutes") or 0
    most = min(p["estimate_minutes"], budget) if budget else p["estimate_minutes"]
    return (
        f"Plan: {int(p['samples_per_epoch'])} crops per epoch ({p['labelled_tiles']:g} tiles of labelled area), "
        f"up to {int(p['epochs'])} epochs, stopping early when validation stops improving: at most about "
        + (f"{most:.0f} min" if most >= 0.5 else "half a minute")
        + (f" (time budget {budget:g} min)" if budget else "")
    )
