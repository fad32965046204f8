"""Batched tile prediction with the next batch read while the model runs.

Reading (GDAL decompression, resampling) and inference (PyTorch) both
release the GIL, so one reader thread keeps the model fed: while batch k
runs on the device, batch k + 1 is read. Cancellation is checked before
every batch, progress is reported after every batch.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import Cancelled, ModelError
from .model_io import LoadedModel
from .raster_source import RasterSource
from .tiling import ModelGrid, Tile

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32


def default_batch_size(device: torch.device) -> int:
    """Tiles per batch when the user did not choose: larger on GPUs, which need it to be busy."""
    return GPU_BATCH_SIZE if device.type in ("cuda", "mps") else CPU_BATCH_SIZE


def read_tile(source: RasterSource, grid: ModelGrid, tile: Tile, tile_size_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """Read one tile on the model grid, padded to ``tile_size_px`` square (padding is invalid, RGB 0)."""
    rgb = np.zeros((3, tile_size_px, tile_size_px), dtype=np.float32)
    valid = np.zeros((tile_size_px, tile_size_px), dtype=bool)
    window = grid.source_window(tile.col_off, tile.row_off, tile.width, tile.height)
    part_rgb, part_valid = source.read(window, (tile.height, tile.width))
    rgb[:, :tile.height, :tile.width] = part_rgb
    valid[:tile.height, :tile.width] = part_valid
    return rgb, valid


class BatchPredictor:
    """Runs a loaded model on batches of RGB tiles (numpy in, numpy probabilities out)."""

    def __init__(self, model: LoadedModel):
        self.model = model

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb``: float32 N x 3 x H x W in [0, 1]; returns float32 probabilities N x H x W."""
        model = self.model
        with torch.inference_mode():
            x = torch.from_numpy(rgb).to(model.device, non_blocking=True)
            if model.half:
                x = x.half()
            try:
                y = model.module(x)
            except torch.cuda.OutOfMemoryError:
                raise ModelError(f"The GPU ran out of memory with {rgb.shape[0]} tiles per batch; "
                                 "use a smaller batch size (--batch-size) or the CPU") from None
            except RuntimeError as exc:
                raise ModelError(f"The model failed on a {tuple(rgb.shape)} batch: "
                                 f"{str(exc).splitlines()[0]}") from None
            if y.dim() != 4 or y.shape[0] != rgb.shape[0] or y.shape[1] != 1 or y.shape[2:] != x.shape[2:]:
                raise ModelError(f"The model returned shape {tuple(y.shape)} for input {tuple(x.shape)}; "
                                 "a Roof Detector model must return N x 1 x H x W probabilities")
            return y[:, 0].float().cpu().numpy()


def predict_tiles(source: RasterSource, grid: ModelGrid, tiles: Sequence[Tile], model: LoadedModel,
                  batch_size: int, progress: Optional[ProgressFn] = None, is_cancelled: Optional[CancelFn] = None,
                  timings: Optional[Dict[str, float]] = None
                  ) -> Iterator[List[Tuple[Tile, np.ndarray, np.ndarray]]]:
    """Yield, batch by batch, ``[(tile, probability, valid), ...]`` for every tile.

    ``probability`` is float32 ``T x T`` (0 where invalid), ``valid`` bool
    ``T x T`` (False on padding and nodata). ``timings`` accumulates seconds
    under ``"read"`` (on the reader thread, overlapping inference) and
    ``"infer"``; ``timings["batches"]`` counts batches. Raises
    :class:`Cancelled` when ``is_cancelled()`` turns true.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    timings = timings if timings is not None else {}
    timings.setdefault("read", 0.0)
    timings.setdefault("infer", 0.0)
    timings.setdefault("batches", 0)
    tile_px = model.tile_size_px
    batches = [list(tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)]
    predictor = BatchPredictor(model)

    def read_batch(batch: List[Tile]) -> Tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        pairs = [read_tile(source, grid, t, tile_px) for t in batch]
        timings["read"] += time.perf_counter() - t0
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="roof-reader") as pool:
        pending: Optional[Future] = pool.submit(read_batch, batches[0]) if batches else None
        try:
            for k, batch in enumerate(batches):
                if is_cancelled is not None and is_cancelled():
                    raise Cancelled()
                rgb, valid = pending.result()
                # Start reading the next batch before running this one.
                pending = pool.submit(read_batch, batches[k + 1]) if k + 1 < len(batches) else None
                t0 = time.perf_counter()
                prob = predictor(rgb)
                timings["infer"] += time.perf_counter() - t0
                timings["batches"] += 1
                prob[~valid] = 0.0
                yield [(t, prob[i], valid[i]) for i, t in enumerate(batch)]
                done += len(batch)
                if progress is not None:
                    progress(done / len(tiles), f"Detecting buildings: tile {done}/{len(tiles)}")
        finally:
            # On cancel / error / early close: do not start more reads; the pool's
            # exit waits for a read in flight, so the source is not closed under it.
            if pending is not None:
                pending.cancel()
