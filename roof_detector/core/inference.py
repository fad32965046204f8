"""Batched tile prediction with the next batch read while the model runs.

Reading (GDAL decompression, resampling) and inference (ONNX Runtime or
PyTorch) both release the GIL, so one reader thread keeps the model fed: while batch k
runs on the device, batch k + 1 is read. Cancellation is checked before
every batch, progress is reported after every batch.

torch is imported only for a TorchScript model: an ONNX Runtime model
(``numpy_io``) runs on numpy arrays, so CPU detection needs no torch.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .background_lane import BackgroundLane
from .errors import Cancelled, ModelError
from .interruptible import call_interruptibly
from .model_io import LoadedModel
from .raster_source import RasterSource
from .tiling import ModelGrid, Tile

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32
#: Most tiles per batch fitted on a CUDA GPU (beyond this a GPU is already busy; more only adds latency).
GPU_BATCH_MAX = 128
#: Share of the GPU's free memory a fitted batch may take (the rest: cuDNN workspaces, other programs).
GPU_MEMORY_SHARE = 0.6


def default_batch_size(device: Any) -> int:
    """Tiles per batch when the user did not choose and nothing was measured: larger on GPUs."""
    return GPU_BATCH_SIZE if device.type in ("cuda", "mps") else CPU_BATCH_SIZE


def fitted_batch_size(model: LoadedModel) -> int:
    """Tiles per batch for ``model``'s device when the user did not choose.

    On CUDA: as many tiles as fit in ``GPU_MEMORY_SHARE`` of the memory free
    now (``torch.cuda.mem_get_info``), at the peak memory one tile took in a
    probe batch of two, between 1 and ``GPU_BATCH_MAX``. Elsewhere, and when
    the probe fails, :func:`default_batch_size`. Should a fitted batch still
    not fit later, :class:`BatchPredictor` halves it.
    """
    if model.device.type != "cuda":
        return default_batch_size(model.device)
    import torch

    try:
        free_bytes, _total = torch.cuda.mem_get_info(model.device)
        per_tile = _cuda_bytes_per_tile(model)
    except Exception:  # noqa: BLE001 - a failed probe only means the default size
        return default_batch_size(model.device)
    if per_tile <= 0:
        return default_batch_size(model.device)
    return int(max(1, min(GPU_BATCH_MAX, (free_bytes * GPU_MEMORY_SHARE) // per_tile)))


def _cuda_bytes_per_tile(model: LoadedModel, probe_tiles: int = 2) -> float:
    """Peak CUDA memory one tile takes in a forward pass (input, activations, output)."""
    import torch

    device = model.device
    tile = model.tile_size_px

    def probe() -> float:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            x = torch.zeros(probe_tiles, 3, tile, tile, device=device)
            model.module(x.half() if model.half else x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    # On a thread Ctrl-C can leave: a model file may never return (see core/interruptible.py).
    return call_interruptibly(probe) / probe_tiles


def read_tiles(
    source: RasterSource, grid: ModelGrid, tiles: Sequence[Tile], tile_size_px: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Read tiles on the model grid into one batch: float32 N x 3 x T x T and bool N x T x T.

    A tile smaller than ``tile_size_px`` (the grid is smaller than a tile) is
    padded; padding is invalid and RGB 0. Neighbouring tiles of one row (a
    batch is mostly one run of them) are read as one window and cut apart:
    one source read per run instead of per tile (on the 8192 px bench,
    1,369 reads became 172 and warm reading 1.4-1.7 CPU s became 0.5).
    The model grid maps to source pixels linearly, so a tile cut from the
    run's window covers the same source pixels as its own window.
    """
    n = len(tiles)
    rgb = np.empty((n, 3, tile_size_px, tile_size_px), dtype=np.float32)
    valid = np.empty((n, tile_size_px, tile_size_px), dtype=bool)
    for run in _row_runs(tiles):
        first = tiles[run[0]]
        c0 = first.col_off
        c1 = max(tiles[i].col_off + tiles[i].width for i in run)
        window = grid.source_window(c0, first.row_off, c1 - c0, first.height)
        part_rgb, part_valid = source.read(window, (first.height, c1 - c0))
        for i in run:
            tile = tiles[i]
            cols = slice(tile.col_off - c0, tile.col_off - c0 + tile.width)
            if tile.height < tile_size_px or tile.width < tile_size_px:
                rgb[i] = 0.0
                valid[i] = False
            rgb[i, :, : tile.height, : tile.width] = part_rgb[:, :, cols]
            valid[i, : tile.height, : tile.width] = part_valid[:, cols]
    return rgb, valid


def _row_runs(tiles: Sequence[Tile]) -> List[List[int]]:
    """Indexes of ``tiles`` grouped into runs of neighbours: same rows, each overlapping or touching the last."""
    runs: List[List[int]] = []
    for i, tile in enumerate(tiles):
        if runs:
            last = tiles[runs[-1][-1]]
            same_rows = (tile.row_off, tile.height) == (last.row_off, last.height)
            if same_rows and last.col_off < tile.col_off <= last.col_off + last.width:
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device (or host) allocation failure: worth retrying with fewer tiles."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # a torch error can only come from a torch already imported
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(exc, cuda_oom):
        return True
    text = str(exc).lower()
    if isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text):
        return True
    # ONNX Runtime's own exception classes (onnxruntime...Fail) are not RuntimeErrors:
    # "[ONNXRuntimeError] : 1 : FAIL : ... BFCArena ... Failed to allocate memory for requested buffer"
    return "onnxruntime" in type(exc).__module__.lower() and (
        "failed to allocate memory" in text or "bad_alloc" in text or "out of memory" in text
    )


def _to_device(x: Any, device: Any) -> Any:
    """Move a batch to the model's device (a seam: tests fake a GPU on a CPU-only machine)."""
    return x if device.type == "cpu" else x.to(device, non_blocking=True)


def _free_device_memory(device: Any) -> None:
    """Give the failed batch's blocks back to the device before retrying."""
    import gc

    gc.collect()
    if device.type == "cpu":
        return
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _move_to_cpu(model: LoadedModel) -> None:
    """Continue on the CPU in float32 (the LoadedModel stays there afterwards)."""
    import torch

    module = model.module
    if model.half and hasattr(module, "float"):
        module = module.float()
    if hasattr(module, "to"):
        module = module.to("cpu")
    model.module, model.device, model.half = module, torch.device("cpu"), False


#: Test-time augmentation: the flips whose predictions are averaged (each undone on the output).
TTA_FLIPS: Tuple[Tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


class BatchPredictor:
    """Runs a loaded model on batches of RGB tiles (numpy in, numpy probabilities out).

    A building-only model gives the building probability, N x H x W. A
    separation model (outputs building, border, contact) gives N x 2 x H x W:
    the building probability and the separation score of
    :func:`~roof_detector.core.vectorize.separation_score`. With ``tta``, each
    batch is run once per flip of :data:`TTA_FLIPS` (4 passes) and the
    outputs, flipped back, are averaged: fewer missed roofs for 4x the model time.

    Out of memory on the device, a batch is retried in halves (down to one
    tile, and later batches keep the smaller size); when even one tile does
    not fit on the GPU, the model moves to the CPU and the run goes on there.
    What happened is said in :meth:`notes` (the result's warnings).

    Each model call runs on its own thread (:func:`.interruptible.call_interruptibly`):
    Ctrl-C, SIGTERM and ``is_cancelled`` end a call that never returns (a model
    file is code and may loop for ever).
    """

    def __init__(self, model: LoadedModel, tta: bool = False, is_cancelled: Optional[CancelFn] = None):
        self.model = model
        self.tta = bool(tta)
        self.is_cancelled = is_cancelled
        self.n_outputs = len(model.outputs)
        self.batch_limit: Optional[int] = None  # tiles per model call after an out-of-memory error
        self.first_oom_batch: Optional[int] = None
        self.fell_back_from: Optional[str] = None  # device type we left for the CPU
        self.nonfinite_px = 0  # NaN / inf probabilities the model returned (counted as "not building")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb``: float32 N x 3 x H x W in [0, 1]; returns float32 probabilities N x H x W
        (separation models: N x 2 x H x W, building probability and separation score)."""
        n = rgb.shape[0]
        step = min(n, self.batch_limit or n)
        probs: Optional[np.ndarray] = None
        i = 0
        while i < n:
            try:
                part = self._call(rgb[i : i + step])
                if probs is None:  # each part goes straight into the result: no second copy of the
                    # batch, which was what ran out of memory after the halving had succeeded
                    probs = part if len(part) == n else np.empty((n,) + part.shape[1:], np.float32)
                if probs is not part:
                    probs[i : i + len(part)] = part
                i += step
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_out_of_memory(exc):
                    raise
                device = self.model.device
                _free_device_memory(device)
                if self.first_oom_batch is None:
                    self.first_oom_batch = step
                if step > 1:
                    step = max(1, step // 2)
                    self.batch_limit = step
                elif device.type != "cpu":
                    self.fell_back_from = device.type
                    _move_to_cpu(self.model)
                else:
                    raise ModelError(
                        "Out of memory on the CPU even with one tile per batch; close other "
                        "programs, or use a model with a smaller tile size"
                    ) from None
        bad = ~np.isfinite(probs)
        if bad.any():  # a broken model: say so rather than silently find nothing
            self.nonfinite_px += int(bad.sum())
            probs = np.where(bad, np.float32(0.0), probs).astype(np.float32, copy=False)
        return probs

    def _call(self, rgb: np.ndarray) -> np.ndarray:
        """:meth:`_run` on a thread that Ctrl-C, SIGTERM or a cancel can leave at once."""
        return call_interruptibly(
            lambda: self._run(rgb), self.is_cancelled, getattr(self.model.module, "stop_runs", None)
        )

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        model = self.model
        if getattr(model.module, "numpy_io", False):
            return self._run_numpy(rgb)
        import torch

        with torch.inference_mode():
            try:
                x = _to_device(torch.from_numpy(rgb), model.device)
                if model.half:
                    x = x.half()
                y = None
                for dims in TTA_FLIPS if self.tta else ((),):
                    yi = model.module(torch.flip(x, dims) if dims else x)
                    self._check_shape(tuple(yi.shape), tuple(x.shape))
                    yi = (torch.flip(yi, dims) if dims else yi).float()
                    y = yi if y is None else y + yi
                return self._probabilities((y / (len(TTA_FLIPS) if self.tta else 1)).cpu().numpy())
            except ModelError:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                if isinstance(exc, RuntimeError):
                    raise ModelError(
                        f"The model failed on a {tuple(rgb.shape)} batch: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    ) from None
                raise

    def _run_numpy(self, rgb: np.ndarray) -> np.ndarray:
        """An ONNX Runtime model: numpy in and out, no torch (with ``tta``, the same flips as torch's)."""
        y = None
        for axes in TTA_FLIPS if self.tta else ((),):
            yi = self._run_numpy_once(np.flip(rgb, axes) if axes else rgb)
            yi = np.flip(yi, axes) if axes else yi
            y = yi if y is None else y + yi
        if self.tta:
            y = y / np.float32(len(TTA_FLIPS))
        return self._probabilities(np.asarray(y, dtype=np.float32))

    def _check_shape(self, out_shape: Tuple[int, ...], in_shape: Tuple[int, ...]) -> None:
        """:class:`ModelError` unless the model returned N x C x H x W for its C declared outputs."""
        c = self.n_outputs
        if len(out_shape) != 4 or out_shape[0] != in_shape[0] or out_shape[1] != c or out_shape[2:] != in_shape[2:]:
            raise ModelError(
                f"The model returned shape {out_shape} for input {in_shape}; "
                f"its metadata declares {c} output(s) ({', '.join(self.model.outputs)}), so it "
                f"must return N x {c} x H x W probabilities"
            )

    def _probabilities(self, y: np.ndarray) -> np.ndarray:
        """The model's N x C x H x W outputs as the engine takes them: the building probability,
        with the separation score beside it for separation models."""
        if self.n_outputs == 1:
            return np.ascontiguousarray(y[:, 0])
        from .vectorize import separation_score

        return np.stack([y[:, 0], separation_score(y.transpose(1, 0, 2, 3))], axis=1)

    def _run_numpy_once(self, rgb: np.ndarray) -> np.ndarray:
        try:
            y = self.model.module.run_numpy(rgb)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            if is_out_of_memory(exc) or "bad_alloc" in str(exc) or "Failed to allocate" in str(exc):
                raise MemoryError(str(exc)) from None
            raise ModelError(
                f"The model failed on a {tuple(rgb.shape)} batch: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        self._check_shape(tuple(y.shape), tuple(rgb.shape))
        return y

    def notes(self) -> List[str]:
        """What the out-of-memory handling did, and non-finite model output, for the user."""
        nan_note = (
            [
                f"The model returned {self.nonfinite_px:,} NaN or infinite probabilities (counted as not "
                "building): the model file is broken or does not suit this imagery; use another model."
            ]
            if self.nonfinite_px
            else []
        )
        if self.first_oom_batch is None:
            return nan_note
        where = {"cuda": "GPU", "mps": "GPU (MPS)"}.get(self.fell_back_from or self.model.device.type, "CPU")
        if self.fell_back_from:
            return nan_note + [
                f"The {where} ran out of memory even with 1 tile per batch (first at "
                f"{self.first_oom_batch} tiles per batch), so the rest of the run went on the CPU: slower, "
                "same result. Close other programs using the GPU, or choose the CPU as device."
            ]
        tiles = "1 tile" if self.batch_limit == 1 else f"{self.batch_limit} tiles"
        return nan_note + [
            f"The {where} ran out of memory with {self.first_oom_batch} tiles per batch; the run went on "
            f"with {tiles} per batch: same result. Set the batch size to {self.batch_limit} "
            "(--batch-size, or Batch size in QGIS) to skip the retries."
        ]


def predict_tiles(
    source: RasterSource,
    grid: ModelGrid,
    tiles: Sequence[Tile],
    model: LoadedModel,
    batch_size: int,
    progress: Optional[ProgressFn] = None,
    is_cancelled: Optional[CancelFn] = None,
    timings: Optional[Dict[str, float]] = None,
    warnings: Optional[List[str]] = None,
    predictor: Optional[BatchPredictor] = None,
) -> Iterator[List[Tuple[Tile, np.ndarray, np.ndarray]]]:
    """Yield, batch by batch, ``[(tile, probability, valid), ...]`` for every tile.

    ``probability`` is float32 ``T x T`` (0 where invalid); for separation
    models ``2 x T x T``, building probability and separation score. ``valid`` bool
    ``T x T`` (False on padding and nodata). ``timings`` accumulates seconds
    under ``"read"`` (on the reader thread, overlapping inference) and
    ``"infer"``; ``timings["batches"]`` counts batches. Raises
    :class:`Cancelled` when ``is_cancelled()`` turns true. Out of memory
    on the device, batches are split and then moved to the CPU (see
    :class:`BatchPredictor`); ``warnings`` receives what happened.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    timings = timings if timings is not None else {}
    timings.setdefault("read", 0.0)
    timings.setdefault("infer", 0.0)
    timings.setdefault("batches", 0)
    tile_px = model.tile_size_px
    batches = [list(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    predictor = predictor or BatchPredictor(model)
    if predictor.is_cancelled is None:
        predictor.is_cancelled = is_cancelled

    def read_batch(batch: List[Tile]) -> Tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = read_tiles(source, grid, batch, tile_px)
        timings["read"] += time.perf_counter() - t0
        return out

    done = 0
    # The reader runs at the lowest priority (the network's gaps), on a lane rescued if starved.
    reader = BackgroundLane("roof-reader")
    pending: Optional[Future] = reader.submit(read_batch, batches[0]) if batches else None
    try:
        for k, batch in enumerate(batches):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled()
            rgb, valid = reader.result(pending)
            # Start reading the next batch before running this one.
            pending = reader.submit(read_batch, batches[k + 1]) if k + 1 < len(batches) else None
            t0 = time.perf_counter()
            prob = predictor(rgb)
            timings["infer"] += time.perf_counter() - t0
            timings["batches"] += 1
            if prob.ndim == 4:
                prob[~np.broadcast_to(valid[:, None], prob.shape)] = 0.0
            else:
                prob[~valid] = 0.0
            yield [(t, prob[i], valid[i]) for i, t in enumerate(batch)]
            done += len(batch)
            if progress is not None:
                progress(done / len(tiles), f"Detecting buildings: tile {done}/{len(tiles)}")
    finally:
        # On cancel / error / early close: do not start more reads; closing waits for a read
        # in flight, so the source is not closed under it.
        reader.close(cancel=True)
        if reader.rescued_after_s is not None:
            timings["reader_rescued_after"] = reader.rescued_after_s
        if warnings is not None:
            warnings.extend(n for n in predictor.notes() if n not in warnings)
