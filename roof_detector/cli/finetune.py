"""``python -m roof_detector finetune``: adapt a model to a raster and trusted building polygons."""

from __future__ import annotations

import sys

from . import wrote
from .arguments import add_param, add_params, values
from .progress import ProgressBar


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on a raster and a layer of building polygons",
        description="Fine-tune the bundled (or another) model on your raster and building "
        "polygons. Inside the labelled area, unlabelled buildings count as "
        "'not building'. Validation uses whole blocks held out of training.",
    )
    p.add_argument("--raster", required=True, help="georeferenced raster (GeoTIFF, VRT, ...)")
    p.add_argument("--labels", required=True, help="polygon layer of buildings (any CRS: reprojected)")
    p.add_argument("--labels-layer", default=None, help="layer name inside --labels (default: first polygon layer)")
    p.add_argument("--area", default=None, help="polygon layer of the fully labelled area (default: label extent)")
    p.add_argument("-o", "--output", required=True, help="the new model file (.pt)")
    p.add_argument("--base-model", default=None, help="model to start from (default: bundled)")
    add_params(p, "finetune")
    add_param(p, "detect", "device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="", help="model name stored in its metadata")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.devices import import_torch

    import_torch()  # first, with Ctrl-C held: one landing in torch's own import aborted the process
    from ..core.training.finetune import FinetuneOptions, finetune

    opts = FinetuneOptions(
        raster_path=args.raster,
        labels_path=args.labels,
        labels_layer=args.labels_layer,
        area_path=args.area,
        output_path=args.output,
        base_model_path=args.base_model,
        device=args.device,
        seed=args.seed,
        name=args.name,
        **values(args, "finetune"),
    )
    with ProgressBar("fine-tune") as bar:
        res = finetune(opts, progress=bar.update, log=bar.write)
    if res.model_path:  # None: a cancelled run dropped its model
        wrote(res.model_path)
    for note in res.notes:
        if note.startswith("Warning: "):
            print(f"warning: {note[len('Warning: ') :]}", file=sys.stderr)
    b, a = res.before, res.after
    print(
        f"validation IoU {b.get('iou', float('nan')):.4f} -> {a.get('iou', float('nan')):.4f}, "
        f"accuracy {b.get('accuracy', float('nan')):.4f} -> {a.get('accuracy', float('nan')):.4f}; "
        f"{len(res.history)} epochs ({res.stopped}), threshold {res.threshold}, {res.minutes:.1f} min -> {res.model_path}"
    )
    if res.outside:
        b, a = res.outside["before"], res.outside["after"]
        print(
            f"outside the labelled area ({b['reference']} buildings): IoU {b['iou']:.4f} -> {a['iou']:.4f}, "
            f"object F1 {b['object_f1']:.4f} -> {a['object_f1']:.4f}"
        )
    return 0
