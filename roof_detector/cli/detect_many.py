"""``python -m roof_detector detect-many INPUT... -o OUT.gpkg``: one seamless layer from many rasters.

Runs on Dask distributed: a LocalCluster of ``--workers`` workers by
default, or an existing cluster (``--scheduler tcp://HOST:8786``). Shows a
bar of tiles done / total with km² and buildings so far (and the Dask
dashboard link); ends with one summary line on stdout. Interrupted runs go on
where they stopped when the same command is run again.
"""

from __future__ import annotations

import argparse
import sys

from .arguments import add_param, add_params, values
from .detect import add_engine_arguments, detect_options

DESCRIPTION = (
    "Detect building footprints in many orthophoto tiles (files, folders, glob patterns, a VRT, or a "
    "text file of paths/URLs, /vsicurl/ and /vsis3/ included) on Dask, seamlessly across tile "
    "borders, into one GeoPackage layer."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``detect-many`` sub-command (distribution options: core.params MANY)."""
    p = subparsers.add_parser(
        "detect-many", help="find building footprints in many rasters (Dask)", description=DESCRIPTION
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="raster file, folder, glob pattern (quoted), VRT, or text file listing paths/URLs",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.gpkg", help="GeoPackage to write")
    p.add_argument("--layer", default="buildings", help="layer name in the GeoPackage (default: buildings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing layer of the same name")
    g = p.add_argument_group("distribution")
    where = g.add_mutually_exclusive_group()
    add_param(where, "many", "workers")
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (workers need roof_detector "
        "and read access to the inputs)",
    )
    add_params(g, "many", "threads_per_worker", "margin_m", "group_tiles", "block_px")
    g.add_argument(
        "--work-dir",
        metavar="DIR",
        help="where finished tiles and the manifest are kept until the end (default: OUT.gpkg.parts)",
    )
    g.add_argument("--keep-parts", action="store_true", help="keep the work folder after the merge")
    g.add_argument("--restart", action="store_true", help="discard the finished tiles of an earlier run")
    add_engine_arguments(p)
    p.set_defaults(func=run)
    return p


def _jobs_word(k: int, jobs: int = 0, inputs: int = 0) -> str:
    """What a job is: a tile, a block of k x k tiles, or a block of a large input (``--block-px``)."""
    if k != 1:
        return f"blocks of {k}x{k} tiles"
    return "blocks" if jobs > inputs > 0 else "tiles"


class _ProgressBar:
    """The engine's progress callback: a tqdm bar of jobs with km² and buildings so far."""

    def __init__(self):
        self.bar = None

    def __call__(self, state) -> None:
        if self.bar is None:
            from tqdm import tqdm

            if state.dashboard:
                print(f"Dask dashboard: {state.dashboard}", file=sys.stderr)
            if state.skipped:
                print(
                    f"{state.skipped} of {state.total} {_jobs_word(state.group_tiles)} already done (manifest): skipped",
                    file=sys.stderr,
                )
            word = "tiles" if state.group_tiles == 1 else "blocks"
            self.bar = tqdm(
                total=state.total, initial=state.done, file=sys.stderr, unit=word[:-1], dynamic_ncols=True, desc=word
            )
        self.bar.update(state.done - self.bar.n)
        self.bar.set_postfix_str(f"{state.area_km2:.3f} km², {state.buildings} buildings")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _interrupted(exc: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """One line saying what was kept; the exit status of Ctrl-C (130) or SIGTERM (143)."""
    from . import Terminated

    terminated = isinstance(exc, Terminated)  # SIGTERM: as Ctrl-C, with its own words and status
    print(
        f"error: {'terminated (SIGTERM)' if terminated else 'interrupted'}; {args.output} was not written, "
        f"the finished tiles are kept in {args.work_dir or args.output + '.parts'}: run the same command "
        "again to go on",
        file=sys.stderr,
    )
    return 143 if terminated else 130


def run(args: argparse.Namespace) -> int:
    """Plan, run on Dask, merge, print the summary; engine errors propagate (exit 2)."""
    from ..core.detect_many import detect_many

    options = detect_options(args)
    progress = _ProgressBar()
    try:
        result = detect_many(
            args.inputs,
            args.output,
            options,
            layer=args.layer,
            overwrite=args.overwrite,
            scheduler=args.scheduler,
            **values(args, "many"),
            work_dir=args.work_dir,
            keep_parts=args.keep_parts,
            restart=args.restart,
            progress=progress,
        )
    except KeyboardInterrupt as exc:
        return _interrupted(exc, args)
    finally:
        progress.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{result.buildings} buildings in {result.jobs} "
        f"{_jobs_word(result.stats.get('group_tiles', 1), result.jobs, result.stats.get('inputs', 0))} "
        f"({result.area_km2:.3f} km², {result.skipped} "
        f"already done), total area {result.building_area_m2:.1f} m2, {result.seconds:.1f} s -> "
        f"{result.output} (layer {result.layer})"
    )
    return 0
