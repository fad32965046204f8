"""The bundled model's data recipe over ``../shared/data`` (see its README).

Split, following the data README's suggestion:

* OAM test: area 4 (Catanduanes) is never read here.
* OAM train: areas 1, 2, 3, 5, except the smaller imagery block of area 1,
  held out for validation (a spatial split: blocks never overlap).
* INRIA: ``train`` for training, ``val`` for validation, ``test`` never read.
* Dubai and SpaceNet chips: training only.

GSD: 0.3 m. OAM zoom 19 is 0.26-0.30 m on the ground, INRIA and SpaceNet are
0.3 m, so most data needs little or no resampling there, and 0.3 m is fine
enough for houses of 30 m2 (about 330 pixels). OAM scenes are loaded from
zoom 20 (0.13-0.15 m) so scale jitter can draw crops both finer and coarser
than 0.3 m without upsampling artefacts; zoom 19 adds the tile server's own
downsampling as a second look at the same ground.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

from roof_detector.core.training.scenes import (
    Scene,
    resample_scene,
    scene_from_raster,
    scenes_from_chips,
    split_blocks,
    tile_scene,
)

TRAIN_AREAS = (1, 2, 3, 5)
VAL_AREA = 1
TEST_AREA = 4
DUBAI_GSD_M = 0.6  # not published; cars span 4-5 px, so about 1 m at most; 0.6 m a middle guess
# Share of training crops per dataset. Within a dataset, scenes are drawn by ground area.
# (Drawing by ground area across datasets would give the coarse Dubai satellite chips
# about 85% of all crops.) The OAM drone imagery is what users' orthophotos resemble most.
DATASET_SHARES = {"oam": 0.55, "inria": 0.2, "spacenet": 0.1, "dubai": 0.15}


def shared_data_dir(start: str = "") -> str:
    """``../shared/data`` relative to the repo (or ``start``), or '' when absent."""
    here = start or os.path.join(os.path.dirname(__file__), "..")
    path = os.path.normpath(os.path.join(here, "..", "shared", "data"))
    return path if os.path.isdir(path) else ""


def oam_scene(data_dir: str, area: int, zoom: int, load_gsd_m=None) -> Scene:
    """One OAM area at one zoom, with its OSM labels rasterised and clipped to the valid mask."""
    base = os.path.join(data_dir, "oam", f"area{area}")
    return scene_from_raster(
        os.path.join(base, f"ortho_z{zoom}.tif"),
        os.path.join(base, "buildings.gpkg"),
        name=f"oam{area}_z{zoom}",
        load_gsd_m=load_gsd_m,
    )


def _split_val_block(scene: Scene) -> Tuple[List[Scene], Scene]:
    """(training blocks, held-out validation block = the smallest block by valid pixels)."""
    boxes = split_blocks(scene.valid)
    blocks = [scene.crop(*b, name=f"{scene.name}_block{i}") for i, b in enumerate(boxes)]
    blocks.sort(key=lambda s: int(s.valid.sum()))
    return blocks[1:], blocks[0]


def build_recipe(
    data_dir: str, gsd_m: float = 0.3, tile_px: int = 256, log=print
) -> Tuple[List[Scene], List[float], Dict[str, list]]:
    """Training scenes with sampling weights, and validation scenes per set (already at ``gsd_m``)."""
    train: List[Scene] = []
    weights: List[float] = []
    val: Dict[str, list] = {}
    for area in TRAIN_AREAS:
        for zoom, w in ((20, 1.0), (19, 0.35)):
            s = oam_scene(data_dir, area, zoom)
            if area == VAL_AREA:
                blocks, held = _split_val_block(s)
                if zoom == 20:
                    val_scene = resample_scene(held, gsd_m)
                    val["oam"] = tile_scene(val_scene, tile_px)
                    log(f"validation: {held.name} -> {len(val['oam'])} tiles of {tile_px} px at {gsd_m} m")
                train.extend(blocks)
                weights.extend([w] * len(blocks))
            else:
                train.append(s)
                weights.append(w)
    inria = os.path.join(data_dir, "chips", "inria")
    chips = scenes_from_chips(
        os.path.join(inria, "train", "images"), os.path.join(inria, "train", "masks"), 0.3, "inria_"
    )
    train.extend(chips)
    weights.extend([1.5] * len(chips))
    val["inria"] = [
        t
        for s in resample_scene_list(
            scenes_from_chips(os.path.join(inria, "val", "images"), os.path.join(inria, "val", "masks"), 0.3, "inria_"),
            gsd_m,
        )
        for t in tile_scene(s, tile_px)
    ]
    sn = os.path.join(data_dir, "chips", "spacenet")
    chips = scenes_from_chips(os.path.join(sn, "images"), os.path.join(sn, "masks"), 0.3, "spacenet_")
    train.extend(chips)
    weights.extend([1.5] * len(chips))
    db = os.path.join(data_dir, "chips", "dubai")
    chips = scenes_from_chips(os.path.join(db, "images"), os.path.join(db, "masks"), DUBAI_GSD_M, "dubai_")
    train.extend(chips)
    weights.extend([0.5] * len(chips))
    weights = dataset_weights(train, weights)
    log(f"training scenes: {len(train)}; validation tiles: " + ", ".join(f"{k} {len(v)}" for k, v in val.items()))
    return train, weights, val


def dataset_of(scene: Scene) -> str:
    """The dataset a recipe scene comes from, by its name prefix."""
    for name in DATASET_SHARES:
        if scene.name.startswith(name):
            return name
    raise ValueError(f"scene {scene.name!r} belongs to no dataset of the recipe")


def dataset_weights(scenes: List[Scene], weights: List[float]) -> List[float]:
    """Sampler weights giving each dataset its DATASET_SHARES share of crops.

    The sampler draws a scene with probability proportional to weight x ground
    area; dividing by the dataset's weighted ground area makes each dataset's
    total its share, while scenes inside it keep their relative weights.
    """
    area = [s.valid.sum() * s.gsd_m**2 for s in scenes]
    totals: Dict[str, float] = {}
    for s, w, a in zip(scenes, weights, area):
        totals[dataset_of(s)] = totals.get(dataset_of(s), 0.0) + w * a
    return [w * DATASET_SHARES[dataset_of(s)] / totals[dataset_of(s)] for s, w in zip(scenes, weights)]


def resample_scene_list(scenes: List[Scene], gsd_m: float) -> List[Scene]:
    return [resample_scene(s, gsd_m) for s in scenes]


def test_sets(data_dir: str, gsd_m: float = 0.3) -> Dict[str, List[Scene]]:
    """Held-out test scenes at ``gsd_m``: OAM area 4 and the INRIA test chips. Never used in training."""
    inria = os.path.join(data_dir, "chips", "inria", "test")
    return {
        "oam_area4": [oam_scene(data_dir, TEST_AREA, 21, load_gsd_m=gsd_m)],
        "inria_test": resample_scene_list(
            scenes_from_chips(os.path.join(inria, "images"), os.path.join(inria, "masks"), 0.3, "inria_"), gsd_m
        ),
    }
