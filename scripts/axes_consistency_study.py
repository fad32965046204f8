"""Do aligned neighbours share one axis? Squared outlines strip by strip against one batch.

For pairs of squared (``rectilinear``) outlines within 10 m of each other whose long-edge
directions agree within 3 degrees, counts those that share one axis (within 0.5 degrees) and
those that do not: once for the detection as it runs (outlines squared strip by strip, each
strip's neighbours deciding together, ``axes.consensus_orientations``) and once with the same
raw outlines squared all in one batch. Tuning scenes only (OAM areas 2 and 5 at z19 by default).

    python scripts/axes_consistency_study.py [RASTER ...]

The raster's CRS is used for directions and distances (Web Mercator is conformal).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import shapely  # noqa: E402

from devtools.recipe import shared_data_dir  # noqa: E402
from roof_detector.core.footprints import measure_metric_batch  # noqa: E402
from roof_detector.core.metric_frame import to_local_metric_many  # noqa: E402
from roof_detector.core.params import OUTLINES  # noqa: E402
from roof_detector.core.pipeline import DetectOptions, detect_buildings  # noqa: E402


def long_edge_direction(polygon) -> float:
    """Direction of the polygon's longest edge, degrees in [0, 90)."""
    d = np.diff(np.asarray(polygon.exterior.coords), axis=0)
    return float((np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 90.0)[np.argmax(np.hypot(d[:, 0], d[:, 1]))])


def pair_counts(geoms: np.ndarray, shapes) -> dict:
    """Squared outlines, and neighbour pairs within 3 degrees that share an axis or do not."""
    rect = np.flatnonzero(np.asarray(shapes) == "rectilinear")
    axes = np.array([long_edge_direction(geoms[i]) for i in rect])
    a, b = shapely.STRtree(geoms[rect]).query(geoms[rect], predicate="dwithin", distance=10.0)
    first = a < b
    diff = np.abs((axes[a[first]] - axes[b[first]] + 45.0) % 90.0 - 45.0)
    return {
        "rectilinear": int(len(rect)),
        "shared": int((diff < 0.5).sum()),
        "not_shared": int(((diff >= 0.5) & (diff <= 3.0)).sum()),
    }


def main(rasters) -> int:
    tolerance_m = OUTLINES["regularize_tolerance_m"].default
    for raster in rasters:
        run = detect_buildings(raster, DetectOptions(solar=None))
        strips = pair_counts(
            np.asarray([b.geometry for b in run.buildings], dtype=object),
            [b.attributes.get("shape") for b in run.buildings],
        )
        raw = detect_buildings(raster, DetectOptions(solar=None, regularize=False))
        geoms = np.asarray([b.geometry for b in raw.buildings], dtype=object)
        squared, cols = measure_metric_batch(geoms, to_local_metric_many(geoms, raw.crs_wkt), True, tolerance_m, None)
        one = pair_counts(np.asarray(list(squared), dtype=object), cols["shape"].astype(str))
        print(f"{os.path.basename(os.path.dirname(raster))}: strip by strip {strips}; one batch {one}")
    return 0


if __name__ == "__main__":
    oam = os.path.join(shared_data_dir(), "oam")
    sys.exit(main(sys.argv[1:] or [os.path.join(oam, f"area{a}", "ortho_z19.tif") for a in (2, 5)]))
