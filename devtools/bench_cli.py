"""``python -m devtools bench``: speed and memory figures, human-readable plus one JSON line.

Figures: ``model_tiles_per_s`` (forward passes only, the pipeline's backend
and batch size), ``pipeline_tiles_per_s`` and ``km2_per_min`` (read,
resample, infer, stitch, binarise, polygonise, attributes, GeoPackage on a
generated raster of ``--size`` px at the model GSD), ``pipeline_over_model``
(against the network's median batch just before each run) and
``pipeline_over_network_sustained`` (against the network alone over the same
tiles, as a total), the same detection without regularisation and what
regularising costs (``regularise_cost_ms_per_building``),
``gflops_per_s`` with its share of the CPU's base-clock peak and a
measured fp32 matmul rate for reference, ``onnxruntime_tiles_per_s``
(the fp32 graph) with output agreement, the shipped ONNX twin's
``int8_tiles_per_s`` (or ``fp32_tiles_per_s``) with the held-out IoU / F1
differences recorded in it (``int8_heldout``), ``peak_rss_mb`` (per size, each in its own process),
and the fine-tuning time for 10 epochs on 2048 x 2048 px.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the network, the whole pipeline and fine-tuning", description=__doc__)
    p.add_argument("--model", default=None, help="model file (default: bundled)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--size",
        type=int,
        action="append",
        default=None,
        help="raster size in px for the pipeline run (repeatable; default 8192)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="tiles per batch (default: the pipeline's)")
    p.add_argument("--repeats", type=int, default=3, help="pipeline runs per size (median reported)")
    p.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning timing")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--part", choices=["all", "pipeline"], default="all", help=argparse_hidden())
    p.set_defaults(func=run)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def run(args) -> int:
    from . import bench
    from roof_detector.core.errors import RoofDetectorError
    from roof_detector.core.devices import resolve_device

    sizes = args.size or [8192]
    if any(size < 256 for size in sizes) or args.repeats < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise RoofDetectorError("--size must be at least 256 px, --repeats and --batch-size at least 1")
    if args.part == "pipeline":  # child process of the main bench
        print(bench.as_json_line(bench.pipeline_run(sizes[0], args.model, args.device, args.batch_size, args.repeats)))
        return 0
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    device = resolve_device(args.device)
    batch = _batch_size(args, device)
    figures = {"machine": bench.machine(), "batch_size": batch}
    say(f"machine: {figures['machine']}")
    figures.update(bench.model_throughput(args.model, args.device, batch))
    _say_model(figures, device, say)
    if device.type == "cpu" and "gflops_per_s" in figures:
        _add_peak_share(figures, say)
    _add_pipeline_runs(figures, sizes, args, batch, say)
    if not args.no_finetune:
        say("fine-tuning 10 epochs on 2048 x 2048 px ...")
        figures.update(bench.finetune_time(args.model, args.device))
        say(f"  {figures['finetune_10_epochs_s']} s")
    print(bench.as_json_line(figures))
    return 0


def _batch_size(args, device) -> int:
    """The batch size detection would pick (fitted to free memory on CUDA), passed on to the
    pipeline runs so that both figures use the same settings."""
    from roof_detector.core.inference import default_batch_size, fitted_batch_size
    from roof_detector.core.model_io import load_model

    if args.batch_size:
        return args.batch_size
    if device.type == "cuda":
        return fitted_batch_size(load_model(args.model, args.device))
    return default_batch_size(device)


def _say_model(figures: dict, device, say) -> None:
    """The network's throughput per backend, and the ONNX twin's with its held-out differences."""
    say(
        f"model ({figures['backend']}): {figures['model_tiles_per_s']} tiles/s"
        + (
            f", TorchScript {figures.get('torchscript_tiles_per_s')}, ONNX Runtime {figures.get('onnxruntime_tiles_per_s')}"
            f" fp32 (max diff {figures.get('onnxruntime_max_abs_diff', float('nan')):.1e})"
            if device.type == "cpu"
            else ""
        )
    )
    if "onnx_twin_precision" in figures:
        p = figures["onnx_twin_precision"]
        say(
            f"ONNX twin {figures['onnx_twin']} ({p}, {figures['onnx_twin_mb']} MB): {figures[p + '_tiles_per_s']} "
            f"tiles/s vs fp32 {figures.get('onnxruntime_tiles_per_s')} tiles/s"
        )
        if figures.get("int8_saturation"):
            say(f"  not used for detection here: {figures['int8_saturation']}; fp32 runs instead")
        heldout = dict(figures.get("int8_heldout") or {})
        made = heldout.pop("recorded", None)
        tuning = heldout.pop("tuning_pooled", None)
        if heldout:  # the release gate's figures, from the code of that day: outline changes since move them
            say("  held-out check recorded when the twin was made" + (f" ({made})" if made else "") + ":")
        for case, h in heldout.items():
            say(
                f"  held-out {case}: pixel IoU fp32 {h['fp32_pixel_iou']} int8 {h['int8_pixel_iou']} "
                f"({h['delta_pixel_iou']:+}), object F1 fp32 {h['fp32_object_f1']} int8 {h['int8_object_f1']} "
                f"({h['delta_object_f1']:+})"
            )
        if tuning:
            say(
                "  tuning scenes, objects pooled (predicted / reference / matched / F1): "
                f"fp32 {'/'.join(map(str, tuning['fp32']))}, int8 {'/'.join(map(str, tuning['int8']))}"
            )
    elif device.type == "cpu":
        say(f"ONNX twin: {figures.get('onnx_twin')}")


def _add_peak_share(figures: dict, say) -> None:
    """The network's GFLOP/s as a share of the CPU's fp32 peak, beside a measured matmul rate."""
    from . import bench

    peak = bench.cpu_peak_gflops()
    figures["cpu_peak"] = peak
    figures["share_of_peak"] = (
        float(f"{figures['gflops_per_s'] / peak['peak_gflops']:.3g}") if peak["peak_gflops"] else None
    )
    figures["matmul_gflops_per_s"] = bench.matmul_gflops()
    say(
        f"network: {figures['gflops_per_s']} GFLOP/s = {figures['share_of_peak']:.1%} of the "
        f"{peak['peak_gflops']} GFLOP/s fp32 peak at the base clock ({peak}; cores that boost "
        f"can exceed it); torch fp32 matmul 2048^2 on the same threads: {figures['matmul_gflops_per_s']} GFLOP/s"
    )


def _add_pipeline_runs(figures: dict, sizes, args, batch: int, say) -> None:
    """Whole-pipeline runs per size, each in its own process; the first size's figures at the top level."""
    from . import bench

    figures["pipeline"] = {}
    for size in sizes:
        say(f"pipeline on {size} x {size} px ({args.repeats} runs) ...")
        r = bench.pipeline_in_child(size, args.model, args.device, batch, args.repeats)
        figures["pipeline"][str(size)] = r
        if "error" in r:
            say(f"  failed: {r['error']}")
            continue
        # Median of per-run ratios to the network timed just before each run (in the same
        # process); the ratio to the up-front figure is kept too.
        r["pipeline_over_model_upfront"] = round(r["pipeline_tiles_per_s"] / figures["model_tiles_per_s"], 3)
        r.setdefault("pipeline_over_model", r["pipeline_over_model_upfront"])
        say(
            f"  {r['tiles']} tiles in {r['pipeline_s']} s: {r['pipeline_tiles_per_s']} tiles/s, "
            f"{r['km2_per_min']} km2/min, pipeline/model {r['pipeline_over_model']} (median of runs "
            f"{r.get('pipeline_over_model_paired')}; network before each run {r.get('model_tiles_per_s_paired')} "
            f"tiles/s), peak RSS {r['peak_rss_mb']} MB, "
            f"stages {r['stage_s']}"
        )
        if "pipeline_over_network_sustained" in r:
            say(
                f"  network alone over the same {r['tiles']} tiles (one total, between each repeat's two runs): "
                f"{r['network_sustained_s']} s; pipeline/network sustained {r['pipeline_over_network_sustained']}; "
                f"without regularisation: {r['pipeline_unregularised_s']} s, pipeline/network sustained "
                f"{r['pipeline_unregularised_over_network_sustained']}; regularising costs {r['regularise_cost_s']} s "
                f"per run = {r['regularise_cost_ms_per_building']} ms per building found"
            )
    first = figures["pipeline"].get(str(sizes[0]), {})
    for key in ("pipeline_tiles_per_s", "km2_per_min", "pipeline_over_model", "peak_rss_mb"):
        if key in first:
            figures[key] = first[key]
