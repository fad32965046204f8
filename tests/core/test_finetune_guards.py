"""Fine-tuning refuses what would lose data or measure nothing, before any work (issue 21).

Release 0.2.0 overwrote an existing output (even the base model it reads),
accepted rotated or 5-band rasters that detection refuses, epochs 0, a
validation fraction of 0 or 1.5, batch size 0, a NaN learning rate and the
`meta` device, and reported "IoU 1.0000 -> 1.0000" with nothing validated.
"""

import dataclasses
import math
import os

import numpy as np
import pytest
from affine import Affine

from roof_detector.core.errors import InputRasterError, LabelError, ModelError, OutputError
from roof_detector.core.params import FINETUNE, ParameterError
from roof_detector.core.training.finetune import FinetuneOptions, finetune

from .synthetic_rasters import UTM, write_raster
from .test_finetune import labelled_area  # noqa: F401 - fixture


def _opts(raster, labels, base, out, **kw):
    kw.setdefault("epochs", 1)
    return FinetuneOptions(
        raster_path=raster,
        labels_path=labels,
        output_path=str(out),
        base_model_path=base,
        batch_size=kw.pop("batch_size", 4),
        samples_per_epoch=kw.pop("samples_per_epoch", 4),
        device=kw.pop("device", "cpu"),
        **kw,
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "Epochs must be from 1 to 500, got 0"),
        ("epochs", -1, "Epochs must be .*got -1"),
        ("val_fraction", 0.0, "Validation share must be from 0.05 to 0.5, got 0.0"),
        ("val_fraction", 1.5, "Validation share must be .*got 1.5"),
        ("batch_size", 0, "Batch size must be .*got 0"),
        ("lr", math.nan, "Learning rate must be a finite number .*got nan"),
        ("lr", -1e-3, "Learning rate .*got -0.001"),
        ("lr", math.inf, "Learning rate must be a finite number .*got inf"),
        ("patience", 0, "Patience .*got 0"),
        ("samples_per_epoch", 0, "Samples per epoch .*got 0"),
        # issue 21 sweep rerun: `finetune --seed -1` gave numpy's ValueError traceback after loading the data
        ("seed", -1, "Seed must be a whole number from 0 to 4294967295, got -1"),
        ("seed", 2**32, "Seed must be .*got 4294967296"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(labelled_area, tmp_path, field, value, message):  # noqa: F811
    """The declarations' checks (core.params), run by finetune() before anything is read or written."""
    raster, labels, base = labelled_area
    out = tmp_path / "out" / "m.pt"
    with pytest.raises(ParameterError, match=message):
        finetune(_opts(raster, labels, base, out, **{field: value}), log=lambda m: None)
    assert not out.parent.exists()


def test_the_meta_device_is_refused(labelled_area, tmp_path):  # noqa: F811
    raster, labels, base = labelled_area
    with pytest.raises(ModelError, match="'meta' cannot run the model"):
        finetune(_opts(raster, labels, base, tmp_path / "m.pt", device="meta"), log=lambda m: None)


def test_an_existing_output_and_the_base_model_are_never_overwritten(labelled_area, tmp_path):  # noqa: F811
    raster, labels, base = labelled_area
    before = open(base, "rb").read()
    with pytest.raises(OutputError, match="is the base model being fine-tuned"):
        finetune(_opts(raster, labels, base, base, overwrite=True), log=lambda m: None)
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        finetune(_opts(raster, labels, base, existing), log=lambda m: None)
    assert open(base, "rb").read() == before and existing.read_bytes() == b"precious"
    folder = tmp_path / "a_folder.pt"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        finetune(_opts(raster, labels, base, folder), log=lambda m: None)


def test_a_read_only_output_folder_is_refused_before_training(labelled_area, tmp_path):  # noqa: F811
    """A real read-only mount (root ignores file permissions, not a read-only file system)."""
    import subprocess

    raster, labels, base = labelled_area
    ro = tmp_path / "ro"
    ro.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        with pytest.raises(OutputError, match="read-only"):
            finetune(_opts(raster, labels, base, ro / "m.pt"), log=lambda m: None)
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.parametrize("kind, message", [("rotated", "rotated or sheared"), ("five_bands", "has 5 bands")])
def test_rasters_that_detection_refuses_are_refused(labelled_area, tmp_path, kind, message):  # noqa: F811
    _, labels, base = labelled_area
    if kind == "rotated":
        data = np.full((3, 64, 64), 40, np.uint8)
        raster = write_raster(tmp_path / "rot.tif", data, UTM, Affine(0.5, 0.1, 500000, 0.1, -0.5, 5000000))
    else:
        raster = write_raster(
            tmp_path / "five.tif", np.full((5, 64, 64), 40, np.uint8), UTM, Affine(0.5, 0, 500000, 0, -0.5, 5000000)
        )
    with pytest.raises(InputRasterError, match=message):
        finetune(_opts(raster, labels, base, tmp_path / "m.pt"), log=lambda m: None)
    assert not (tmp_path / "m.pt").exists()


def _base_that_calls_everything_a_building(path):
    import torch

    from roof_detector.core.training.export import export_model
    from roof_detector.core.training.trainer import TrainConfig
    from roof_detector.core.unet import build_model

    from .finetune_setup import GSD

    net = build_model("plain_unet", base_channels=4)
    with torch.no_grad():  # the 1x1 output head: logit 10 everywhere
        net.head.weight.zero_()
        net.head.bias.fill_(10.0)
    cfg = TrainConfig(
        architecture="plain_unet", architecture_params={"base_channels": 4}, gsd_m=GSD, tile_px=64, overlap_px=8
    )
    export_model(net, cfg, path, 0.5, {"name": "tiny-base"})
    return path


def test_a_useless_learning_rate_is_flagged_as_worse_than_the_base(
    labelled_area,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    raster, labels, _ = labelled_area
    # The fixture's base is an unseeded untrained net: it calls everything a building (IoU 0.14, the
    # building share) or nothing (IoU 0), and from nothing any one-class model is better. This base
    # calls everything a building, so a model wrecked into one class is never better.
    base = _base_that_calls_everything_a_building(str(tmp_path / "all.pt"))
    # lr 1.0 wrecks the tiny model (measured: IoU 0.14 -> 0.14 or lower, it predicts one class); the
    # declared maximum, 0.1, sometimes gains a little (0.1404 -> 0.1405), so the range is widened for
    # this test only: what is tested is the warning, not the range.
    monkeypatch.setitem(FINETUNE, "lr", dataclasses.replace(FINETUNE["lr"], high=1.0))
    logs = []
    res = finetune(
        _opts(raster, labels, base, tmp_path / "m.pt", lr=1.0, epochs=2, samples_per_epoch=8), log=logs.append
    )
    not_better = res.after["iou"] <= res.before["iou"]
    warned = [
        n
        for n in res.notes
        if n.startswith("Warning: the fine-tuned model is") and "the base model on the validation blocks" in n
    ]
    assert bool(warned) == not_better and (not warned or warned[0] in logs)
    assert not_better, f"IoU {res.before['iou']} -> {res.after['iou']}"
    assert os.path.exists(res.model_path)


def test_validation_blocks_without_a_building_are_refused(labelled_area, tmp_path):  # noqa: F811
    """Nothing to measure is not IoU 1.0: three labels leave the validation blocks without a building."""
    raster, labels, base = labelled_area
    with pytest.raises(LabelError, match="validation blocks hold no labelled building"):
        finetune(_opts(raster, labels, base, tmp_path / "m.pt", label_fids=[1, 2, 3]), log=lambda m: None)
    assert not (tmp_path / "m.pt").exists()
