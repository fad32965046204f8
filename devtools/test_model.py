"""A tiny deterministic model for tests, demos of the plumbing and benchmarks.

It is not a detector: it marks bright pixels (mean RGB above 0.5) as
"building" through one fixed 1x1 convolution and a sigmoid. Generated test
rasters draw buildings as bright rectangles on a dark background, so the
expected output is known exactly.

:class:`SeamNet` adds the two separation outputs of
:mod:`.training.targets` by fixed rules: no border, and "contact" on a pixel
darker than its brightest neighbour by more than 1 % (the faint seam between
two touching roofs of the same colour, where the building probability has no
valley). Written with ``outputs: [building, border, contact]`` it exercises
the engine's separation path.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from roof_detector.core.model_io import save_model


class BrightnessNet(nn.Module):
    """Probability = sigmoid(gain * (mean(R, G, B) - 0.5)); one 1x1 conv."""

    def __init__(self, gain: float = 40.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(gain / 3.0)
            self.conv.bias.fill_(-gain * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class SeamNet(nn.Module):
    """Outputs building (as :class:`BrightnessNet`), border (none) and contact (a darker seam)."""

    def __init__(self, gain: float = 40.0, seam_gain: float = 400.0, seam_min: float = 0.01):
        super().__init__()
        self.building = BrightnessNet(gain)
        self.seam_gain = seam_gain
        self.seam_min = seam_min

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        building = self.building(x)
        grey = x.mean(dim=1, keepdim=True)
        brightest = torch.nn.functional.max_pool2d(grey, 3, stride=1, padding=1)
        contact = torch.sigmoid(self.seam_gain * (brightest - grey - self.seam_min))
        border = torch.zeros_like(building)
        return torch.cat([building, border, contact], dim=1)


def make_test_model(
    path: str,
    gsd_m: float = 0.5,
    tile_size_px: int = 64,
    overlap_px: int = 8,
    threshold: float = 0.5,
    extra_metadata: Optional[Dict[str, Any]] = None,
    separation: bool = False,
) -> str:
    """Write the brightness model (``separation``: :class:`SeamNet`, three outputs) with full
    metadata to ``path``; return the path."""
    meta = brightness_metadata(gsd_m, tile_size_px, overlap_px, threshold)
    if separation:
        meta.update(
            {
                "architecture": {"name": "seam_test", "params": {}},
                "outputs": ["building", "border", "contact"],
                "separation": {"core_threshold": 0.5},
            }
        )
    meta.update(extra_metadata or {})
    return save_model(SeamNet() if separation else BrightnessNet(), path, meta)


def brightness_metadata(
    gsd_m: float = 0.5, tile_size_px: int = 64, overlap_px: int = 8, threshold: float = 0.5
) -> Dict[str, Any]:
    """The metadata record of the brightness test model."""
    return {
        "name": "brightness-test-model",
        "version": "0.0.1",
        "architecture": {"name": "brightness_test", "params": {"gain": 40.0}},
        "bands": ["red", "green", "blue"],
        "normalization": {
            "input_range": [0, 1],
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "applied_in_model": True,
        },
        "gsd_m": gsd_m,
        "tile_size_px": tile_size_px,
        "overlap_px": overlap_px,
        "threshold": threshold,
        "training": {"summary": "not trained: fixed weights for tests"},
        "metrics": {},
    }
