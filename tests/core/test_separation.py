"""Separation of touching buildings learnt by the network (issue 16).

Targets derived from label polygons (border, contact), model files with and
without the extra outputs, the engine's separation from them, test-time
augmentation, and training / fine-tuning the extra heads.
"""

import dataclasses

import numpy as np
import pytest
import shapely
import torch
from affine import Affine

from roof_detector.core.errors import ModelError
from roof_detector.core.model_io import load_model, read_metadata, save_model
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from devtools.test_model import BrightnessNet, make_test_model
from roof_detector.core.training.export import export_model, initial_network, load_trainable
from roof_detector.core.training.sampling import AugmentConfig, CropSampler, scenes_to_tiles
from roof_detector.core.training.scenes import Scene, rasterize_instances, tile_scene
from roof_detector.core.training.targets import separation_targets, target_stack
from roof_detector.core.training.trainer import TrainConfig, object_counts, train
from roof_detector.core.unet import build_model, load_widening_head

from .synthetic_rasters import BRIGHT, DARK, NORTH_UP, UTM, write_raster

GRID = Affine(1.0, 0, 0, 0, -1.0, 40.0)  # 1 m pixels, 40 x 40 px, y up from 0


def _box(c0, r0, c1, r1):
    """A polygon over pixel columns c0..c1-1 and rows r0..r1-1 of GRID."""
    return shapely.box(c0, 40 - r1, c1, 40 - r0)


def test_targets_from_touching_polygons_mark_the_seam_and_the_rims():
    # two touching houses (a shared wall at column 15) and a third 10 px away
    polys = [_box(5, 5, 15, 15), _box(15, 5, 25, 15), _box(5, 25, 15, 35)]
    inst = rasterize_instances(polys, GRID, (40, 40))
    assert inst.dtype == np.uint16 and set(np.unique(inst)) == {0, 1, 2, 3}
    border, contact = separation_targets(inst, border_px=2, contact_px=3)
    # border: the 2-pixel inner rim of every building, including along the shared wall
    ring = np.zeros((40, 40), bool)
    ring[5:15, 5:25] = True
    ring[7:13, 7:13] = False
    ring[7:13, 17:23] = False
    assert (border[5:15, 5:25].astype(bool) == ring[5:15, 5:25]).all()
    assert border[27:33, 7:13].sum() == 0 and border[25:35, 5:15].sum() == 10 * 10 - 6 * 6
    assert border[inst == 0].sum() == 0  # never outside a building
    # contact: within 3 px of both touching houses: columns 12..17 along the wall, and only there
    cols = np.unique(np.nonzero(contact)[1])
    assert cols.tolist() == [12, 13, 14, 15, 16, 17]
    rows = np.unique(np.nonzero(contact)[0])
    assert rows.min() >= 2 and rows.max() <= 17  # the window reaches 3 px beyond the wall's ends
    # the third house is 10 px from the others: no contact with them
    assert contact[20:40].sum() == 0


def test_contact_covers_a_narrow_gap_but_not_a_wide_one():
    for gap, expect in ((4, True), (8, False)):
        inst = rasterize_instances([_box(5, 5, 15, 15), _box(15 + gap, 5, 25 + gap, 15)], GRID, (40, 40))
        _, contact = separation_targets(inst, contact_px=3)
        assert bool(contact[5:15, 15 : 15 + gap].any()) is expect


def test_crop_edge_is_not_a_border_and_stack_layout():
    inst = np.zeros((20, 20), np.uint16)
    inst[:, :8] = 1  # a building cut by the crop's left, top and bottom edges
    border, _ = separation_targets(inst, border_px=2)
    assert border[:, :6].sum() == 0 and border[:, 6:8].all()
    stack = target_stack(inst, 3)
    assert stack.shape == (3, 20, 20) and stack.dtype == np.float32
    assert (stack[0] == (inst > 0)).all() and (stack[1] == border).all()
    assert target_stack(inst, 1).shape == (1, 20, 20)
    with pytest.raises(ValueError):
        target_stack(inst, 2)


def _touching_scene(n=64):
    img = np.full((n, n, 3), 60, np.uint8)
    inst = np.zeros((n, n), np.uint16)
    inst[10:40, 8:30] = 1
    inst[10:40, 30:52] = 2  # touches house 1
    inst[46:60, 10:24] = 3
    img[inst > 0] = 200
    return Scene("touching", img, (inst > 0).astype(np.uint8), np.ones((n, n), bool), 0.3, instances=inst)


def test_sampler_gives_three_targets_that_follow_the_geometric_augmentation():
    sampler = CropSampler(
        [_touching_scene()],
        0.3,
        64,
        seed=3,
        n_outputs=3,
        config=AugmentConfig(scale_range=(1, 1), degrade_p=0, color_p=0, grey_p=0, blur_p=0, noise_p=0, copy_paste_p=0),
    )
    x, y, v = sampler.batch(4)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 3, 64, 64) and v.shape == (4, 1, 64, 64)
    for i in range(4):
        building = y[i, 0] > 0.5
        assert (building == (x[i].mean(0) > 0.5)).all()  # the image and its targets moved together
        assert y[i, 2].sum() > 0  # the seam between houses 1 and 2 is in every crop
        assert (y[i, 1] <= y[i, 0]).all()  # border lies on buildings
    # chips without polygons: instances from the mask's components, so borders but no seam
    chip = _touching_scene()
    chip.instances = None
    x, y, _ = CropSampler(
        [chip], 0.3, 64, seed=3, n_outputs=3, config=AugmentConfig(scale_range=(1, 1), degrade_p=0, copy_paste_p=0)
    ).batch(2)
    assert y[:, 1].sum() > 0 and y[:, 2].sum() == 0


def test_model_files_with_and_without_separation_outputs(tmp_path):
    plain = load_model(make_test_model(str(tmp_path / "one.pt")), "cpu", backend="torch")
    sep = load_model(make_test_model(str(tmp_path / "three.pt"), separation=True), "cpu", backend="torch")
    assert plain.outputs == ["building"] and plain.core_threshold is None
    assert sep.outputs == ["building", "border", "contact"] and sep.core_threshold == 0.5
    # metadata that does not match what the module returns: one clear error, at the first batch
    wrong = make_test_model(
        str(tmp_path / "wrong.pt"),
        extra_metadata={"outputs": ["building", "border", "contact"], "separation": {"core_threshold": 0.5}},
    )
    raster = tmp_path / "r.tif"
    data = np.full((3, 64, 64), DARK, np.uint8)
    write_raster(str(raster), data, UTM, NORTH_UP)
    wrong_torch = load_model(wrong, "cpu", backend="torch")
    with pytest.raises(ModelError, match="declares 3 output"):
        detect_buildings(str(raster), DetectOptions(), model=wrong_torch)
    # the same message from the ONNX Runtime path (numpy module), which once demanded one output always
    wrong_numpy = dataclasses.replace(wrong_torch, module=_LeftBiasedNumpy())
    with pytest.raises(ModelError, match=r"returned shape \(1, 1, 64, 64\).*declares 3 output"):
        detect_buildings(str(raster), DetectOptions(), model=wrong_numpy)
    with pytest.raises(ModelError, match="outputs"):
        make_test_model(str(tmp_path / "bad.pt"), extra_metadata={"outputs": ["building", "edges"]})
    with pytest.raises(ModelError, match="core_threshold"):
        make_test_model(
            str(tmp_path / "bad.pt"), separation=True, extra_metadata={"separation": {"core_threshold": 1.5}}
        )


def test_two_touching_same_colour_roofs_give_two_polygons_only_with_separation_outputs(tmp_path):
    # two 30 x 30 m roofs of one colour sharing a wall; the wall is a faint seam (3 % darker),
    # too faint for the building probability to dip (it stays above 0.99 there)
    data = np.full((3, 200, 300), DARK, np.uint8)
    data[:, 40:100, 40:160] = BRIGHT
    data[:, 40:100, 100] = BRIGHT - 8
    path = write_raster(str(tmp_path / "pair.tif"), data, UTM, NORTH_UP)
    plain = load_model(make_test_model(str(tmp_path / "one.pt")), "cpu", backend="torch")
    sep = load_model(make_test_model(str(tmp_path / "three.pt"), separation=True), "cpu", backend="torch")
    one = detect_buildings(path, DetectOptions(), model=plain).buildings
    two = detect_buildings(path, DetectOptions(), model=sep)
    assert len(one) == 1
    assert len(two.buildings) == 2 and two.stats["outputs"] == ["building", "border", "contact"]
    areas = sorted(b.area_m2 for b in two.buildings)
    total = 120 * 60 * 0.25 / 0.9996**2
    assert sum(areas) == pytest.approx(total, rel=1e-3)  # no pixel lost at the seam
    assert areas[0] == pytest.approx(total / 2, rel=0.03)
    # the user can still turn separation off
    assert len(detect_buildings(path, DetectOptions(separate_touching=False), model=sep).buildings) == 1


def test_tta_averages_flips_and_keeps_a_symmetric_model_exact(tmp_path):
    data = np.full((3, 200, 300), DARK, np.uint8)
    data[:, 40:100, 40:100] = BRIGHT
    data[:, 120:150, 150:260] = BRIGHT
    path = write_raster(str(tmp_path / "r.tif"), data, UTM, NORTH_UP)
    model = load_model(make_test_model(str(tmp_path / "m.pt")), "cpu", backend="torch")
    plain = detect_buildings(path, DetectOptions(), model=model)
    tta = detect_buildings(path, DetectOptions(tta=True), model=model)
    assert tta.stats["tta_passes"] == 4 and plain.stats["tta_passes"] == 1
    # a per-pixel model gives the same answer on every flip
    assert sorted(b.area_m2 for b in tta.buildings) == pytest.approx(sorted(b.area_m2 for b in plain.buildings))

    class LeftBiased(torch.nn.Module):  # building where the pixel's LEFT neighbour is bright
        def forward(self, x):
            grey = x.mean(dim=1, keepdim=True)
            left = torch.nn.functional.pad(grey, (1, 0, 0, 0))[..., :-1]
            return torch.sigmoid(40 * (left - 0.5))

    meta = read_metadata(str(tmp_path / "m.pt"))
    biased = load_model(save_model(LeftBiased(), str(tmp_path / "b.pt"), meta), "cpu", backend="torch")
    from roof_detector.core.inference import BatchPredictor

    rgb = np.zeros((1, 3, 64, 64), np.float32)
    rgb[..., 20:40, 20:40] = 0.9
    p1 = BatchPredictor(biased)(rgb)[0]
    p4 = BatchPredictor(biased, tta=True)(rgb)[0]
    assert p1[30, 40] > 0.99 and p1[30, 20] < 0.01  # shifted one pixel right
    assert p4[30, 40] == pytest.approx(0.5, abs=0.01) and p4[30, 20] == pytest.approx(0.5, abs=0.01)


class _LeftBiasedNumpy:
    """An ONNX-Runtime-like module (numpy in and out): building where the pixel's left neighbour is bright."""

    numpy_io = True

    def run_numpy(self, x):
        grey = x.mean(axis=1, keepdims=True)
        left = np.pad(grey, ((0, 0), (0, 0), (0, 0), (1, 0)))[..., :-1]
        return (1.0 / (1.0 + np.exp(-40.0 * (left - 0.5)))).astype(np.float32)


def test_tta_averages_flips_on_the_onnx_runtime_path_too(tmp_path):
    # The CPU path runs numpy modules (the ONNX twin); --tta once ran a single pass there.

    from roof_detector.core.inference import BatchPredictor

    torch_model = load_model(make_test_model(str(tmp_path / "m.pt")), "cpu", backend="torch")
    model = dataclasses.replace(torch_model, module=_LeftBiasedNumpy())
    rgb = np.zeros((2, 3, 64, 64), np.float32)
    rgb[..., 20:40, 20:40] = 0.9
    p1 = BatchPredictor(model)(rgb)
    p4 = BatchPredictor(model, tta=True)(rgb)
    assert p1.shape == p4.shape == (2, 64, 64) and p4.dtype == np.float32
    assert p1[0, 30, 40] > 0.99 and p1[0, 30, 20] < 0.01  # shifted one pixel right
    assert p4[0, 30, 40] == pytest.approx(0.5, abs=0.01) and p4[0, 30, 20] == pytest.approx(0.5, abs=0.01)


def test_object_counts_match_instances_at_iou_half():
    ref = np.zeros((40, 40), np.int64)
    ref[5:15, 5:15] = 1
    ref[5:15, 16:26] = 2
    prob = np.zeros((3, 40, 40), np.float32)
    prob[0][5:15, 5:26] = 0.95
    valid = np.ones((40, 40), bool)
    # one merged block: matches neither house at IoU 0.5
    assert object_counts(prob, ref, valid, 0.5, None, 20) == (1, 2, 0)
    prob[2][5:15, 14:17] = 0.9  # a contact seam: two cores, two matches
    assert object_counts(prob, ref, valid, 0.5, 0.5, 20) == (2, 2, 2)
    # a block exactly twice a house (IoU 0.5 with both) matches one of them only
    ref[5:15, 15] = 2
    prob[0][5:15, 25] = 0
    ref[5:15, 25] = 0
    assert object_counts(prob, ref, valid, 0.5, None, 20) == (1, 2, 1)


def test_widened_head_keeps_the_building_output_and_trains_all_three(tmp_path):
    torch.manual_seed(0)
    one = build_model("plain_unet", base_channels=4)
    cfg1 = TrainConfig(architecture="plain_unet", architecture_params={"base_channels": 4}, tile_px=64, overlap_px=8)
    path = export_model(one, cfg1, str(tmp_path / "one.pt"), 0.5, {"name": "one"})
    assert read_metadata(path)["outputs"] == ["building"]
    net, meta = load_trainable(path, out_channels=3)
    assert meta["architecture"]["params"]["out_channels"] == 3
    x = torch.rand(1, 3, 64, 64)
    one.eval(), net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x)[:, :1], one(x), atol=1e-6)  # the building output is the old one
    same, line = initial_network(path, "plain_unet", {"base_channels": 4, "out_channels": 3})
    assert "model file" in line and same.head.out_channels == 3
    with pytest.raises(ValueError):
        load_widening_head(build_model("plain_unet", base_channels=4), net.state_dict())  # cannot narrow
    scene = _touching_scene()
    cfg = TrainConfig(
        architecture="plain_unet",
        architecture_params={"base_channels": 4, "out_channels": 3},
        tile_px=64,
        overlap_px=8,
        samples_per_epoch=8,
        batch_size=4,
        max_epochs=2,
        patience=5,
        select_on="iou+objects",
        ema_decay=0,
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sampler = CropSampler([scene], 0.3, 64, seed=0, n_outputs=3)
    result = train(sampler, {"v": scenes_to_tiles(tile_scene(scene, 64), 64)}, cfg, net=net, log=lambda m: None)
    head = result.net.state_dict()["head.weight"]
    assert all(not torch.equal(head[c], before["head.weight"][c]) for c in range(3))  # every head learnt
    assert "val_object_f1" in result.history[0] and "objects" in result.val_metrics
    assert result.core_threshold is not None
    out = export_model(
        result.net,
        cfg,
        str(tmp_path / "three.pt"),
        result.threshold,
        {"name": "three"},
        core_threshold=result.core_threshold,
    )
    meta3 = read_metadata(out)
    assert meta3["outputs"] == ["building", "border", "contact"]
    assert meta3["separation"]["core_threshold"] == result.core_threshold
    loaded = load_model(out, "cpu")  # ONNX Runtime when present: three channels exported too
    assert loaded.outputs == meta3["outputs"]
    assert loaded.module(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    # and the engine runs it on either backend: building probability and separation score, the same
    from roof_detector.core.inference import BatchPredictor

    rgb = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    on_torch = load_model(out, "cpu", backend="torch")
    assert BatchPredictor(on_torch)(rgb).shape == (2, 2, 64, 64)
    for tta in (False, True):
        assert np.abs(BatchPredictor(loaded, tta=tta)(rgb) - BatchPredictor(on_torch, tta=tta)(rgb)).max() < 1e-4
    raster = write_raster(str(tmp_path / "r.tif"), np.full((3, 96, 96), DARK, np.uint8), UTM, NORTH_UP)
    res = detect_buildings(raster, DetectOptions(), model=loaded)  # the whole run, as a CPU user gets it
    assert res.stats["backend"] == loaded.extra["backend"] == "onnxruntime" and res.stats["outputs"] == meta3["outputs"]


def test_brightness_net_is_unchanged():
    # the tests' one-layer model keeps its single output
    assert BrightnessNet()(torch.rand(1, 3, 8, 8)).shape == (1, 1, 8, 8)
