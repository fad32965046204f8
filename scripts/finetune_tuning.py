"""Compare fine-tuning settings on one scene: the gain outside the labelled area, per candidate.

Runs ``core.training.finetune.finetune`` once per candidate on the same raster, labels and
labelled area, and appends one JSON line per run to ``--out``/results.jsonl: the validation
before/after, the fine-tune's own report outside the labelled area (pixel IoU, object F1 at
its thresholds), the outside pixel IoU of both models at every threshold 0.25-0.75 (to see how
much of a difference is the threshold), the epochs and the minutes. Used to choose the shipped
defaults on a tuning scene (models/finetune_rule.md); scenes from scripts/finetune_scene.py.

    python scripts/finetune_tuning.py --raster runs/tune/area1_z19_smallest.tif \\
        --labels runs/tune/area1_z19_smallest_labels.gpkg \\
        --area-wkt runs/tune/area1_z19_smallest_left20.wkt --out runs/tune/a1 defaults lr1e-4 decoder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from roof_detector.core.training.finetune import FinetuneOptions, finetune  # noqa: E402

#: Candidate settings (overrides of the declared defaults).
CANDIDATES = {
    # release 0.3's defaults (every layer trained), whatever core/params.py declares now
    "defaults": {"freeze_encoder": False},
    "old": {"epochs": 10, "patience": 4, "samples_per_epoch": 32, "max_minutes": 0.0, "freeze_encoder": False},
    "lr1e-4": {"lr": 1e-4, "freeze_encoder": False},
    "decoder": {"freeze_encoder": True},
    "decoder-lr1e-3": {"freeze_encoder": True, "lr": 1e-3},
    "decoder-lr1e-4": {"freeze_encoder": True, "lr": 1e-4},
}


def outside_ious(opts: FinetuneOptions, model_path: str) -> dict:
    """Outside pixel IoU of the base and the fine-tuned model at every threshold of the training code."""
    import shapely
    import torch

    from roof_detector.core.model_io import BUNDLED_MODEL_PATH
    from roof_detector.core.training.export import load_trainable
    from roof_detector.core.training.finetune import _train_config
    from roof_detector.core.training.outside import outside_scene
    from roof_detector.core.training.sampling import scenes_to_tiles
    from roof_detector.core.training.scenes import tile_scene
    from roof_detector.core.training.trainer import THRESHOLDS, evaluate_tiles

    out = {}
    for key, path in (("before", str(BUNDLED_MODEL_PATH)), ("after", model_path)):
        net, meta = load_trainable(path)
        cfg = _train_config(meta, opts, "cpu", 8)
        scene = outside_scene(opts, meta, shapely.from_wkt(opts.area_wkt), log=lambda m: None)
        tiles = scenes_to_tiles(tile_scene(scene, cfg.tile_px, 0.01), cfg.tile_px)
        r = evaluate_tiles(net, tiles, cfg, torch.device("cpu"), THRESHOLDS)
        out[key] = {str(t): round(r[t].iou(), 4) for t in THRESHOLDS}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raster", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--area-wkt", required=True, help="file holding the labelled area as WKT (raster CRS)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-minutes", type=float, default=None, help="cap every candidate's time budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("candidates", nargs="+", choices=sorted(CANDIDATES))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    area = open(a.area_wkt).read()
    for name in a.candidates:
        over = dict(CANDIDATES[name])
        if a.max_minutes is not None and (over.get("max_minutes", 1) or 0) != 0:
            over["max_minutes"] = a.max_minutes
        model = os.path.join(a.out, f"{name}_s{a.seed}.pt")
        opts = FinetuneOptions(
            a.raster, a.labels, model, area_wkt=area, device="cpu", seed=a.seed, overwrite=True, **over
        )
        t0 = time.time()
        res = finetune(opts, log=lambda m: print(m, flush=True))
        row = {
            "candidate": name,
            "overrides": over,
            "seed": a.seed,
            "raster": a.raster,
            "area": a.area_wkt,
            "minutes": round((time.time() - t0) / 60, 2),
            "train_minutes": round(res.minutes, 2),
            "epochs": len(res.history),
            "stopped": res.stopped,
            "threshold": res.threshold,
            "val_before": round(res.before["iou"], 4),
            "val_after": round(res.after.get("iou", float("nan")), 4),
            "outside": {k: {m: round(v, 4) for m, v in d.items()} for k, d in res.outside.items()},
            "outside_by_threshold": outside_ious(opts, model),
            "plan": res.plan,
        }
        print(json.dumps(row), flush=True)
        with open(os.path.join(a.out, "results.jsonl"), "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
