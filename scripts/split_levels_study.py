"""Rule 15's study: separating touching roofs at more than one core level (models/split_levels_rule.md).

Runs the whole detection on the tuning scenes (OAM areas 1, 2, 3, 5 at z19 and the INRIA
validation chips; never area 4 or INRIA test) once per candidate, with the engine's
split (``vectorize.split_touching``) applied again at each higher core level, and prints
per set: pixel IoU, buildings predicted / reference / matched and object F1 (as
``devtools score`` measures them), then the summed object F1.

    python scripts/split_levels_study.py [--backend torch] [--only base,L1] [--diagnose]

``--diagnose`` instead sorts the unmatched reference buildings of the default detection
into "missed" (less than half covered by predictions) and "merged" (mostly inside a
predicted polygon that holds another reference building too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import shapely  # noqa: E402

from devtools.heldout import build_tuning_cases  # noqa: E402
from devtools.recipe import shared_data_dir  # noqa: E402
from roof_detector.core import evaluate as ev  # noqa: E402
from roof_detector.core import vectorize  # noqa: E402
from roof_detector.core.metrics import Confusion  # noqa: E402
from roof_detector.core.model_io import load_model  # noqa: E402
from roof_detector.core.pipeline import DetectOptions, detect_buildings  # noqa: E402
from roof_detector.core.vector_io import read_polygons  # noqa: E402

# name: (core levels, minimum core area as a share of the minimum building area)
CANDIDATES = {
    "base": ((0.9,), 1.0),
    "b½": ((0.9,), 0.5),
    "L1": ((0.9, 0.95), 1.0),
    "L2": ((0.9, 0.97), 1.0),
    "L3": ((0.9, 0.95, 0.98), 1.0),
    "L4": ((0.9, 0.94, 0.97, 0.99), 1.0),
}
CANDIDATES.update({k + "½": (CANDIDATES[k][0], 0.5) for k in ("L1", "L2", "L3", "L4")})

_ENGINE_SPLIT = vectorize.split_touching
_STATE = {"levels": (0.9,), "fraction": 1.0, "seconds": 0.0}


def _split_at_levels(labels, count, open_ids, prob, core_u8, min_core_px):
    """The engine's split at its own core, then again at each higher level of the candidate."""
    t0 = time.perf_counter()
    min_px = min_core_px * _STATE["fraction"]
    labels, count, open_ids = _ENGINE_SPLIT(labels, count, open_ids, prob, core_u8, min_px)
    for level in _STATE["levels"][1:]:
        labels, count, open_ids = _ENGINE_SPLIT(labels, count, open_ids, prob, int(round(level * 255)), min_px)
    _STATE["seconds"] += time.perf_counter() - t0
    return labels, count, open_ids


def tuning_cases(data_dir: str, work_dir: str):
    """(set name, raster, reference path or polygons) of the tuning scenes, raster by raster."""
    for case in build_tuning_cases(data_dir, work_dir):
        for raster, reference in zip(case.rasters, case.references):
            yield case.name.replace("tuning_", ""), raster, reference


def unmatched_kinds(result):
    """Counts of reference buildings of an ``evaluate`` result: matched, missed, merged, other (see
    the module docstring)."""
    pred, ref = result.predicted_kept, result.reference_kept
    matched = {m.reference for m in result.matches}
    p_tree, r_tree = shapely.STRtree(pred), shapely.STRtree(ref)
    kinds = {"matched": len(matched), "missed": 0, "merged": 0, "other": 0}
    for j, r in enumerate(ref):
        if j in matched:
            continue
        cover = [(pred[i].intersection(r).area / r.area, i) for i in p_tree.query(r)]
        if sum(c for c, _ in cover) < 0.5:
            kinds["missed"] += 1
            continue
        best, i = max(cover)
        holds_other = any(
            k != j and ref[k].intersection(pred[i]).area > 0.5 * ref[k].area for k in r_tree.query(pred[i])
        )
        kinds["merged" if best >= 0.5 and holds_other else "other"] += 1
    return kinds


def _detect_and_score(cases, model, diagnose: bool):
    per = {}
    for name, raster, reference in cases:
        res = detect_buildings(raster, DetectOptions(solar=None), model=model)
        grid = ev.grid_from_raster(raster)
        ref = read_polygons(reference, grid.crs_wkt).geometries if isinstance(reference, str) else reference
        pred = [b.geometry for b in res.buildings]
        s = per.setdefault(name, {"conf": Confusion(), "pmr": np.zeros(3, int), "kinds": {}})
        r = ev.evaluate(pred, list(ref), grid)
        if diagnose:
            for k, v in unmatched_kinds(r).items():
                s["kinds"][k] = s["kinds"].get(k, 0) + v
        s["conf"].add(r.pixel)
        s["pmr"] += (r.n_predicted, r.n_reference, r.n_matched)
    row = {}
    for name, s in per.items():
        p, r, m = (int(v) for v in s["pmr"])
        row[name] = {"iou": round(s["conf"].as_dict()["iou"], 4), "pmr": [p, r, m], "f1": round(2 * m / (p + r), 4)}
        row[name].update(s["kinds"])
    row["sum_f1"] = round(sum(v["f1"] for v in row.values()), 4)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, help="torch for fp32 TorchScript (default: the CPU default)")
    ap.add_argument("--only", default=None, help="comma-separated candidate names")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--work-dir", default=os.path.join("out", "split_levels"))
    args = ap.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    cases = list(tuning_cases(shared_data_dir(), args.work_dir))
    model = load_model(None, backend=args.backend) if args.backend else None
    vectorize.split_touching = _split_at_levels
    names = ["base"] if args.diagnose else (args.only.split(",") if args.only else list(CANDIDATES))
    for name in names:
        levels, fraction = CANDIDATES[name]
        _STATE.update(levels=levels, fraction=fraction, seconds=0.0)
        row = _detect_and_score(cases, model, args.diagnose)
        row["split_seconds"] = round(_STATE["seconds"], 2)
        print(name, json.dumps(row, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
