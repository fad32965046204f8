"""Training scenes: images with building masks held in memory at a known GSD.

Two kinds of source feed training and fine-tuning:

* a georeferenced raster plus a polygon label layer: the raster is read
  (optionally inside a bounding box, at a chosen ground pixel size) and the
  polygons are rasterised on the fly onto that grid; pixels outside the
  raster's valid mask are flagged invalid and never count;
* image/mask chip pairs (PNG/JPEG, no georeference) at a stated GSD.

A :class:`Scene` is what both become: ``image`` (H x W x 3 uint8), ``label``
(H x W uint8 0/1), ``valid`` (H x W bool) and ``gsd_m`` (ground metres per
pixel), plus ``instances`` (H x W, one id per label polygon, 0 = background)
for polygon labels: what separation targets are derived from
(:mod:`.targets`); chip masks have none (their connected components stand in). Samplers in :mod:`.sampling` cut model-GSD crops out of scenes.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..errors import InputRasterError, LabelError
from ..vector_io import rasterize_polygons, read_polygons


@dataclass
class Scene:
    """An image with its building mask and validity mask, at ``gsd_m`` m/px."""

    name: str
    image: np.ndarray  # H x W x 3 uint8
    label: np.ndarray  # H x W uint8 0/1
    valid: np.ndarray  # H x W bool
    gsd_m: float
    transform: Optional[object] = None  # affine.Affine of georeferenced scenes
    instances: Optional[np.ndarray] = None  # H x W uint16/int32 polygon ids (0 = none), polygon labels only

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0

    def crop(self, row0: int, col0: int, rows: int, cols: int, name: str = "") -> "Scene":
        """A sub-scene (views, no copy)."""
        sl = (slice(row0, row0 + rows), slice(col0, col0 + cols))
        return Scene(
            name or f"{self.name}[{row0}:{row0 + rows},{col0}:{col0 + cols}]",
            self.image[sl],
            self.label[sl],
            self.valid[sl],
            self.gsd_m,
            instances=None if self.instances is None else self.instances[sl],
        )


def ground_pixel_size_m(dataset) -> Tuple[float, float]:
    """Ground size (x, y) in metres of one pixel at the centre of a rasterio dataset."""
    from ..geo import pixel_size_m

    return pixel_size_m(dataset.crs.to_wkt(), dataset.transform, dataset.width, dataset.height)


def scene_from_raster(
    raster_path: str,
    labels_path: Optional[str],
    name: Optional[str] = None,
    bbox: Optional[Tuple[float, float, float, float]] = None,
    load_gsd_m: Optional[float] = None,
    area_wkt: Optional[str] = None,
    label_layer: Optional[str] = None,
    label_geometries=None,
) -> Scene:
    """Load a raster (inside ``bbox`` in its CRS, if given) with its labels as a Scene.

    ``load_gsd_m`` resamples on read (area-averaging when coarser than the
    source); None keeps the native pixel size. Labels in another CRS are
    reprojected. ``area_wkt`` (raster CRS) limits validity to the area whose
    buildings are all labelled: outside it pixels are invalid.
    ``label_geometries`` (shapely, raster CRS) are burnt instead of reading ``labels_path``.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds, Window

    try:
        ds = rasterio.open(raster_path)
    except Exception as exc:  # noqa: BLE001 - any failure is reported below
        raise InputRasterError(f"{raster_path} cannot be opened as a raster ({exc})") from None
    with ds:
        if ds.crs is None:
            raise InputRasterError(f"{raster_path} has no CRS; assign one before training")
        if ds.count < 3:
            grey = True
        else:
            grey = False
        win = Window(0, 0, ds.width, ds.height)
        if bbox is not None:
            win = from_bounds(*bbox, transform=ds.transform).round_offsets().round_lengths()
            win = win.intersection(Window(0, 0, ds.width, ds.height))
        gx, gy = ground_pixel_size_m(ds)
        native = (gx + gy) / 2.0
        scale = 1.0 if not load_gsd_m else max(native / load_gsd_m, 1e-6)
        out_h = max(1, int(round(win.height * scale)))
        out_w = max(1, int(round(win.width * scale)))
        resampling = Resampling.average if scale < 1 else Resampling.bilinear
        bands = [1, 1, 1] if grey else [1, 2, 3]
        from ..raster_source import read_errors_named

        with read_errors_named(raster_path, win):
            img = ds.read(bands, window=win, out_shape=(3, out_h, out_w), resampling=resampling)
            valid = ds.dataset_mask(window=win, out_shape=(out_h, out_w), resampling=Resampling.nearest) > 0
        if img.dtype != np.uint8:
            lo, hi = np.percentile(img[img > 0], [2, 98]) if np.any(img > 0) else (0, 1)
            img = np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        transform = ds.window_transform(win) * rasterio.Affine.scale(win.width / out_w, win.height / out_h)
        crs_wkt = ds.crs.to_wkt()
        bounds = rasterio.windows.bounds(win, ds.transform)
    geoms = []
    if label_geometries is not None:
        geoms = list(label_geometries)
    elif labels_path:
        geoms = read_polygons(labels_path, target_crs_wkt=crs_wkt, layer=label_layer, bbox=bounds).geometries
    instances = rasterize_instances(geoms, transform, (out_h, out_w))
    if area_wkt:
        import shapely

        area = shapely.from_wkt(area_wkt)
        valid &= rasterize_polygons([area], transform, (out_h, out_w)).astype(bool)
    instances[~valid] = 0  # labels run past the imagery: clip them to the valid mask
    label = (instances > 0).view(np.uint8)
    return Scene(
        name or os.path.basename(raster_path),
        np.ascontiguousarray(img.transpose(1, 2, 0)),
        label,
        valid,
        native / scale,
        transform,
        instances=instances,
    )


def rasterize_instances(geometries, transform, shape: Tuple[int, int]) -> np.ndarray:
    """Burn polygons with ids 1..n (uint16 when they fit, else int32); pixel-centre rule as
    :func:`~roof_detector.core.vector_io.rasterize_polygons`. Where polygons overlap the later one wins."""
    from rasterio import features

    geoms = [g for g in geometries if g is not None and not g.is_empty]
    dtype = "uint16" if len(geoms) < 65535 else "int32"
    if not geoms:
        return np.zeros(shape, dtype=dtype)
    return features.rasterize(
        ((g, i) for i, g in enumerate(geoms, start=1)), out_shape=shape, transform=transform, fill=0, dtype=dtype
    )


def scenes_from_chips(images_dir: str, masks_dir: str, gsd_m: float, prefix: str = "") -> List[Scene]:
    """Image/mask pairs matched by file stem (mask 0 = background, >0 = building)."""
    from PIL import Image

    scenes = []
    masks = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(masks_dir, "*"))}
    for path in sorted(glob.glob(os.path.join(images_dir, "*"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem not in masks:
            raise LabelError(f"no mask for chip {path} in {masks_dir}")
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        mask = (np.asarray(Image.open(masks[stem]).convert("L")) > 0).astype(np.uint8)
        if mask.shape != img.shape[:2]:
            raise LabelError(f"mask {masks[stem]} is {mask.shape}, image is {img.shape[:2]}")
        scenes.append(Scene(prefix + stem, img, mask, np.ones(mask.shape, dtype=bool), gsd_m))
    return scenes


def split_blocks(valid: np.ndarray, min_pixels: int = 64 * 64) -> List[Tuple[int, int, int, int]]:
    """Bounding boxes (row0, col0, rows, cols) of the separate blocks of valid imagery.

    The OAM rasters hold two disjoint blocks each; holding one block out gives
    a spatial validation split that cannot leak into training.
    """
    from scipy import ndimage

    lab, n = ndimage.label(valid)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        if int((lab[sl] == i).sum()) < min_pixels:
            continue
        boxes.append((sl[0].start, sl[1].start, sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
    return boxes


def tile_scene(scene: Scene, tile_px: int, min_valid_fraction: float = 0.25) -> List[Scene]:
    """Cut a scene into non-overlapping tiles (edge tiles shifted inside) for evaluation."""
    h, w = scene.label.shape
    tiles = []
    rows = list(range(0, max(h - tile_px, 0) + 1, tile_px))
    cols = list(range(0, max(w - tile_px, 0) + 1, tile_px))
    if h > tile_px and rows[-1] + tile_px < h:
        rows.append(h - tile_px)
    if w > tile_px and cols[-1] + tile_px < w:
        cols.append(w - tile_px)
    for r in rows:
        for c in cols:
            t = scene.crop(r, c, min(tile_px, h), min(tile_px, w))
            if t.valid_fraction >= min_valid_fraction:
                tiles.append(t)
    return tiles


def resample_scene(scene: Scene, gsd_m: float) -> Scene:
    """The scene resampled to ``gsd_m`` (area-average down, bilinear up)."""
    import torch
    import torch.nn.functional as F

    if abs(scene.gsd_m - gsd_m) / gsd_m < 0.02:
        return scene
    f = scene.gsd_m / gsd_m
    h, w = scene.label.shape
    size = (max(1, int(round(h * f))), max(1, int(round(w * f))))
    img = torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=size, mode="bilinear", antialias=f < 1, align_corners=False)
    lab = torch.from_numpy(np.stack([scene.label, scene.valid]).astype(np.float32))[None]
    lab = F.interpolate(lab, size=size, mode="bilinear", antialias=f < 1, align_corners=False)[0]
    label = (lab[0] >= 0.5).numpy().astype(np.uint8)
    instances = None
    if scene.instances is not None:
        inst = torch.from_numpy(scene.instances.astype(np.float32))[None, None]
        instances = F.interpolate(inst, size=size, mode="nearest")[0, 0].numpy().astype(scene.instances.dtype)
        instances[label == 0] = 0
    return Scene(
        scene.name,
        img[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy(),
        label,
        (lab[1] >= 0.99).numpy(),
        gsd_m,
        instances=instances,
    )
