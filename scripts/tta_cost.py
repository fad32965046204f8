"""Time detection with and without test-time augmentation (``--tta``) on a generated raster.

    python scripts/tta_cost.py [SIZE_PX] [REPEATS]

Writes a generated orthophoto (bright roofs on textured ground, 0.3 m) to a temporary
folder, then runs the bundled model's detection alternately without and with TTA and
prints one JSON line per run: wall seconds, the model's seconds (``infer``), tiles,
backend and buildings found (equal with and without TTA on this synthetic scene).
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from roof_detector.core.model_io import load_model  # noqa: E402
from roof_detector.core.pipeline import DetectOptions, detect_buildings  # noqa: E402
from devtools.synthetic import write_orthophoto  # noqa: E402


def main(size_px: int = 2048, repeats: int = 2) -> int:
    model = load_model(None, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.tif")
        write_orthophoto(path, size_px, gsd_m=0.3)
        for _ in range(repeats):
            for tta in (False, True):
                t0 = time.perf_counter()
                res = detect_buildings(path, DetectOptions(tta=tta), model=model)
                print(
                    json.dumps(
                        {
                            "tta": tta,
                            "seconds": round(time.perf_counter() - t0, 2),
                            "infer_s": round(res.stats["timings_s"]["infer"], 2),
                            "tiles": res.stats["tiles"],
                            "backend": res.stats["backend"],
                            "buildings": len(res.buildings),
                        }
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:3])))
