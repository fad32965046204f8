"""How much work a detection is, known before a single pixel is read.

A 2 KB VRT can declare 200,000 x 200,000 pixels at 10 m: 0.2.0 started
such runs without a word and grew memory until MemoryError (all 24 GB of a
machine without a cap). :func:`estimate_detection` sizes a run from the
raster's header and the model's metadata alone; :func:`check_detection_size`
refuses it beyond :data:`LARGE_RUN_TILES` tiles or the free memory unless
the user confirmed (CLI ``--yes``, Processing ``CONFIRM_LARGE``, a question
in the dialog), and always beyond the machine's physical memory. No ``qgis``
import here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

#: Beyond this many tiles a run needs a confirmation: about 22 minutes on 2 CPU cores.
LARGE_RUN_TILES = 100_000
#: Whole-pipeline CPU rate measured by `make bench` (README, Performance: 75.6-76.7 tiles/s, 2 cores).
CPU_TILES_PER_S = 75.0
#: Memory of the process besides the strips: model, ONNX Runtime arena, GDAL cache (the 8192 px
#: bench peaked at 1.2 GB in all).
BASE_MEMORY_BYTES = 1_000_000_000
#: Full-width strips held at once by the strip mosaic, and bytes per model-grid pixel in them
#: (float32 probability + validity + building mask + labels while tracing).
STRIPS_HELD = 3
BYTES_PER_STRIP_PX = 10
#: The tile list (one small Python object per tile, with its windows) is held for the whole run.
BYTES_PER_TILE = 400


@dataclass
class WorkEstimate:
    """The size of one detection run."""

    tiles: int
    grid_px: Tuple[int, int]  # model grid (width, height)
    memory_bytes: int  # peak, about
    raster_pixel_size_m: Tuple[float, float]
    warnings: List[str] = field(default_factory=list)  # known before the run (coarse pixels)

    @property
    def minutes_cpu(self) -> float:
        return self.tiles / CPU_TILES_PER_S / 60.0

    def describe(self) -> str:
        return (
            f"{self.tiles:,} tiles on a {self.grid_px[0]:,} x {self.grid_px[1]:,} px model grid: "
            f"{_duration(self.minutes_cpu)} on 2 CPU cores and {self.memory_bytes / 1e9:.1f} GB of memory"
        )


def _duration(minutes: float) -> str:
    """How long, in words: "under a minute", "about 12 min", "about 3 hours", "about 2 days"."""
    if minutes < 1:
        return "under a minute"
    if minutes < 120:
        return f"about {minutes:.0f} min"
    if minutes < 48 * 60:
        return f"about {minutes / 60:.0f} hours"
    return f"about {minutes / 60 / 24:.0f} days"


def _tiles_along(length_px: int, tile_px: int, overlap_px: int) -> int:
    if length_px <= tile_px:
        return 1
    return int(math.ceil((length_px - tile_px) / (tile_px - overlap_px))) + 1


def estimate_grid(
    width_px: int,
    height_px: int,
    tile_px: int,
    overlap_px: int,
    raster_pixel_size_m: Tuple[float, float],
    coarse_warning: Optional[str] = None,
) -> WorkEstimate:
    """The work of a model grid of ``width_px`` x ``height_px`` pixels (after any area of interest)."""
    per_row = _tiles_along(width_px, tile_px, overlap_px)
    tiles = per_row * _tiles_along(height_px, tile_px, overlap_px)
    strips = width_px * (tile_px + overlap_px) * STRIPS_HELD * BYTES_PER_STRIP_PX
    queue = 2 * per_row * tile_px * tile_px * 17  # two rows of predicted tiles waiting to be traced
    memory = BASE_MEMORY_BYTES + strips + queue + tiles * BYTES_PER_TILE
    return WorkEstimate(
        tiles, (width_px, height_px), memory, raster_pixel_size_m, [coarse_warning] if coarse_warning else []
    )


def memory_bytes() -> Tuple[Optional[int], Optional[int]]:
    """(available, total) memory in bytes this process may use: physical memory (/proc/meminfo),
    capped by an address-space limit (``prlimit --as``, ``ulimit -v``); (None, None) when unknown."""
    available = total = None
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()[1:]}
        available, total = info.get("MemAvailable"), info.get("MemTotal")
    except (OSError, ValueError, IndexError):
        try:
            size = os.sysconf("SC_PAGE_SIZE")
            available, total = os.sysconf("SC_AVPHYS_PAGES") * size, os.sysconf("SC_PHYS_PAGES") * size
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            total = limit if total is None else min(total, limit)
            available = limit if available is None else min(available, limit)
    except (ImportError, OSError, ValueError):
        pass
    return available, total


def size_problem(estimate: WorkEstimate, name: str) -> Tuple[Optional[str], bool]:
    """(message, confirmable) when ``estimate`` is beyond a limit, else (None, True).

    ``confirmable`` is False when no confirmation can help: more memory than the machine has.
    """
    available, total = memory_bytes()
    if total is not None and estimate.memory_bytes > total:
        return (
            f"Detecting buildings in {name} would need about {estimate.memory_bytes / 1e9:.0f} GB of memory "
            f"({estimate.describe()}); this machine has {total / 1e9:.0f} GB. Choose an area of interest or "
            "a raster at a sensible pixel size"
        ), False
    reasons = []
    if estimate.tiles > LARGE_RUN_TILES:
        reasons.append(f"more than {LARGE_RUN_TILES:,} tiles")
    if available is not None and estimate.memory_bytes > available:
        reasons.append(f"more memory than is free now ({available / 1e9:.1f} GB)")
    if not reasons:
        return None, True
    return (
        f"{name} is a very large run ({' and '.join(reasons)}): {estimate.describe()}. Choose an area of "
        "interest, or confirm to run it anyway"
    ), True
