"""Fine-tuning on a generated raster and label layer (no ../shared needed)."""

import numpy as np
import pytest

from roof_detector.core.errors import LabelError
from roof_detector.core.model_io import read_metadata
from roof_detector.core.training.finetune import FinetuneOptions, finetune
from roof_detector.core.training.validation_blocks import choose_validation_blocks, validation_block_px

from .finetune_setup import building_rects, ring, write_base_model, write_ortho

rasterio = pytest.importorskip("rasterio")
ogr = pytest.importorskip("osgeo.ogr")


@pytest.fixture()
def labelled_area(tmp_path):
    """A 256 x 256 px raster at 0.5 m (EPSG:32631) with bright buildings and their polygons in EPSG:4326."""
    from osgeo import osr
    from pyproj import Transformer

    rects = building_rects()
    raster = write_ortho(str(tmp_path / "ortho.tif"), rects)
    labels = str(tmp_path / "labels.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(labels)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lyr = ds.CreateLayer("buildings", srs, ogr.wkbPolygon)
    tr = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    for rect in rects:
        points = [tr.transform(x, y) for x, y in ring(*rect)]
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((" + ",".join(f"{x} {y}" for x, y in points) + "))"))
        lyr.CreateFeature(f)
    # One point feature: must be skipped and reported, not crash.
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt("POINT(3 45)"))
    lyr.CreateFeature(f)
    ds = None
    base = write_base_model(str(tmp_path / "base.pt"))
    return raster, labels, base


def _finetune(raster, labels, base, output_path, log=lambda m: None, is_cancelled=None, on_epoch=None, **options):
    """``finetune`` on the CPU with ``options`` (FinetuneOptions fields)."""
    opts = FinetuneOptions(
        raster_path=raster, labels_path=labels, output_path=output_path, base_model_path=base, device="cpu", **options
    )
    return finetune(opts, is_cancelled=is_cancelled, on_epoch=on_epoch, log=log)


@pytest.mark.slow
def test_finetune_writes_a_loadable_model_with_metadata_and_curves(labelled_area, tmp_path):
    raster, labels, base = labelled_area
    out = str(tmp_path / "lib" / "mine.pt")
    epochs = []
    res = _finetune(
        raster,
        labels,
        base,
        out,
        epochs=2,
        lr=3e-3,
        batch_size=4,
        samples_per_epoch=8,
        on_epoch=lambda i: epochs.append(i["row"]["epoch"]),
    )
    assert res.model_path == out and epochs == [1, 2] and len(res.history) == 2
    meta = read_metadata(out)
    assert meta["base_model"]["name"] == "tiny-base"
    assert meta["training"]["kind"] == "fine-tune" and meta["training"]["label_polygons"] == 24
    assert set(meta["metrics"]) == {"val_before", "val_after"}
    assert 0 <= meta["metrics"]["val_after"]["iou"] <= 1 and meta["threshold"] == res.threshold
    assert any("skipped" in n for n in res.notes)  # the point feature
    assert (tmp_path / "lib" / "mine_curves.png").stat().st_size > 5000


@pytest.mark.slow
def test_cancel_drops_or_keeps_the_model(labelled_area, tmp_path):
    raster, labels, base = labelled_area
    calls = {"n": 0}

    def cancel_after_first_epoch():
        calls["n"] += 1
        return calls["n"] > 2  # two batches = one epoch of 8 samples, then cancel

    for keep in (False, True):
        calls["n"] = 0
        out = str(tmp_path / f"keep{keep}.pt")
        res = _finetune(
            raster,
            labels,
            base,
            out,
            epochs=5,
            batch_size=4,
            samples_per_epoch=8,
            keep_best_on_cancel=keep,
            is_cancelled=cancel_after_first_epoch,
        )
        assert res.stopped == "cancelled"
        assert (res.model_path is not None) == keep
        assert (tmp_path / f"keep{keep}.pt").exists() == keep


def test_labels_outside_the_raster_are_refused(labelled_area, tmp_path):
    raster, _, base = labelled_area
    far = str(tmp_path / "far.gpkg")
    from osgeo import osr

    ds = ogr.GetDriverByName("GPKG").CreateDataSource(far)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    lyr = ds.CreateLayer("b", srs, ogr.wkbPolygon)
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,10 0,10 10,0 10,0 0))"))
    lyr.CreateFeature(f)
    ds = None
    with pytest.raises(LabelError, match="No label polygon lies inside the raster"):
        _finetune(raster, far, base, str(tmp_path / "x.pt"))


def test_validation_blocks_are_whole_blocks_and_need_two():
    valid = np.ones((256, 256), bool)
    mask = choose_validation_blocks(valid, 64, 0.2, seed=0)
    assert 0.1 <= mask.mean() <= 0.3
    blocks = mask.reshape(4, 64, 4, 64).transpose(0, 2, 1, 3).reshape(16, -1)
    assert all(b.all() or not b.any() for b in blocks)  # never a partial block
    with pytest.raises(LabelError, match="too small to hold out validation"):
        choose_validation_blocks(np.ones((64, 64), bool), 64, 0.2)


def _whole_blocks(mask: np.ndarray, block_px: int) -> bool:
    h, w = mask.shape
    for r in range(0, h, block_px):
        for c in range(0, w, block_px):
            b = mask[r : r + block_px, c : c + block_px]
            if b.any() and not b.all():
                return False
    return True


def test_a_fifth_of_a_neighbourhood_splits_into_smaller_validation_blocks():
    # The left fifth of OAM area 4 at 0.3 m: 256 rows x 268 columns of imagery inside a 727 x 268 px
    # box (the rest is nodata); with one-tile blocks (256 px) it held a single usable block.
    valid = np.zeros((727, 268), bool)
    valid[471:, :] = True
    assert validation_block_px(valid, 256) == 128
    mask = choose_validation_blocks(valid, 128, 0.2, seed=0)
    share = (mask & valid).sum() / valid.sum()
    assert 0.1 <= share <= 0.35 and _whole_blocks(mask, 128)
    assert (valid & ~mask).sum() > 0.6 * valid.sum()  # most of it still trains
    # a big area keeps one model tile per block, a thin strip goes down to the smallest block
    assert validation_block_px(np.ones((1024, 1024), bool), 256) == 256
    assert validation_block_px(np.ones((70, 400), bool), 256) == 64


def test_blocks_never_take_much_more_than_the_asked_share():
    valid = np.ones((256, 640), bool)  # 10 blocks of 128 px: 20 % is two blocks, never three or more
    for seed in range(5):
        mask = choose_validation_blocks(valid, 128, 0.2, seed=seed)
        assert mask.sum() == 2 * 128 * 128


def test_an_area_too_small_even_for_the_smallest_blocks_says_what_is_missing():
    valid = np.ones((60, 60), bool)
    block = validation_block_px(valid, 256)
    assert block == 64
    with pytest.raises(LabelError, match=r"at least two blocks of 64 x 64 px .* holds 3600 px; draw a larger area"):
        choose_validation_blocks(valid, block, 0.2)


@pytest.mark.slow
def test_label_fids_select_features_by_their_feature_id(labelled_area, tmp_path):
    raster, labels, base = labelled_area
    out = str(tmp_path / "sel.pt")
    _finetune(
        raster, labels, base, out, label_fids=list(range(1, 13)) + [25], epochs=1, batch_size=4, samples_per_epoch=4
    )
    # GeoPackage feature ids start at 1; fid 25 is the point feature, skipped as no polygon.
    assert read_metadata(out)["training"]["label_polygons"] == 12


def test_default_crops_per_epoch_scale_with_the_labelled_area():
    from roof_detector.core.training.finetune_plan import (
        MAX_SAMPLES,
        MIN_SAMPLES,
        SAMPLES_PER_TILE,
        default_samples_per_epoch,
        plan,
    )

    tile = 256
    sizes = [default_samples_per_epoch(int(t * tile * tile), tile, 8) for t in (0.5, 2, 4, 8, 50)]
    assert sizes[0] == MIN_SAMPLES and sizes[-1] == MAX_SAMPLES
    assert sizes[2] == 4 * SAMPLES_PER_TILE and sizes[1] < sizes[2] < sizes[3]  # grows with the area
    assert all(s % 8 == 0 for s in sizes)
    opts = FinetuneOptions(raster_path="", labels_path="", output_path="")
    assert (opts.epochs, opts.patience, opts.max_minutes) == (30, 5, 15.0)  # early stopping does the rest
    small, large = (plan(int(t * tile * tile), tile, opts, "cpu", threads=2) for t in (2, 8))
    assert small["samples_per_epoch"] == sizes[1] and large["samples_per_epoch"] == sizes[3]
    assert large["estimate_minutes"] > small["estimate_minutes"] > 0 and large["budget_minutes"] == 15.0
    fixed = plan(8 * tile * tile, tile, FinetuneOptions("", "", "", samples_per_epoch=64), "cpu", threads=2)
    assert fixed["samples_per_epoch"] == 64  # the user's choice wins


def test_defaults_used_and_before_after_outside_the_labelled_area(labelled_area, tmp_path):
    from roof_detector.core.training.finetune_plan import default_samples_per_epoch

    raster, labels, base = labelled_area
    # train on the left half only; the labels cover the whole raster, so the right half is compared
    x0, y0 = 500000.0, 5000000.0
    left = f"POLYGON(({x0} {y0},{x0 + 64} {y0},{x0 + 64} {y0 - 128},{x0} {y0 - 128},{x0} {y0}))"
    out = str(tmp_path / "half.pt")
    lines = []
    res = _finetune(raster, labels, base, out, log=lines.append, area_wkt=left, epochs=1, batch_size=4)
    assert any(line.startswith("Plan: ") and "time budget 15 min" in line for line in lines)
    assert res.plan["samples_per_epoch"] == default_samples_per_epoch(
        int(res.plan["labelled_tiles"] * 64 * 64 + 0.5), 64, 4
    )
    assert res.outside["before"]["reference"] > 5
    assert res.outside["after"]["reference"] == res.outside["before"]["reference"]
    for key in ("iou", "object_f1"):
        assert 0 <= res.outside["before"][key] <= 1 and 0 <= res.outside["after"][key] <= 1
    meta = read_metadata(out)
    assert meta["metrics"]["outside_after"]["iou"] == pytest.approx(res.outside["after"]["iou"])
    assert any("outside the labelled area" in line for line in lines)


def _efflite_base(path: str) -> str:
    """An untrained EfficientNet-Lite0 U-Net exported as a base model (64 px tiles at the raster's 0.5 m)."""
    from roof_detector.core.training.export import export_model
    from roof_detector.core.training.trainer import TrainConfig
    from roof_detector.core.unet import build_model

    cfg = TrainConfig(architecture="efflite0_unet", gsd_m=0.5, tile_px=64, overlap_px=8)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    export_model(build_model("efflite0_unet"), cfg, path, 0.5, {"name": "efflite-base"})
    return path


@pytest.mark.slow
def test_decoder_only_keeps_the_encoder_and_trains_the_rest(labelled_area, tmp_path):
    from roof_detector.core.training.export import load_trainable

    raster, labels, _ = labelled_area
    base = _efflite_base(str(tmp_path / "eff.pt"))
    runs = {}
    for frozen in (True, False):
        out = str(tmp_path / f"frozen_{frozen}.pt")
        _finetune(
            raster,
            labels,
            base,
            out,
            epochs=1,
            batch_size=4,
            samples_per_epoch=8,
            lr=0.01,
            freeze_encoder=frozen,
            compare_outside=False,
        )
        runs[frozen] = load_trainable(out)
    base_net, _ = load_trainable(base)
    enc0 = base_net.encoder.state_dict()
    for frozen, (net, meta) in runs.items():
        enc = net.encoder.state_dict()
        # weights and batch-norm statistics; the exported weights are an average of the steps' weights,
        # which for a frozen encoder is its own value up to rounding
        drift = max(float((enc[k].double() - enc0[k].double()).abs().max()) for k in enc0)
        assert (drift < 1e-5) is frozen, (frozen, drift)
        assert not torch_equal(net.head.weight, base_net.head.weight)  # the head always trains
        assert meta["training"].get("frozen") == ("encoder" if frozen else None)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_model_without_an_encoder_trains_every_layer_and_says_so(labelled_area, tmp_path):
    raster, labels, base = labelled_area  # the tiny plain U-Net
    res = _finetune(
        raster,
        labels,
        base,
        str(tmp_path / "plain.pt"),
        epochs=1,
        batch_size=4,
        samples_per_epoch=8,
        freeze_encoder=True,
        compare_outside=False,
    )
    assert "The base model has no separate encoder to keep: every layer is trained." in res.notes
