"""Before / after on labelled ground outside a fine-tuning run's training area.

When the label layer reaches beyond the labelled area (or only some features are selected),
the base and the fine-tuned models are compared there too, on ground neither trained on:
pixel IoU and object F1 (buildings separated as the engine does).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import shapely

from ..vector_io import read_polygons
from .sampling import scenes_to_tiles
from .scenes import Scene, scene_from_raster
from .trainer import TrainConfig, TrainResult, evaluate_tiles
from .trainer import _object_f1 as object_f1

#: Largest ground the outside comparison reads at the model GSD, in pixels (about 40 MB of image).
MAX_OUTSIDE_PX = 4096 * 4096


def outside_scene(opts, meta: Dict, area, log: Callable[[str], None] = print) -> Optional[Scene]:
    """The labelled ground outside the training area, at the model GSD, or None (nothing there, or too large).

    ``opts`` is the run's :class:`.finetune.FinetuneOptions`. Its extent is that of every polygon of the label layer (all features, selected or not); inside
    it, beyond the training area, unlabelled pixels count as "not building".
    """
    import rasterio

    with rasterio.open(opts.raster_path) as ds:
        crs_wkt = ds.crs.to_wkt()
        raster_box = shapely.box(*ds.bounds)
        gx = abs(ds.transform.a)
    geoms = [
        g
        for g in read_polygons(opts.labels_path, target_crs_wkt=crs_wkt, layer=opts.labels_layer).geometries
        if g.intersects(raster_box)
    ]
    if not geoms:
        return None
    outside = shapely.box(*shapely.union_all(geoms).bounds).intersection(raster_box).difference(area)
    labelled = [g for g in geoms if g.intersects(outside)]
    if outside.is_empty or not labelled:
        return None
    from .scenes import ground_pixel_size_m

    gsd_m = float(meta["gsd_m"])
    with rasterio.open(opts.raster_path) as ds:
        native_m = sum(ground_pixel_size_m(ds)) / 2.0
    # raster pixels of the outside ground, then as many at the model's pixel size
    px = outside.area / (gx * gx) * (native_m / gsd_m) ** 2
    if px > MAX_OUTSIDE_PX:
        log(
            f"The labelled ground outside the training area is too large to compare here ({px / 1e6:.0f} Mpx at "
            f"the model's {gsd_m:g} m); use `python -m roof_detector evaluate` on a detection there."
        )
        return None
    return scene_from_raster(
        opts.raster_path,
        None,
        bbox=outside.bounds,
        load_gsd_m=gsd_m,
        area_wkt=outside.wkt,
        label_geometries=labelled,
        name="outside",
    )


def compare_outside(
    base_net,
    new_net,
    scene: Scene,
    cfg: TrainConfig,
    base_threshold: float,
    base_core: Optional[float],
    new_threshold: float,
    new_core: Optional[float],
    device,
) -> Dict[str, Dict[str, float]]:
    """Pixel IoU and object F1 (buildings separated as the engine does) of two networks on ``scene``."""
    from ..vectorize import SPLIT_CORE_PROBABILITY
    from .scenes import tile_scene

    tiles = scenes_to_tiles(tile_scene(scene, cfg.tile_px, 0.01), cfg.tile_px)
    out = {}
    for key, net, thr, core in (
        ("before", base_net, base_threshold, base_core),
        ("after", new_net, new_threshold, new_core),
    ):
        c = core if core is not None else max(SPLIT_CORE_PROBABILITY, thr)
        n_out = int(getattr(net.head, "out_channels", 1))
        c_cfg = TrainConfig(
            **{**cfg.__dict__, "architecture_params": {**cfg.architecture_params, "out_channels": n_out}}
        )
        r = evaluate_tiles(net.to(device), tiles, c_cfg, device, (thr,), objects=((thr, c),))
        n_pred, n_ref, n_match = r[("objects", thr, c)]
        out[key] = {
            "iou": r[thr].iou(),
            "accuracy": r[thr].accuracy(),
            "object_f1": object_f1(n_pred, n_ref, n_match),
            "predicted": n_pred,
            "reference": n_ref,
            "matched": n_match,
        }
    return out


def measure_outside(
    opts,
    meta: Dict,
    area,
    base_net,
    result: TrainResult,
    cfg: TrainConfig,
    device,
    notes: List[str],
    log: Callable[[str], None],
) -> Dict[str, Dict[str, float]]:
    """Before / after outside the training area ({} with a note when there are no labels there)."""
    other = outside_scene(opts, meta, area, log)
    if other is None:
        notes.append("No labels outside the labelled area: no before/after there.")
        return {}
    base_thr = float(meta["threshold"])
    base_core = meta.get("separation", {}).get("core_threshold") if cfg.n_outputs > 1 else None
    outside = compare_outside(
        base_net, result.net, other, cfg, base_thr, base_core, result.threshold, result.core_threshold, device
    )
    b, a = outside["before"], outside["after"]
    log(
        f"outside the labelled area ({b['reference']} buildings): IoU {b['iou']:.4f} -> {a['iou']:.4f}, "
        f"object F1 {b['object_f1']:.4f} -> {a['object_f1']:.4f}"
    )
    return outside
