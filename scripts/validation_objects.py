"""Pixel IoU and object F1 of a model file on the training recipe's validation tiles.

The same tiles and the same functions as ``python -m roof_detector train`` uses to pick
its best epoch (OAM area 1's smaller block and the INRIA val chips at 0.3 m): buildings
are separated as the engine separates them (a building-only model by its probability
valleys at core 0.9, a separation model by its border/contact outputs at its tuned core)
and matched one-to-one at IoU >= 0.5 against the label polygons. Validation data only:
never the held-out test splits.

    python scripts/validation_objects.py models/roof_unet.pt [more models ...]
    python scripts/validation_objects.py --cores 0.3,0.5,0.7 runs/sep3/model.pt   # a sweep of core thresholds
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from devtools import recipe  # noqa: E402
from roof_detector.core.training.export import load_trainable  # noqa: E402
from roof_detector.core.training.sampling import scenes_to_tiles  # noqa: E402
from roof_detector.core.training.scenes import resample_scene, scenes_from_chips, tile_scene  # noqa: E402
from roof_detector.core.training.trainer import TrainConfig, _object_f1, _pooled, evaluate_tiles  # noqa: E402


def validation_tiles(data_dir: str, gsd_m: float = 0.3, tile_px: int = 256):
    """The recipe's validation tiles per set (as :func:`recipe.build_recipe` makes them)."""
    _, held = recipe._split_val_block(recipe.oam_scene(data_dir, recipe.VAL_AREA, 20))
    inria = os.path.join(data_dir, "chips", "inria", "val")
    chips = scenes_from_chips(os.path.join(inria, "images"), os.path.join(inria, "masks"), 0.3, "inria_")
    return {
        "oam": scenes_to_tiles(tile_scene(resample_scene(held, gsd_m), tile_px), tile_px),
        "inria": scenes_to_tiles([t for s in chips for t in tile_scene(resample_scene(s, gsd_m), tile_px)], tile_px),
    }


def main(paths) -> int:
    torch.set_num_threads(1)
    sweep = None
    if paths and paths[0] == "--cores":
        sweep, paths = [float(c) for c in paths[1].split(",")], paths[2:]
    tiles = validation_tiles(recipe.shared_data_dir())
    for path in paths:
        net, meta = load_trainable(path)
        arch = meta["architecture"]
        cfg = TrainConfig(architecture=arch["name"], architecture_params=arch.get("params", {}))
        thr = float(meta["threshold"])
        core = float(meta.get("separation", {}).get("core_threshold", 0.9))
        key = (thr, core)
        confs, counts, unsplit = {}, np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
        for name, t in tiles.items():
            r = evaluate_tiles(net, t, cfg, torch.device("cpu"), (thr,), objects=(key, (thr, None)))
            confs[name] = r[thr]
            counts += r[("objects",) + key]
            unsplit += r[("objects", thr, None)]
        out = {
            "model": path,
            "version": meta.get("version"),
            "threshold": thr,
            "core": core,
            "pixel_iou": round(_pooled(confs).iou(), 4),
            "predicted_reference_matched": [int(v) for v in counts],
            "object_f1": round(_object_f1(*counts), 4),
            "object_f1_unsplit": round(_object_f1(*unsplit), 4),
        }
        print(json.dumps(out))
        for c in sweep or ():
            tot = np.zeros(3, dtype=np.int64)
            for t in tiles.values():
                tot += evaluate_tiles(net, t, cfg, torch.device("cpu"), (thr,), objects=((thr, c),))[
                    ("objects", thr, c)
                ]
            print(
                json.dumps(
                    {
                        "core": c,
                        "predicted_reference_matched": [int(v) for v in tot],
                        "object_f1": round(_object_f1(*tot), 4),
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["models/roof_unet.pt"]))
