"""``python -m devtools score``: a model's figures on the held-out test data.

Runs the whole detection (as ``detect``) and the evaluation (as
``evaluate``) on OAM area 4, the INRIA test chips and the demo image, none of
which any training here reads. Prints one line per case and, with ``--json``,
one JSON object.
"""

from __future__ import annotations

import json

from roof_detector.cli.arguments import add_params, values


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score a model on the held-out test data in ../shared/data", description=__doc__)
    p.add_argument("--model", default=None, help="model file (default: bundled)")
    p.add_argument("--data", default="", help="data folder (default: ../shared/data)")
    p.add_argument(
        "--case",
        action="append",
        default=None,
        help="only this case (oam_area4_z21, oam_area4_z19, inria_test, demo_atlanta); repeatable",
    )
    add_params(p, "detect", "device", "threshold", "min_area_m2", "tta")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from roof_detector.core.errors import RoofDetectorError
    from roof_detector.core.pipeline import DetectOptions

    from .heldout import CASES, score_all
    from .recipe import shared_data_dir

    unknown = [c for c in (args.case or []) if c not in CASES]
    if unknown:
        raise RoofDetectorError(f"unknown --case {', '.join(unknown)}; choose from {', '.join(CASES)}")
    data = args.data or shared_data_dir()
    if not data:
        raise RoofDetectorError("held-out data not found: pass --data or place it at ../shared/data")
    opts = DetectOptions(model_path=args.model, **values(args, "detect"))
    figures = score_all(data, opts, args.case, log=(lambda m: None) if args.json else print)
    if args.json:
        print(json.dumps(figures))
    return 0
