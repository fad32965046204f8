"""Where regularisation's pixel-IoU cost comes from: the area it adds and removes, in or out of the reference.

Reads the same CASE.json as ``regularize_study.py`` (saved ``detect --no-regularize`` outputs of
tuning scenes, their references and rasters), regularises each case in one batch as detection
does, and splits the change of the mask into the area the squared outlines add and the area
they remove, each inside or outside the reference. It prints, per case and pooled, those
areas (in the raster's CRS units) and the share of each inside the reference (``q``). Areas are
vector areas over the whole reference, with no valid-pixel mask, so its IoUs read lower than
``evaluate``'s pixel IoU on rasters with nodata (the OAM scenes).

Why ``q`` decides: with pooled pixel IoU ``J``, adding area of which a share ``q`` is roof raises
``J`` only when ``q > J / (1 + J)``; removing area raises it only when ``q < J / (1 + J)``.

    python scripts/regularisation_cost_study.py CASE.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
from shapely.ops import unary_union


def case_areas(case) -> dict:
    """Added/removed area of one case's regularised outlines, in and out of its reference."""
    from roof_detector.core import evaluate as ev
    from roof_detector.core.footprints import measure_metric_batch
    from roof_detector.core.metric_frame import to_local_metric_many
    from roof_detector.core.vector_io import read_polygons

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from regularize_study import load_reference

    grid = ev.grid_from_raster(case["raster"])
    raw = read_polygons(case["predicted"], grid.crs_wkt).geometries
    ref = unary_union(load_reference(case["reference"], grid.crs_wkt))
    if not raw:
        return {}
    geoms = np.asarray(raw, dtype=object)
    squared, _ = measure_metric_batch(geoms, to_local_metric_many(geoms, grid.crs_wkt), True, 1.0, None)
    before, after = unary_union(raw), unary_union(list(squared))
    added, removed = after.difference(before), before.difference(after)
    return {
        "added_in": added.intersection(ref).area,
        "added_out": added.difference(ref).area,
        "removed_in": removed.intersection(ref).area,
        "removed_out": removed.difference(ref).area,
        "tp": before.intersection(ref).area,
        "union": before.union(ref).area,
    }


def _line(name: str, a: dict) -> str:
    add, rem = a["added_in"] + a["added_out"], a["removed_in"] + a["removed_out"]
    j = a["tp"] / a["union"]
    j_after = (a["tp"] + a["added_in"] - a["removed_in"]) / (a["union"] + a["added_out"] - a["removed_out"])
    return (
        f"{name:20s} raw IoU {j:.4f} -> {j_after:.4f}  added {add:8.1f} (q {a['added_in'] / add if add else 0:.2f})  "
        f"removed {rem:8.1f} (q {a['removed_in'] / rem if rem else 0:.2f})  break-even q {j / (1 + j):.2f}"
    )


def main(argv=None) -> None:
    cases = json.load(open((argv or sys.argv[1:])[0]))
    total: dict = {}
    for case in cases:
        a = case_areas(case)
        if not a:
            continue
        print(_line(case["name"], a))
        for k, v in a.items():
            total[k] = total.get(k, 0.0) + v
    print(_line("pooled", total))


if __name__ == "__main__":
    main()
