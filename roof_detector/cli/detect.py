"""``python -m roof_detector detect RASTER -o OUT.gpkg``: building footprints of one raster.

Shows a progress bar on stderr and ends with one summary line on stdout.
The output is checked before the (long) detection starts, and written only
once detection has finished, atomically: an error or Ctrl-C leaves nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Callable, Iterator

DESCRIPTION = "Detect building footprints in an orthophoto and write them to a GeoPackage."


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``detect`` sub-command."""
    p = subparsers.add_parser("detect", help="find building footprints in a raster", description=DESCRIPTION)
    p.add_argument("raster", help="orthophoto: GeoTIFF or any raster GDAL reads (1, 2 = grey + alpha, 3 or 4 "
                                  "bands; any integer or real type)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.gpkg", help="GeoPackage to write")
    p.add_argument("--layer", default="buildings", help="layer name in the GeoPackage (default: buildings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing layer of the same name")
    p.add_argument("--model", metavar="PATH", help="model file (default: the bundled model)")
    p.add_argument("--threshold", type=_probability, metavar="T",
                   help="probability threshold in (0, 1) (default: the model's)")
    p.add_argument("--min-area", type=_non_negative, default=10.0, metavar="M2",
                   help="drop buildings smaller than this many square metres (default: 10)")
    p.add_argument("--separate-touching", action=argparse.BooleanOptionalAction, default=True,
                   help="split touching roofs along the probability valley between them, one polygon per "
                        "roof (default: yes)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    p.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help="tiles per batch (default: 8 on CPU, 32 on GPU)")
    p.add_argument("-y", "--yes", action="store_true",
                   help="run even when the raster is very large (more than 100,000 tiles or more memory than "
                        "is free); without it such a run is refused before it starts")
    from .solar import add_solar_arguments

    add_solar_arguments(p, regularize_default=True,
                        regularize_help="square the outlines (right angles, 45-degree diagonals) before "
                                        "measuring (default: yes)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Detect, write, print the summary; engine errors propagate to the dispatcher (exit 2)."""
    from ..core.errors import LargeRunError
    from ..core.gpkg_writer import check_output, write_buildings
    from ..core.pipeline import DetectOptions, check_detection_size, detect_buildings

    # Refuse a clobber before spending minutes on detection.
    check_output(args.output, args.layer, args.overwrite)
    from .solar import solar_params

    options = DetectOptions(model_path=args.model, device=args.device, threshold=args.threshold,
                            min_area_m2=args.min_area, batch_size=args.batch_size,
                            separate_touching=args.separate_touching, regularize=args.regularize,
                            regularize_tolerance_m=args.tolerance, solar=solar_params(args),
                            confirm_large_run=args.yes)
    # The size of the run and the coarse-pixel warning before the work, not after it.
    try:
        estimate = check_detection_size(args.raster, options)
    except LargeRunError as exc:
        raise LargeRunError(f"{exc}" + ("; pass --yes to run it anyway" if exc.confirmable else ""),
                            exc.confirmable) from None
    shown = set()
    if estimate is not None:
        print(f"detect: {estimate.describe()}", file=sys.stderr)
        for warning in estimate.warnings:
            print(f"warning: {warning}", file=sys.stderr)
            shown.add(warning)
    t0 = time.perf_counter()
    with progress_bar() as progress:
        result = detect_buildings(args.raster, options, progress=progress)
    for warning in result.warnings:
        if warning not in shown:
            print(f"warning: {warning}", file=sys.stderr)
    meta = result.model_metadata
    write_buildings(result.buildings, args.output, result.crs_wkt, layer=args.layer, overwrite=args.overwrite,
                    metadata={"source_raster": result.raster_path,
                              "model": f"{meta.get('name', '?')} {meta.get('version', '')}".strip(),
                              "threshold": result.stats.get("threshold"),
                              "min_area_m2": args.min_area})
    seconds = time.perf_counter() - t0
    print(f"{len(result.buildings)} buildings, total area {result.total_area_m2:.1f} m2, "
          f"{seconds:.1f} s -> {args.output} (layer {args.layer})")
    return 0


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[float, str], None]]:
    """A tqdm bar on stderr, yielded as the engine's ``progress(fraction, message)`` callback."""
    from tqdm import tqdm

    with tqdm(total=100, file=sys.stderr, unit="%", dynamic_ncols=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.set_description_str(message, refresh=False)
            bar.update(round(100.0 * min(max(fraction, 0.0), 1.0), 1) - bar.n)

        yield progress


def _number(text: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _probability(text: str) -> float:
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value

