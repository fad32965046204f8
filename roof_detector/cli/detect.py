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

from . import wrote
from .arguments import add_params, values
from .progress import ProgressBar

DESCRIPTION = "Detect building footprints in an orthophoto and write them to a GeoPackage."


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``detect`` sub-command."""
    p = subparsers.add_parser("detect", help="find building footprints in a raster", description=DESCRIPTION)
    p.add_argument(
        "raster",
        help="orthophoto: GeoTIFF or any raster GDAL reads (1, 2 = grey + alpha, 3 or 4 "
        "bands; any integer or real type)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.gpkg", help="GeoPackage to write")
    p.add_argument("--layer", default="buildings", help="layer name in the GeoPackage (default: buildings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing layer of the same name")
    add_engine_arguments(p)
    p.set_defaults(func=run)
    return p


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The detection options every detecting command shares (``detect``, ``detect-many``).

    Built from the declarations of :mod:`roof_detector.core.params` (DETECT,
    OUTLINES, SOLAR); their values become
    :class:`~roof_detector.core.pipeline.DetectOptions` through
    :func:`detect_options`, the one place where arguments map onto the engine.
    """
    p.add_argument("--model", metavar="PATH", help="model file (default: the bundled model)")
    add_params(p, "detect")
    from .solar import add_solar_arguments

    add_solar_arguments(p)


def detect_options(args: argparse.Namespace):
    """The engine's :class:`DetectOptions` from the arguments of :func:`add_engine_arguments`."""
    from ..core.pipeline import DetectOptions
    from .solar import solar_params

    return DetectOptions(
        model_path=args.model, **values(args, "detect"), **values(args, "outlines"), solar=solar_params(args)
    )


def run(args: argparse.Namespace) -> int:
    """Detect, write, print the summary; engine errors propagate to the dispatcher (exit 2)."""
    from ..core.errors import LargeRunError
    from ..core.gpkg_writer import check_output, write_buildings
    from ..core.params import DETECT
    from ..core.pipeline import check_detection_size, detect_buildings

    # Refuse a clobber before spending minutes on detection.
    check_output(args.output, args.layer, args.overwrite)
    options = detect_options(args)
    # The size of the run and the coarse-pixel warning before the work, not after it.
    try:
        estimate = check_detection_size(args.raster, options)
    except LargeRunError as exc:
        flag = DETECT["confirm_large_run"].flag
        raise LargeRunError(
            f"{exc}" + (f"; pass {flag} to run it anyway" if exc.confirmable else ""), exc.confirmable
        ) from None
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
    write_buildings(
        result.buildings,
        args.output,
        result.crs_wkt,
        layer=args.layer,
        overwrite=args.overwrite,
        metadata=result.provenance(options),
    )
    wrote(args.output)
    seconds = time.perf_counter() - t0
    print(
        f"{len(result.buildings)} buildings, total area {result.total_area_m2:.1f} m2, "
        f"{seconds:.1f} s -> {args.output} (layer {args.layer})"
    )
    return 0


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[float, str], None]]:
    """A tqdm bar on stderr, yielded as the engine's ``progress(fraction, message)`` callback."""
    with ProgressBar() as bar:
        yield bar.update
