"""Separation targets derived from building instances (label polygons carry instances).

A building mask cannot say where one roof ends and the next begins when the two
touch; the label polygons can. From an instance map (0 = background, one id per
building) two extra targets are derived, the recipe of the SpaceNet building
challenges' winning solutions:

* ``border``: building pixels within ``border_px`` of a pixel that is not the
  same building (background or another building): the inner rim of each roof;
* ``contact``: pixels (building or not) within ``contact_px`` of two or more
  different buildings: the seam between touching roofs and the narrow gaps
  between close ones.

At inference, a roof's *core* is building but neither border nor contact;
cores seed a watershed that gives every building pixel to one roof
(:func:`roof_detector.core.vectorize.separation_score`).

Distances are Chebyshev (square windows), computed with min/max pooling on
the instance ids: exact enough at 2-3 pixels, and fast enough to run on every
training crop. Pixels beyond the crop edge are taken as continuing the edge
(``mode='nearest'``), so a building cut by the crop edge gets no border there.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: At the bundled models' 0.3 m: a 0.6 m rim and seams of gaps up to about 1.8 m.
BORDER_PX = 2
CONTACT_PX = 3


def instance_map(label: np.ndarray, instances: Optional[np.ndarray] = None) -> np.ndarray:
    """``instances`` where given, else the 4-connected components of a 0/1 mask (masks carry no instances)."""
    if instances is not None:
        return instances
    lab, _ = ndimage.label(label > 0)
    return lab


def _window_max(a: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over the (2r+1)^2 window of each pixel of an H x W float tensor, edges repeated."""
    x = F.pad(a[None, None], (radius,) * 4, mode="replicate")
    return F.max_pool2d(x, 2 * radius + 1, stride=1)[0, 0]


def separation_targets(
    instances: np.ndarray, border_px: int = BORDER_PX, contact_px: int = CONTACT_PX
) -> Tuple[np.ndarray, np.ndarray]:
    """(border, contact) uint8 0/1 maps of an H x W instance map (0 = background)."""
    ids_np = np.asarray(instances)
    # ids are renumbered 0..n so they stay exact in float32 (max pooling runs on floats)
    _, inverse = np.unique(ids_np, return_inverse=True)
    ids = torch.from_numpy(inverse.reshape(ids_np.shape).astype(np.float32))
    if ids_np.size and ids_np.flat[np.argmin(ids_np)] != 0:
        ids = ids + 1  # no background at all: keep 0 meaning background
    building = ids > 0
    hi = _window_max(ids, border_px)
    lo = -_window_max(-ids, border_px)
    border = building & ((hi != ids) | (lo != ids))
    # For contacts, background must not count as "another building": give it an id above
    # every building for the minimum and 0 for the maximum, so a window holding a single
    # building has equal minimum and maximum.
    big = float(ids.max()) + 1.0
    hi_c = _window_max(ids, contact_px)
    lo_c = -_window_max(-torch.where(building, ids, torch.full_like(ids, big)), contact_px)
    contact = (lo_c != big) & (hi_c != lo_c)
    return border.numpy().astype(np.uint8), contact.numpy().astype(np.uint8)


def target_stack(instances: np.ndarray, n_outputs: int) -> np.ndarray:
    """``n_outputs`` x H x W float32 targets: building, then border and contact when asked for."""
    building = (np.asarray(instances) > 0).astype(np.float32)
    if n_outputs == 1:
        return building[None]
    if n_outputs != 3:
        raise ValueError(f"models have 1 or 3 outputs, not {n_outputs}")
    border, contact = separation_targets(instances)
    return np.stack([building, border.astype(np.float32), contact.astype(np.float32)])
