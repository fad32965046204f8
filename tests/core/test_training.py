"""Training pipeline on generated data: scenes, crops, loop, export, reload."""

import json
import os

import numpy as np
import pytest
import torch

from roof_detector.core.errors import Cancelled, ModelError
from roof_detector.core.model_io import load_model, read_metadata
from roof_detector.core.training.export import export_model, load_trainable
from roof_detector.core.training.sampling import AugmentConfig, CropSampler, copy_paste, scenes_to_tiles
from roof_detector.core.training.scenes import Scene, resample_scene, split_blocks, tile_scene, scene_from_raster
from roof_detector.core.training.trainer import TrainConfig, bce_dice_loss, plot_curves, train, tune_threshold


def _synthetic_scene(seed=0, size=160, gsd_m=0.5):
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    lab = np.zeros((size, size), np.uint8)
    for _ in range(8):
        r, c = rng.integers(0, size - 24, 2)
        h, w = rng.integers(8, 24, 2)
        img[r : r + h, c : c + w] = 220
        lab[r : r + h, c : c + w] = 1
    return Scene(f"synthetic{seed}", img, lab, np.ones((size, size), bool), gsd_m)


def test_crops_have_the_model_gsd_scale():
    s = _synthetic_scene(gsd_m=0.25)
    cfg = AugmentConfig(scale_range=(1.0, 1.0), degrade_p=0, color_p=0, grey_p=0, blur_p=0, noise_p=0, copy_paste_p=0)
    sampler = CropSampler([s], gsd_m=0.5, tile_px=32, config=cfg, seed=1)
    x, y, v = sampler.batch(4)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32) and v.shape == (4, 1, 32, 32)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    # 32 px at 0.5 m are 64 px of a 0.25 m scene: the building fraction is preserved.
    assert abs(float(y.mean()) - s.label.mean()) < 0.25
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


def test_copy_paste_adds_labelled_pixels_only_where_valid():
    x = torch.zeros(2, 3, 8, 8)
    lab = torch.zeros(2, 1, 8, 8)
    lab[1, :, 2:4, 2:4] = 1
    x[1] = 0.9
    val = torch.ones(2, 1, 8, 8)
    val[0, :, 3, 3] = 0
    rng = np.random.default_rng(0)
    x2, lab2 = copy_paste(x, lab, val, rng, p=1.0)
    assert lab2[0].sum() == 3  # 4 pasted pixels, one of them invalid in the target
    assert torch.allclose(x2[0][:, 2, 2], torch.full((3,), 0.9))
    assert lab2[1].sum() == 4  # crop 1 received nothing (crop 0 has no buildings)


def test_resample_and_tile_scene():
    s = _synthetic_scene(size=200, gsd_m=0.15)
    r = resample_scene(s, 0.3)
    assert r.image.shape == (100, 100, 3) and r.gsd_m == 0.3
    assert abs(r.label.mean() - s.label.mean()) < 0.03
    tiles = tile_scene(r, 64)
    assert len(tiles) == 4 and all(t.label.shape == (64, 64) for t in tiles)


def test_split_blocks_finds_disjoint_blocks():
    valid = np.zeros((100, 100), bool)
    valid[5:40, 5:50] = True
    valid[60:90, 50:95] = True
    boxes = split_blocks(valid, min_pixels=10)
    assert sorted(boxes) == [(5, 5, 35, 45), (60, 50, 30, 45)]


def test_loss_ignores_invalid_pixels():
    logits = torch.full((1, 1, 4, 4), 5.0)
    target = torch.ones(1, 1, 4, 4)
    valid = torch.ones(1, 1, 4, 4)
    base = bce_dice_loss(logits, target, valid)
    target2 = target.clone()
    target2[..., 0, 0] = 0
    valid2 = valid.clone()
    valid2[..., 0, 0] = 0
    assert torch.isclose(bce_dice_loss(logits, target2, valid2), base, atol=1e-3)
    assert bce_dice_loss(logits, target2, valid) > base + 0.1


def _tiny_cfg(**kw):
    base = dict(
        architecture="plain_unet",
        architecture_params={"base_channels": 4},
        gsd_m=0.5,
        tile_px=64,
        overlap_px=8,
        batch_size=4,
        lr=3e-3,
        samples_per_epoch=16,
        max_epochs=3,
        patience=5,
        seed=0,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_train_loop_records_every_epoch_and_exports_a_loadable_model(tmp_path):
    cfg = _tiny_cfg()
    sampler = CropSampler([_synthetic_scene(0), _synthetic_scene(1)], cfg.gsd_m, cfg.tile_px, seed=0)
    val = {"synthetic": scenes_to_tiles(tile_scene(_synthetic_scene(7), 64), 64)}
    epochs_seen = []
    res = train(
        sampler,
        val,
        cfg,
        checkpoint_path=str(tmp_path / "ck.pt"),
        on_epoch=lambda i: epochs_seen.append(i),
        log=lambda m: None,
    )
    assert [h["epoch"] for h in res.history] == [1, 2, 3] == [e["row"]["epoch"] for e in epochs_seen]
    for h in res.history:
        for k in ("train_loss", "train_iou", "train_accuracy", "val_loss", "val_iou", "val_accuracy"):
            assert np.isfinite(h[k]), k
    assert res.best_epoch == int(np.argmax([h["val_iou"] for h in res.history])) + 1
    assert 0.25 <= res.threshold <= 0.75
    assert (tmp_path / "ck.pt").exists()
    png = plot_curves(res.history, str(tmp_path / "curves.png"))
    assert os.path.getsize(png) > 5000
    path = export_model(res.net, cfg, str(tmp_path / "m.pt"), res.threshold, {"training": {"x": 1}, "metrics": {}})
    meta = read_metadata(path)
    assert meta["architecture"]["name"] == "plain_unet" and meta["gsd_m"] == 0.5 and meta["threshold"] == res.threshold
    assert meta["architecture"]["parameters"] > 0
    lm = load_model(path, device="cpu")
    with torch.inference_mode():
        p = lm.module(torch.rand(2, 3, 64, 64))
    assert p.shape == (2, 1, 64, 64) and float(p.min()) >= 0 and float(p.max()) <= 1
    # The exported file is fine-tunable: weights come back into a Python network unchanged.
    net, meta2 = load_trainable(path)
    ref = res.net.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_training_resumes_from_checkpoint(tmp_path):
    cfg = _tiny_cfg(max_epochs=2)
    scenes = [_synthetic_scene(0)]
    val = {"s": scenes_to_tiles(tile_scene(_synthetic_scene(3), 64), 64)}
    ck = str(tmp_path / "ck.pt")
    train(CropSampler(scenes, 0.5, 64, seed=0), val, cfg, checkpoint_path=ck, log=lambda m: None)
    res = train(
        CropSampler(scenes, 0.5, 64, seed=0),
        val,
        _tiny_cfg(max_epochs=3),
        checkpoint_path=ck,
        resume=True,
        log=lambda m: None,
    )
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


@pytest.mark.slow
def test_early_stopping_keeps_best_epoch(tmp_path):
    from roof_detector.core.unet import build_model

    cfg = _tiny_cfg(max_epochs=30, patience=1, lr=0.0, weight_decay=0.0)
    net = build_model("plain_unet", base_channels=4)
    for m in net.modules():  # frozen: lr 0 and BN statistics fixed, so val IoU never improves after epoch 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    res = train(
        CropSampler([_synthetic_scene(0)], 0.5, 64, seed=0),
        {"s": scenes_to_tiles(tile_scene(_synthetic_scene(3), 64), 64)},
        cfg,
        net=net,
        log=lambda m: None,
    )
    assert res.stopped == "early-stopping" and len(res.history) == 2 and res.best_epoch == 1


def test_cancel_before_first_epoch_raises(tmp_path):
    with pytest.raises(Cancelled):
        train(
            CropSampler([_synthetic_scene(0)], 0.5, 64, seed=0),
            {},
            _tiny_cfg(),
            is_cancelled=lambda: True,
            log=lambda m: None,
        )


def test_threshold_tuning_picks_best_iou():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # logit of 0.6 everywhere the image is bright, of 0.4 elsewhere
            return torch.where(
                x.mean(1, keepdim=True) > 0, torch.logit(torch.tensor(0.6)), torch.logit(torch.tensor(0.4))
            )

    s = _synthetic_scene(0, size=64)
    thr, metrics = tune_threshold(Fixed(), {"s": scenes_to_tiles([s], 64)}, _tiny_cfg(), torch.device("cpu"))
    assert 0.4 < thr <= 0.6 and metrics["pooled"]["iou"] == pytest.approx(1.0)


def test_load_trainable_refuses_unknown_architecture(tmp_path):
    from devtools.test_model import make_test_model

    path = make_test_model(str(tmp_path / "t.pt"))
    with pytest.raises(ModelError, match="cannot fine-tune"):
        load_trainable(path)


def test_scene_from_georeferenced_raster_and_labels(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from osgeo import ogr, osr
    from rasterio.transform import from_origin

    path = str(tmp_path / "r.tif")
    data = np.zeros((3, 100, 100), np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=100,
        height=100,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000100, 0.5, 0.5),
        nodata=0,
    ) as ds:
        data[:, 10:90, 10:90] = 120
        ds.write(data)
    gpkg = str(tmp_path / "l.gpkg")
    drv = ogr.GetDriverByName("GPKG")
    dso = drv.CreateDataSource(gpkg)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lyr = dso.CreateLayer("buildings", srs, ogr.wkbPolygon)
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    ring = [
        tr.transform(x, y)
        for x, y in [(500010, 5000090), (500020, 5000090), (500020, 5000080), (500010, 5000080), (500010, 5000090)]
    ]
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((" + ",".join(f"{x} {y}" for x, y in ring) + "))"))
    lyr.CreateFeature(f)
    dso = None
    s = scene_from_raster(path, gpkg)
    assert s.image.shape == (100, 100, 3) and abs(s.gsd_m - 0.5) < 0.01
    assert s.valid.sum() == 80 * 80  # nodata border is invalid
    assert abs(int(s.label.sum()) - 400) <= 42  # a 10 m x 10 m building = 400 px of 0.5 m (EPSG:4326 labels)
    s2 = scene_from_raster(path, gpkg, load_gsd_m=1.0)
    assert s2.image.shape == (50, 50, 3) and abs(int(s2.label.sum()) - 100) <= 21


def test_shared_data_recipe_builds(shared_data):
    from devtools import recipe

    train_scenes, weights, val = recipe.build_recipe(str(shared_data), log=lambda m: None)
    assert len(train_scenes) == len(weights) > 90
    assert set(val) == {"oam", "inria"} and len(val["oam"]) > 5
    # Area 4 (test) is never read by the training recipe.
    assert not any("oam4" in s.name for s in train_scenes)
    # Each dataset gets its share of crops, whatever its ground area.
    sampler = CropSampler(train_scenes, 0.3, 256, weights)
    shares = {}
    for s, p in zip(train_scenes, sampler.p):
        shares[recipe.dataset_of(s)] = shares.get(recipe.dataset_of(s), 0.0) + p
    assert shares == pytest.approx(recipe.DATASET_SHARES)
    json.dumps([s.name for s in train_scenes])


def test_hue_rotation_keeps_grey_and_brightness_and_turns_red_to_green():
    import math

    from roof_detector.core.training.sampling import rotate_hue

    grey = torch.full((3, 4, 4), 0.4)
    assert torch.allclose(rotate_hue(grey, 1.234), grey, atol=1e-6)  # grey stays grey
    x = torch.rand(3, 8, 8) * 0.5 + 0.25  # no clipping for these
    y = rotate_hue(x, 0.7)
    assert torch.allclose(y.mean(0), x.mean(0), atol=1e-5)  # brightness kept
    assert not torch.allclose(y, x, atol=1e-3)  # colours did move
    red = torch.tensor([0.8, 0.2, 0.2]).view(3, 1, 1)
    assert torch.allclose(rotate_hue(red, 2 * math.pi / 3).flatten(), torch.tensor([0.2, 0.8, 0.2]), atol=1e-5)


@pytest.mark.slow
def test_read_only_scene_images_make_no_torch_warning():
    """Scenes decoded from image files are read-only; sampling them must not print torch's warning."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from roof_detector.core.training.sampling import AugmentConfig, CropSampler\n"
        "from roof_detector.core.training.scenes import Scene\n"
        # A crop as wide as the scene is a contiguous view: the case that reached torch read-only.
        "img = np.full((32, 32, 3), 100, np.uint8); img.setflags(write=False)\n"
        "lab = np.zeros((32, 32), np.uint8); lab[10:20, 10:20] = 1\n"
        "cfg = AugmentConfig(scale_range=(1.0, 1.0), degrade_p=0, color_p=0, grey_p=0, blur_p=0, noise_p=0,"
        " copy_paste_p=0)\n"
        "CropSampler([Scene('ro', img, lab, np.ones((32, 32), bool), 0.5)], 0.5, 32, config=cfg, seed=0).batch(2)\n"
    )
    res = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
