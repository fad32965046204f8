"""Benchmark figures: network alone, whole pipeline, ONNX Runtime, memory, fine-tuning.

Every timing is a median over repeats, all measured in one run on the same
machine. The pipeline and its peak memory are measured in a child process
per raster size, so one size's peak does not hide another's.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from roof_detector.core.inference import fitted_batch_size
from roof_detector.core.model_io import load_model


def cpu_peak_gflops() -> Dict[str, Any]:
    """Theoretical fp32 peak of the CPU cores torch uses: cores x GHz x FLOP per cycle.

    FLOP per cycle per core: 64 with AVX-512 on cores with two 512-bit FMA
    pipes (Intel server cores, AMD Zen 5 = family 26), 32 with AVX2+FMA (two
    256-bit pipes, incl. Zen 4's double-pumped AVX-512), else 16. The clock
    is /proc/cpuinfo's "cpu MHz" (base, not boost: a lower bound of peak).
    """
    flags, mhz, family = set(), 0.0, 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(val.split())
                elif key == "cpu MHz" and not mhz:
                    mhz = float(val)
                elif key == "cpu family" and not family:
                    family = int(val)
    except OSError:
        pass
    vendor_amd = "extd_apicid" in flags
    if "avx512f" in flags and (not vendor_amd or family >= 26):
        per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    else:
        per_cycle = 16
    cores = torch.get_num_threads()
    return {
        "cores": cores,
        "ghz": round(mhz / 1000, 3),
        "flop_per_cycle": per_cycle,
        "peak_gflops": round(cores * mhz / 1000 * per_cycle, 1),
    }


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matrix-multiply rate (n x n, torch's threads), in GFLOP/s.

    A practical reference for the network's rate: the base-clock peak of
    cpu_peak_gflops() understates cores that boost, so a network can show a
    "share of peak" above 100 %, whereas this figure is measured alongside it.
    """
    a, b = torch.rand(n, n), torch.rand(n, n)
    rate = _median_rate(lambda: a @ b, 1, repeats)
    return round(2 * n**3 * rate / 1e9, 1)


def _median_rate(fn, n_items: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / statistics.median(times)


def model_throughput(model_path: Optional[str], device: str, batch_size: int, repeats: int = 20) -> Dict[str, Any]:
    """Forward passes only: tiles/s of the pipeline's backend, of TorchScript and of ONNX Runtime."""
    out: Dict[str, Any] = {}
    model = load_model(model_path, device)
    xd = _random_batch(model, batch_size)

    def run(m):
        def f():
            with torch.inference_mode():
                y = m(xd)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
            return y

        return f

    out["backend"] = model.extra.get("backend", "torch")
    out["model_tiles_per_s"] = round(_median_rate(run(model.module), batch_size, repeats), 2)
    gflop = model.metadata.get("architecture", {}).get("gflop_per_tile")
    if gflop:
        out["gflop_per_tile"] = gflop
        rate = out["model_tiles_per_s"] * gflop  # tiny test models: 3 decimals, not a rounded 0.0
        out["gflops_per_s"] = round(rate, 1) if rate >= 1 else float(f"{rate:.3g}")
    if model.device.type == "cpu":
        ts = load_model(model_path, "cpu", backend="torch")
        out["torchscript_tiles_per_s"] = round(_median_rate(run(ts.module), batch_size, repeats), 2)
        try:  # the fp32 graph exported from TorchScript (cached), whatever twin lies beside the model
            from roof_detector.core.onnx_backend import onnx_module_for

            fp32, _ = onnx_module_for(ts.path, ts.metadata, _unfrozen(ts.path))
            out["onnxruntime_tiles_per_s"] = round(_median_rate(run(fp32), batch_size, repeats), 2)
            with torch.inference_mode():
                diff = float((fp32(xd) - ts.module(xd)).abs().max())  # on the CPU: float32
            out["onnxruntime_max_abs_diff"] = diff
            out["onnxruntime_agrees_1e-3"] = diff <= 1e-3
        except Exception as exc:  # noqa: BLE001 - reported, not fatal: the bench still gives the other figures
            out["onnxruntime_error"] = str(exc).splitlines()[0]
        out.update(twin_figures(model_path, run, batch_size, repeats))
    return out


def _unfrozen(path: str):
    from roof_detector.core.torchscript import jit_load

    return jit_load(path).eval()


def twin_figures(model_path: Optional[str], run, batch_size: int, repeats: int) -> Dict[str, Any]:
    """The shipped ONNX twin's precision and tiles/s, and the held-out figures recorded in it."""
    import json

    from roof_detector.core.model_io import BUNDLED_MODEL_PATH, read_metadata
    from roof_detector.core.onnx_twin import (
        OnnxModule,
        find_twin,
        onnxruntime_available,
        read_twin_properties,
        twin_saturation,
    )

    path = str(model_path or BUNDLED_MODEL_PATH)
    if not onnxruntime_available():
        return {}
    twin, why = find_twin(path, read_metadata(path))
    if twin is None:
        return {"onnx_twin": why}
    module = OnnxModule(twin)
    props = read_twin_properties(twin)
    out: Dict[str, Any] = {
        "onnx_twin": os.path.basename(twin),
        "onnx_twin_precision": module.precision,
        "onnx_twin_mb": round(os.path.getsize(twin) / 1e6, 2),
    }
    out[f"{module.precision}_tiles_per_s"] = round(_median_rate(run(module), batch_size, repeats), 2)
    saturates = twin_saturation(module)
    if saturates:
        out["int8_saturation"] = saturates  # timed here, but detection runs fp32 (README, ONNX twin)
    if "heldout" in props:
        out["int8_heldout"] = json.loads(props["heldout"])
    return out
    return out


def pipeline_run(
    size_px: int,
    model_path: Optional[str],
    device: str,
    batch_size: Optional[int],
    repeats: int,
    gsd_m: Optional[float] = None,
) -> Dict[str, Any]:
    """Whole detection on a generated raster (read .. GeoPackage); meant for a child process.

    Each repeat: the network alone for :data:`PAIRED_MODEL_BATCHES` batches (its
    median batch: ``pipeline_over_model``'s reference) just before the detection
    with the default options; the same detection without outline regularisation
    (after it in even repeats, before the network and it in odd ones); and between
    the two, the network alone over as many tiles as a detection (its total time:
    ``pipeline_over_network_sustained``'s reference). A median batch leaves out the slow
    batches a total includes, as the detection's own time does; the plain run shows
    what regularising costs the whole detection, on the same machine a minute apart.
    """
    from .synthetic import write_orthophoto

    model = load_model(model_path, device)
    gsd = gsd_m or model.gsd_m
    out: Dict[str, Any] = {"size_px": size_px, "backend": model.extra.get("backend", "torch")}
    with tempfile.TemporaryDirectory(prefix="roofdet-bench-") as tmp:
        raster = os.path.join(tmp, "ortho.tif")
        t0 = time.perf_counter()
        out["buildings_drawn"] = write_orthophoto(raster, size_px, gsd)
        out["generate_s"] = round(time.perf_counter() - t0, 1)
        rss_before = _peak_rss_mb()
        batch = batch_size or fitted_batch_size(model)
        t = _Timings()
        forward = _forward_timer(model, batch)
        forward(3)  # warm-up

        def usual_run(i: int) -> int:
            # The network alone, just before each run, on the same loaded model: the machine's
            # speed drifts by several per cent over minutes, so each run gets its own reference.
            model_rate = forward(PAIRED_MODEL_BATCHES)
            res, seconds = _detect_and_write(
                raster, os.path.join(tmp, f"out{i}.gpkg"), model, model_path, device, batch_size
            )
            t.secs.append(seconds)
            t.model_rates.append(model_rate)
            t.ratios.append(res.stats["tiles"] / seconds / model_rate)
            t.stages.append(res.stats["timings_s"])
            out["buildings_found"] = len(res.buildings)
            return res.stats["tiles"]

        def plain_run(i: int) -> int:
            plain, seconds = _detect_and_write(
                raster, os.path.join(tmp, f"plain{i}.gpkg"), model, model_path, device, batch_size, regularize=False
            )
            t.plain_secs.append(seconds)
            out["buildings_found_unregularised"] = len(plain.buildings)
            return plain.stats["tiles"]

        for i in range(repeats):
            # The two detections in turn (usual first, then plain first), the sustained network
            # always between them, so a drift of the machine's speed favours neither.
            first, second = (usual_run, plain_run) if i % 2 == 0 else (plain_run, usual_run)
            t.tiles = first(i)
            t.sustained.append(_sustained_seconds(model, batch, t.tiles))
            second(i)
        out.update(_timing_figures(t, size_px * gsd, out["buildings_found"]))
        out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        out["peak_rss_before_pipeline_mb"] = round(rss_before, 1)
    return out


@dataclass
class _Timings:
    """What :func:`pipeline_run`'s repeats measured, one entry per repeat (seconds, tiles/s)."""

    secs: List[float] = field(default_factory=list)  # the usual detections
    plain_secs: List[float] = field(default_factory=list)  # the same without regularisation
    sustained: List[float] = field(default_factory=list)  # the network alone over a detection's tiles
    model_rates: List[float] = field(default_factory=list)  # the network's median batch before each usual run
    ratios: List[float] = field(default_factory=list)
    stages: List[Dict[str, float]] = field(default_factory=list)
    tiles: int = 0


def _timing_figures(t: _Timings, side_m: float, buildings: int) -> Dict[str, Any]:
    """The bench's pipeline figures from the repeats' timings (medians, and the per-run lists)."""
    med = statistics.median(t.secs)
    cost_s = statistics.median(a - b for a, b in zip(t.secs, t.plain_secs))
    return {
        "tiles": t.tiles,
        "pipeline_s": round(med, 2),
        "pipeline_tiles_per_s": round(t.tiles / med, 2),
        "km2_per_min": round(side_m**2 / 1e6 / (med / 60), 3),
        "stage_s": t.stages[t.secs.index(sorted(t.secs)[len(t.secs) // 2])],
        "model_tiles_per_s_paired": [round(r, 2) for r in t.model_rates],
        "pipeline_over_model_paired": [round(r, 3) for r in t.ratios],
        "pipeline_over_model": round(statistics.median(t.ratios), 3),
        "network_sustained_s": [round(s, 3) for s in t.sustained],
        "pipeline_over_network_sustained": round(statistics.median(s / p for s, p in zip(t.sustained, t.secs)), 3),
        "pipeline_unregularised_s": [round(s, 3) for s in t.plain_secs],
        "pipeline_unregularised_over_network_sustained": round(
            statistics.median(s / p for s, p in zip(t.sustained, t.plain_secs)), 3
        ),
        "regularise_cost_s": round(cost_s, 3),
        "regularise_cost_ms_per_building": round(1000 * cost_s / max(1, buildings), 3),
    }


def _detect_and_write(raster: str, gpkg: str, model, model_path, device, batch_size, regularize: bool = True):
    """One whole detection on the loaded model, GeoPackage included: (result, wall seconds)."""
    from roof_detector.core.gpkg_writer import write_buildings
    from roof_detector.core.pipeline import DetectOptions, detect_buildings

    options = DetectOptions(model_path=model_path, device=device, batch_size=batch_size, regularize=regularize)
    t0 = time.perf_counter()
    res = detect_buildings(raster, options, model=model)
    write_buildings(res.buildings, gpkg, res.crs_wkt)
    return res, time.perf_counter() - t0


def _sustained_seconds(model, batch_size: int, tiles: int) -> float:
    """Wall seconds of the network alone over ``tiles`` tiles (random input, whole batches), as one total."""
    x = _random_batch(model, batch_size)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(-(-tiles // batch_size)):
            model.module(x)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _random_batch(model, batch_size: int):
    """The bench's input: a fixed random RGB batch on the model's device (half where the model is)."""
    tile = model.tile_size_px
    x = torch.rand(batch_size, 3, tile, tile, generator=torch.Generator().manual_seed(0)).to(model.device)
    return x.half() if model.half else x


#: Batches timed for the network-alone reference before each pipeline run.
PAIRED_MODEL_BATCHES = 40


def _forward_timer(model, batch_size: int):
    """A function timing ``n`` forward passes of random batches: returns tiles/s (median batch)."""
    x = _random_batch(model, batch_size)

    def timed(n: int) -> float:
        times = []
        with torch.inference_mode():
            for _ in range(n):
                t0 = time.perf_counter()
                model.module(x)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        return batch_size / statistics.median(times)

    return timed


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pipeline_in_child(
    size_px: int, model_path: Optional[str], device: str, batch_size: Optional[int], repeats: int
) -> Dict[str, Any]:
    """:func:`pipeline_run` in a fresh interpreter, so its peak RSS is its own."""
    cmd = [
        sys.executable,
        "-m",
        "devtools",
        "bench",
        "--part",
        "pipeline",
        "--size",
        str(size_px),
        "--device",
        device,
        "--repeats",
        str(repeats),
        "--json",
    ]
    if model_path:
        cmd += ["--model", model_path]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"size_px": size_px, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def finetune_time(model_path: Optional[str], device: str, size_px: int = 2048, epochs: int = 10) -> Dict[str, Any]:
    """Wall time of fine-tuning ``epochs`` epochs on a generated labelled area of ``size_px`` square."""
    from roof_detector.core.model_io import read_metadata, BUNDLED_MODEL_PATH
    from .synthetic import building_rectangles, write_orthophoto
    from roof_detector.core.training.finetune import FinetuneOptions, finetune

    meta = read_metadata(model_path or BUNDLED_MODEL_PATH)
    gsd = float(meta["gsd_m"])
    with tempfile.TemporaryDirectory(prefix="roofdet-bench-ft-") as tmp:
        raster = os.path.join(tmp, "ortho.tif")
        write_orthophoto(raster, size_px, gsd)
        labels = os.path.join(tmp, "labels.gpkg")
        _write_rect_labels(labels, building_rectangles(size_px), gsd)
        t0 = time.perf_counter()
        res = finetune(
            FinetuneOptions(
                raster_path=raster,
                labels_path=labels,
                output_path=os.path.join(tmp, "m.pt"),
                base_model_path=model_path,
                epochs=epochs,
                patience=epochs + 1,
                device=device,
            ),
            log=lambda m: None,
        )
        return {
            "finetune_size_px": size_px,
            "finetune_epochs": len(res.history),
            "finetune_10_epochs_s": round(time.perf_counter() - t0, 1),
            "finetune_val_iou_before_after": [round(res.before.get("iou", 0), 4), round(res.after.get("iou", 0), 4)],
        }


def _write_rect_labels(path: str, rects, gsd_m: float, origin=(500000.0, 5000000.0)) -> None:
    from osgeo import ogr, osr

    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    lyr = ds.CreateLayer("buildings", srs, ogr.wkbPolygon)
    for r, c, h, w in rects:
        x0, y0 = origin[0] + c * gsd_m, origin[1] - r * gsd_m
        x1, y1 = x0 + w * gsd_m, y0 - h * gsd_m
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"))
        lyr.CreateFeature(f)
    ds = None


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    info: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def as_json_line(figures: Dict[str, Any]) -> str:
    """One JSON line (numpy scalars converted)."""
    return json.dumps(figures, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
