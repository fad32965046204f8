"""``python -m devtools onnx-twin``: write a model file's ONNX twin, checked against it.

The twin (``<model>.onnx`` beside the model file) lets QGIS detect on the
CPU with ONNX Runtime alone, without torch. ``--precision fp32`` exports
the graph and checks it against TorchScript (max abs difference <= 1e-3).
``--precision int8`` quantises it statically (QDQ, per-channel int8
weights) with activation ranges calibrated on tiles of ``--calibration``
rasters (training imagery, never the held-out test areas), and checks that
its masks agree with TorchScript's on >= 99 % of the pixels. With
``--heldout DATA`` the int8 twin must then also keep, on every held-out case
of ``score`` (OAM area 4 at z21 and z19, INRIA test), pixel IoU within
``0.005`` and object F1 within ``0.01`` of the fp32 graph (a drop beyond
that fails; a gain is reported); the figures are recorded in the twin
(property ``heldout``) and printed by ``bench``.
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "onnx-twin", help="write the ONNX twin of a model file (CPU detection without torch)", description=__doc__
    )
    p.add_argument("--model", default=None, help="TorchScript model file (default: bundled)")
    p.add_argument("--out", default=None, help="output .onnx (default: beside the model, same name)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument(
        "--calibration",
        action="append",
        default=[],
        metavar="RASTER",
        help="raster whose tiles calibrate int8 activation ranges (repeatable)",
    )
    p.add_argument("--calibration-tiles", type=int, default=64, help="tiles sampled for calibration (default 64)")
    p.add_argument(
        "--heldout",
        default=None,
        metavar="DATA",
        help="int8 only: score fp32 and int8 on the held-out cases in DATA (../shared/data) and "
        "refuse the int8 twin when IoU drops by > 0.005 or object F1 by > 0.01",
    )
    p.add_argument(
        "--weights-from",
        default=None,
        metavar="PT",
        help="int8 only: quantise these weights, distilled from --model for int8 (devtools.int8_distill), "
        "instead of the model's own; the twin is still the model's",
    )
    p.add_argument(
        "--if-stale", action="store_true", help="do nothing when a twin made from this very model file is already there"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from roof_detector.core.errors import RoofDetectorError
    from roof_detector.core.model_io import BUNDLED_MODEL_PATH, read_metadata
    from roof_detector.core.onnx_twin import find_twin, twin_path
    from roof_detector.core.temp_files import remove_stale, temp_path

    model = str(args.model or BUNDLED_MODEL_PATH)
    meta = read_metadata(model)
    if args.if_stale and not args.out:
        found, _ = find_twin(model, meta)
        if found:
            print(f"{found} is up to date")
            return 0
    from .onnx_twin import make_twin

    calibration = check = None
    if args.precision == "int8":
        from roof_detector.core.onnx_twin import int8_saturation

        if int8_saturation():
            # the twin's check and gate would measure the saturated arithmetic, which no CPU
            # that runs the twin computes (the loader uses fp32 on this one)
            raise RoofDetectorError(
                f"{int8_saturation()}: make and check int8 twins on a CPU with VNNI (AVX-512 VNNI or AVX-VNNI)"
            )
        if not args.calibration:
            raise RoofDetectorError("int8 needs --calibration RASTER (training imagery at the model's GSD or finer)")
        tiles = sample_tiles(args.calibration, meta, args.calibration_tiles)
        calibration = [tiles[i : i + 8] for i in range(0, len(tiles), 8)]
        check = tiles[: min(16, len(tiles))]
    out = args.out or str(twin_path(model))
    gated = args.precision == "int8" and args.heldout
    # A gated twin is made beside `out` and takes its place only once it passes: a refused one
    # deleted the twin it was meant to replace (session 13, `make onnx-twin`).
    # Named by temp_files, so that a candidate a killed run left is removed by the next.
    remove_stale(out, ".onnx")
    made = temp_path(out, ".onnx") if gated else out
    try:
        try:
            figures = make_twin(model, made, args.precision, calibration, check, weights_from=args.weights_from)
        except ValueError as exc:
            raise RoofDetectorError(f"the ONNX twin failed its check: {exc}") from None
        if gated:
            figures["heldout"] = heldout_gate(model, made, args.heldout)
            os.replace(made, out)
            figures["path"] = out
    finally:
        if made != out and os.path.exists(made):
            os.unlink(made)
    print(json.dumps(figures))
    return 0


IOU_TOL = 0.005
F1_TOL = 0.01
GATE_CASES = ["oam_area4_z21", "oam_area4_z19", "inria_test"]


def object_f1(fig) -> float:
    """Object F1 from a ``score`` case's counts."""
    den = fig["predicted"] + fig["reference"]
    return 2.0 * fig["matched"] / den if den else 1.0


def _counts(fig) -> list:
    return [int(fig["predicted"]), int(fig["reference"]), int(fig["matched"])]


def _tuning_objects(data: str, fp32_options, int8_options) -> dict:
    """fp32 and int8 on the tuning scenes (``heldout.build_tuning_cases``), objects pooled: one line."""
    from .heldout import score_all

    pooled = {}
    for name, options in (("fp32", fp32_options), ("int8", int8_options)):
        figs = score_all(data, options, log=lambda m: None, tuning=True).values()
        total = {k: sum(int(f[k]) for f in figs) for k in ("predicted", "reference", "matched")}
        pooled[name] = _counts(total) + [round(object_f1(total), 4)]
    print(
        "tuning scenes (not held out: they chose the engine's constants, most trained the model), objects "
        f"pooled, predicted / reference / matched / F1: fp32 {'/'.join(map(str, pooled['fp32']))}, "
        f"int8 {'/'.join(map(str, pooled['int8']))} (recorded, not gating)"
    )
    return pooled


def heldout_gate(model: str, int8_path: str, data: str):
    """Score the fp32 graph and the int8 twin on the held-out cases; record the figures in the twin,
    or delete it and raise when int8 loses more than the tolerances."""
    import os
    import tempfile

    from roof_detector.core.errors import RoofDetectorError
    from .heldout import score_all
    from .onnx_twin import make_twin, set_properties
    from roof_detector.core.onnx_twin import read_twin_properties
    from roof_detector.core.pipeline import DetectOptions
    from pathlib import Path

    quiet = lambda m: None
    with tempfile.TemporaryDirectory(prefix="roofdet-gate-") as work:
        fp32_options = DetectOptions(
            model_path=make_twin(model, os.path.join(work, "fp32.onnx"), "fp32")["path"], device="cpu"
        )
        int8_options = DetectOptions(model_path=int8_path, device="cpu")
        ref = score_all(data, fp32_options, GATE_CASES, log=quiet)
        got = score_all(data, int8_options, GATE_CASES, log=quiet)
        tuning = _tuning_objects(data, fp32_options, int8_options)
    record, failures = {}, []
    for case in ref:
        a, b = ref[case], got[case]
        d_iou = b["pixel_iou"] - a["pixel_iou"]
        d_f1 = object_f1(b) - object_f1(a)
        record[case] = {
            "fp32_pixel_iou": round(a["pixel_iou"], 4),
            "int8_pixel_iou": round(b["pixel_iou"], 4),
            "fp32_object_f1": round(object_f1(a), 4),
            "int8_object_f1": round(object_f1(b), 4),
            "delta_pixel_iou": round(d_iou, 4),
            "delta_object_f1": round(d_f1, 4),
            # one building moves object F1 by 2 / (predicted + reference): the counts show how many
            "fp32_predicted_reference_matched": _counts(a),
            "int8_predicted_reference_matched": _counts(b),
        }
        print(
            f"{case:15s} pixel IoU fp32 {a['pixel_iou']:.4f} int8 {b['pixel_iou']:.4f} ({d_iou:+.4f});  "
            f"object F1 fp32 {object_f1(a):.4f} int8 {object_f1(b):.4f} ({d_f1:+.4f}; buildings "
            f"predicted / reference / matched fp32 {'/'.join(map(str, _counts(a)))}, "
            f"int8 {'/'.join(map(str, _counts(b)))})"
        )
        if d_iou < -IOU_TOL or d_f1 < -F1_TOL:
            failures.append(case)
    record["tuning_pooled"] = tuning  # evidence on six times area 4's buildings: printed, not gating
    if failures:
        Path(int8_path).unlink(missing_ok=True)
        raise RoofDetectorError(
            f"int8 loses more than {IOU_TOL} pixel IoU or {F1_TOL} object F1 on "
            f"{', '.join(failures)}; no int8 twin written, the one there is kept (use --precision fp32)"
        )
    props = read_twin_properties(int8_path)
    record["recorded"] = _code_version()  # the figures hold for the outline code of that day only
    props["heldout"] = json.dumps(record)
    set_properties(Path(int8_path), props)
    return record


def _code_version() -> str:
    """``YYYY-MM-DD, commit <hash>[ + local changes]`` of this checkout (the date alone outside git)."""
    import datetime
    import os
    import subprocess

    day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return day
    return f"{day}, commit {head}{' + local changes' if dirty else ''}" if head else day


def sample_tiles(rasters, meta, count: int, seed: int = 0):
    """``count`` model tiles (float32 N x 3 x T x T) with mostly valid pixels, spread over ``rasters``."""
    import numpy as np

    from roof_detector.core.geo import pixel_size_m
    from roof_detector.core.inference import read_tiles
    from roof_detector.core.raster_source import open_source
    from roof_detector.core.tiling import model_grid, tile_grid

    rng = np.random.default_rng(seed)
    tile_px, overlap = int(meta["tile_size_px"]), int(meta["overlap_px"])
    picked = []
    per_raster = -(-count // len(rasters))
    for path in rasters:
        src, _owned = open_source(path)
        try:
            px_m = pixel_size_m(src.crs_wkt, src.transform, src.width, src.height)
            grid = model_grid(src.transform, src.width, src.height, px_m, float(meta["gsd_m"]))
            tiles = tile_grid(grid.width_px, grid.height_px, tile_px, overlap)
            got = 0
            for i in rng.permutation(len(tiles)):
                rgb, valid = read_tiles(src, grid, [tiles[i]], tile_px)
                if valid.mean() >= 0.9:
                    picked.append(rgb[0])
                    got += 1
                    if got >= per_raster:
                        break
        finally:
            src.close()
    if not picked:
        from roof_detector.core.errors import InputRasterError

        raise InputRasterError("no calibration tile with >= 90 % valid pixels in the rasters given")
    return np.stack(picked[:count])
