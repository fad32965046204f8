"""Regularisation CPU cost per building: saved raw detections and the bench's synthetic buildings.

    PYTHONPATH=. python scripts/regularize_cost.py [CASE.json ...] [--size 4096]

CASE.json: as for ``scripts/regularize_study.py`` (only ``predicted`` is read: a
``detect --no-regularize`` GeoPackage). The synthetic raster is the bench's
(``devtools.synthetic.write_orthophoto``), detected without regularisation first.
Prints process-time milliseconds per building, best of 3. Works on release 0.2.0's
tree too (same ``footprints.measure_metric_batch`` signature), so the two can be
compared back to back on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _raw_layers(case_files):
    from roof_detector.core.metric_frame import to_local_metric_many
    from roof_detector.core.vector_io import read_polygons

    items = []
    for case_file in case_files:
        for case in json.load(open(case_file)):
            layer = read_polygons(case["predicted"])  # the reader detection's other tools use
            if layer.geometries:
                g = np.array(layer.geometries, dtype=object)
                items.append((g, to_local_metric_many(g, layer.crs_wkt)))
    return items


def _synthetic(size_px: int):
    from roof_detector.core.metric_frame import to_local_metric_many
    from roof_detector.core.pipeline import DetectOptions, detect_buildings

    sys.path.insert(0, os.getcwd())
    from devtools.synthetic import write_orthophoto

    with tempfile.TemporaryDirectory() as tmp:
        raster = os.path.join(tmp, "ortho.tif")
        write_orthophoto(raster, size_px, 0.3)
        res = detect_buildings(raster, DetectOptions(regularize=False))
    g = np.array([b.geometry for b in res.buildings], dtype=object)
    return [(g, to_local_metric_many(g, res.crs_wkt))]


def ms_per_building(items, repeats: int = 3) -> float:
    """Best-of-``repeats`` process time of regularising every batch, per building."""
    from roof_detector.core.footprints import measure_metric_batch

    n = sum(len(g) for g, _ in items)
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for g, batch in items:
            measure_metric_batch(g, batch, True, 1.0, None)
        best = min(best, time.process_time() - t)
    return 1000.0 * best / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help="CASE.json files of raw detections")
    ap.add_argument("--size", type=int, default=4096, help="synthetic raster size in px (0: none)")
    args = ap.parse_args()
    if args.cases:
        items = _raw_layers(args.cases)
        n = sum(len(g) for g, _ in items)
        print(f"raw detections: {n} buildings, {ms_per_building(items):.3f} CPU ms per building")
    if args.size:
        items = _synthetic(args.size)
        print(
            f"synthetic {args.size} px: {len(items[0][0])} buildings, {ms_per_building(items):.3f} CPU ms per building"
        )


if __name__ == "__main__":
    main()
