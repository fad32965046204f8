"""Regularisation study: the figures of outlines regularised from saved raw detections.

Runs no network: reads ``detect --no-regularize`` outputs and regularises them
as detection does (``footprints.measure_metric_batch``), then evaluates them
against the reference (pixel IoU, object F1, mean matched IoU, median vertices,
regular share). Used to choose the constants of ``core/regularize.py`` on data
no test figure uses, and to compare with other regularisers on the same input.

    python scripts/regularize_study.py CASE.json [--set NAME=VALUE ...] [--raw] [--json]

CASE.json: a list of {"name", "predicted", "reference", "raster"} (reference: a
vector file, or a pickle of shapely polygons written by the study's set-up).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time

import numpy as np


def load_reference(path, crs_wkt):
    from roof_detector.core.vector_io import read_polygons

    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            return pickle.load(f)
    return read_polygons(path, crs_wkt).geometries


def run_case(case, regularize, tolerance_m):
    from roof_detector.core import evaluate as ev
    from roof_detector.core.footprints import measure_metric_batch
    from roof_detector.core.metric_frame import to_local_metric_many
    from roof_detector.core.shape_metrics import shape_figures
    from roof_detector.core.vector_io import read_polygons

    grid = ev.grid_from_raster(case["raster"])
    pred = read_polygons(case["predicted"], grid.crs_wkt).geometries
    ref = load_reference(case["reference"], grid.crs_wkt)
    seconds = 0.0
    shapes = {}
    if regularize and pred:
        geoms = np.asarray(pred, dtype=object)
        t0 = time.perf_counter()
        out, cols = measure_metric_batch(geoms, to_local_metric_many(geoms, grid.crs_wkt), True, tolerance_m, None)
        seconds = time.perf_counter() - t0
        pred = list(out)
        kinds, counts = np.unique(cols["shape"].astype(str), return_counts=True)
        shapes = dict(zip(kinds.tolist(), counts.tolist()))
    res = ev.evaluate(pred, ref, grid)
    d = res.as_dict()
    overlaps = overlapping_pairs(pred, grid.crs_wkt)
    return {
        "n": len(pred),
        "seconds": seconds,
        "shapes": shapes,
        "overlap_pairs": overlaps[0],
        "overlap_m2": overlaps[1],
        "tp": d["pixel"]["tp"],
        "fp": d["pixel"]["fp"],
        "fn": d["pixel"]["fn"],
        "pred": res.n_predicted,
        "ref": res.n_reference,
        "matched": res.n_matched,
        "ious": [m.iou for m in res.matches],
        "pred_shape": shape_figures(pred, grid.crs_wkt),
        "ref_shape": shape_figures(ref, grid.crs_wkt),
    }


def overlapping_pairs(polygons, crs_wkt, min_m2=0.01):
    """(pairs of outlines overlapping by >= ``min_m2`` m², their overlap in m²), in metric frames."""
    import shapely

    from roof_detector.core.metric_frame import to_local_metric_many

    if not polygons:
        return 0, 0.0
    batch = to_local_metric_many(np.asarray(polygons, dtype=object), crs_wkt)
    tree = shapely.STRtree(batch.metric)
    a, b = tree.query(batch.metric, predicate="intersects")
    keep = (a < b) & (batch.frame_index[a] == batch.frame_index[b])
    area = shapely.area(shapely.intersection(batch.metric[a[keep]], batch.metric[b[keep]]))
    return int((area >= min_m2).sum()), float(area[area >= min_m2].sum())


def pooled(results):
    tp, fp, fn = (sum(r[k] for r in results) for k in ("tp", "fp", "fn"))
    p, r, m = (sum(x[k] for x in results) for k in ("pred", "ref", "matched"))
    ious = [i for x in results for i in x["ious"]]
    return {
        "pixel_iou": tp / (tp + fp + fn),
        "object_f1": 2 * m / (p + r) if p + r else None,
        "mean_matched_iou": float(np.mean(ious)) if ious else None,
    }


def _f(value):
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("cases")
    ap.add_argument("--set", action="append", default=[], help="regularize.NAME=VALUE")
    ap.add_argument("--raw", action="store_true", help="no regularisation")
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import importlib

    for item in args.set:  # module.NAME=VALUE, module in roof_detector.core (default: regularize)
        name, value = item.split("=")
        module, _, name = name.rpartition(".")
        mod = importlib.import_module(f"roof_detector.core.{module or 'regularize'}")
        setattr(mod, name, type(getattr(mod, name))(float(value)))
    cases = json.load(open(args.cases))
    results = {}
    for case in cases:
        r = run_case(case, not args.raw, args.tolerance)
        results[case["name"]] = r
        ps = r["pred_shape"]
        if not r["pred"] + r["ref"]:
            print(f"{case['name']:14s} no buildings", file=sys.stderr)
            continue
        ps, rs = r["pred_shape"], r["ref_shape"]
        print(
            f"{case['name']:14s} n {r['n']:5d} IoU {r['tp'] / (r['tp'] + r['fp'] + r['fn']):.4f} "
            f"objF1 {2 * r['matched'] / (r['pred'] + r['ref']):.3f} "
            f"mIoU {np.mean(r['ious']) if r['ious'] else float('nan'):.3f} "
            f"medV {ps['median_vertices']} reg {_f(ps['regular_share'])} "
            f"refV {rs['median_vertices']} refReg {_f(rs['regular_share'])} "
            f"{r['shapes']} {1000 * r['seconds'] / max(r['n'], 1):.2f} ms/bldg",
            file=sys.stderr,
        )
    all_p = pooled(list(results.values()))
    regs = [r["pred_shape"]["regular_share"] for r in results.values() if r["n"]]
    medv = [r["pred_shape"]["median_vertices"] for r in results.values() if r["n"]]
    summary = dict(
        all_p,
        regular_share_mean=float(np.mean(regs)),
        median_vertices_mean=float(np.mean(medv)),
        overlap_pairs=sum(r.get("overlap_pairs", 0) for r in results.values()),
        overlap_m2=round(sum(r.get("overlap_m2", 0.0) for r in results.values()), 2),
    )
    print(json.dumps(summary) if args.json else summary)


if __name__ == "__main__":
    main()
