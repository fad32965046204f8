"""Command line: ``python -m roof_detector COMMAND ...``.

Each sub-command lives in its own module of this package exposing
``add_parser(subparsers)`` (which registers the command and sets
``func=run`` as default) and ``run(args) -> int``. Errors of the engine
(:class:`RoofDetectorError`) end the run with a one-line message and exit
status 2; Ctrl-C ends it with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional

from .. import __version__

# Sub-command modules, in the order `--help` lists them. The developer commands (bench,
# score, train) live in devtools/ (`python -m devtools`), outside the plugin zip.
COMMANDS = ["detect", "detect_many", "demo", "solar", "evaluate", "finetune", "serve"]


def build_parser(prog: str = "python -m roof_detector",
                 commands: Optional[Dict[str, str]] = None) -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered (``commands``: name -> module)."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Building footprints and rooftop solar sizing from orthophotos.")
    parser.add_argument("--version", action="version", version=f"roof_detector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (commands or {name: f"{__name__}.{name}" for name in COMMANDS}).values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None, prog: str = "python -m roof_detector",
         commands: Optional[Dict[str, str]] = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; return the exit status."""
    from ..core.errors import RoofDetectorError

    parser = build_parser(prog, commands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except RoofDetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
