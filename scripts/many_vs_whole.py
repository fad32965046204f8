"""detect-many against one run over the whole raster: are the jobs' outlines the whole run's?

    python scripts/many_vs_whole.py RASTER BLOCK_PX [--no-regularize]

Runs ``detect_buildings`` on RASTER and ``detect_many`` on the same raster cut into
BLOCK_PX blocks (one job each), with the bundled model, and prints per run: jobs,
buildings, how many of the whole run's outlines the jobs' layer has identically
(IoU >= 0.999), the median best IoU, buildings the jobs' layer has twice, and both roof areas. Set
``GTIFF_IMPLICIT_JPEG_OVR=NO`` to compare a JPEG GeoTIFF like with like (README, *Many rasters*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compare(raster: str, block_px: int, regularize: bool) -> dict:
    import numpy as np
    import shapely

    from roof_detector.core.detect_many import detect_many
    from roof_detector.core.pipeline import DetectOptions, detect_buildings
    from roof_detector.core.vector_io import read_polygons

    options = DetectOptions(device="cpu", regularize=regularize)
    whole = [b.geometry for b in detect_buildings(raster, options).buildings]
    with tempfile.TemporaryDirectory(prefix="roofdet-many-") as tmp:
        out = os.path.join(tmp, "many.gpkg")
        res = detect_many([raster], out, options, workers=1, processes=False, block_px=block_px)
        got = list(read_polygons(out).geometries)
    tree = shapely.STRtree(got)
    best = []
    for g in whole:
        ious = [got[i].intersection(g).area / got[i].union(g).area for i in tree.query(g, predicate="intersects")]
        best.append(max(ious, default=0.0))
    best = np.array(best)
    a, b = tree.query(got, predicate="intersects")
    pairs = [(i, j) for i, j in zip(a.tolist(), b.tolist()) if i < j]
    twins = sum(got[i].intersection(got[j]).area > 0.99 * got[i].union(got[j]).area for i, j in pairs)
    return {
        "jobs": res.jobs,
        "buildings_whole": len(whole),
        "buildings_many": len(got),
        "identical": int((best >= 0.999).sum()),
        "duplicates": int(twins),  # pairs of the jobs' layer with IoU > 0.99: a building kept twice
        "median_iou": round(float(np.median(best)), 3) if len(best) else None,
        "area_whole": round(sum(g.area for g in whole), 1),
        "area_many": round(sum(g.area for g in got), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raster")
    ap.add_argument("block_px", type=int)
    ap.add_argument("--no-regularize", action="store_true")
    args = ap.parse_args(argv)
    print(json.dumps(compare(args.raster, args.block_px, not args.no_regularize)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
