"""``python -m roof_detector evaluate``: compare predicted with reference building polygons.

Pixel IoU / accuracy / precision / recall / F1 on a raster's grid (nodata
excluded) or on an extent + pixel size, and object precision / recall / F1 of
buildings matched one-to-one at IoU >= 0.5. See :mod:`roof_detector.core.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import LabelError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="pixel and object metrics of predicted vs reference polygons",
        description="Compare predicted building polygons with reference polygons: pixel IoU, accuracy, "
        "precision, recall, F1 (pooled over valid pixels) and object precision/recall/F1 "
        "(one-to-one matches at IoU >= threshold).",
    )
    p.add_argument("--reference", required=True, metavar="REF", help="reference polygon layer (e.g. OSM buildings)")
    p.add_argument("--predicted", required=True, metavar="PRED", help="predicted polygon layer")
    p.add_argument("--reference-layer", metavar="NAME", help="layer of REF (default: first polygon layer)")
    p.add_argument("--predicted-layer", metavar="NAME", help="layer of PRED (default: first polygon layer)")
    grid = p.add_argument_group("pixel grid (a raster, or an extent and a pixel size)")
    grid.add_argument("--raster", metavar="R", help="raster whose grid is used; its nodata/mask pixels are excluded")
    grid.add_argument(
        "--extent", nargs=4, type=float, metavar=("XMIN", "YMIN", "XMAX", "YMAX"), help="grid extent in the grid CRS"
    )
    grid.add_argument("--pixel-size", type=float, metavar="S", help="grid pixel size in CRS units")
    grid.add_argument("--crs", help="grid CRS with --extent, e.g. EPSG:32737 (default: the reference layer's)")
    p.add_argument("--iou-threshold", type=float, default=0.5, metavar="T", help="object match threshold (default 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..core.evaluate import evaluate_files

    if not args.raster and (args.extent is None or args.pixel_size is None):
        raise LabelError("Give --raster, or --extent and --pixel-size, for the pixel grid")
    if args.raster and args.extent is not None:
        raise LabelError("Give either --raster or --extent, not both")
    if args.raster and (args.pixel_size is not None or args.crs is not None):
        # the raster's own grid is used: a pixel size or CRS given too was silently ignored
        raise LabelError("--pixel-size and --crs go with --extent; with --raster the grid is the raster's own")
    if not 0 < args.iou_threshold <= 1:
        raise LabelError(f"--iou-threshold {args.iou_threshold} must be in (0, 1]")
    result = evaluate_files(
        args.predicted,
        args.reference,
        raster_path=args.raster,
        extent=args.extent,
        pixel_size=args.pixel_size,
        crs=args.crs,
        predicted_layer=args.predicted_layer,
        reference_layer=args.reference_layer,
        iou_threshold=args.iou_threshold,
    )
    d = result.as_dict()
    if args.json:
        print(json.dumps(d, sort_keys=True))
        return 0
    px, ob = d["pixel"], d["object"]
    print(f"pixels ({px['valid_pixels']:,} valid)")
    for key in ("iou", "accuracy", "precision", "recall", "f1"):
        print(f"  {key:<10} {_fmt(px[key])}")
    print(f"objects (matched one-to-one at IoU >= {ob['iou_threshold']:g})")
    print(f"  predicted  {ob['predicted']}")
    print(f"  reference  {ob['reference']}")
    print(f"  matched    {ob['matched']}")
    for key in ("precision", "recall", "f1"):
        print(f"  {key:<10} {_fmt(ob[key])}")
    print(f"  mean IoU of matched buildings {_fmt(ob['mean_matched_iou'])}")
    print(
        "shape (vertices: median per polygon; regular: <= 16 vertices, 90 % of the outline within 10 degrees "
        "of its axes)"
    )
    for side in ("predicted", "reference"):
        sh = d["shape"][side]
        print(
            f"  {side:<10} median vertices {_fmt(sh['median_vertices'], 'g')}, "
            f"regular {_fmt(sh['regular_share'], '.1%')}"
        )
    if px["iou"] is None or ob["f1"] is None:
        print(
            "warning: no building in either layer on the grid: the ratios that need one are n/a "
            "(nothing measured is not a perfect score)",
            file=sys.stderr,
        )
    return 0


def _fmt(value, spec: str = ".4f") -> str:
    """A figure, or "n/a" where nothing was measured."""
    return "n/a" if value is None else format(value, spec)
