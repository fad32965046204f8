"""Fine-tuning test scenes from the shared data: one imagery block of an OAM area, and a strip of it.

A fine-tune run needs a georeferenced raster, a label layer and the labelled area. This script
writes them for one block of an OAM area (``../shared/data/oam/areaN``), so that fine-tuning
defaults can be tuned on ground the bundled model never trained on (area 1's smaller block is the
bundled model's validation block: models/README.md, Data) and measured on held-out ground (area 4):

    python scripts/finetune_scene.py --area 1 --block smallest --zoom 19 --out runs/tune
    -> runs/tune/area1_z19.tif, runs/tune/area1_labels.gpkg, and the WKT of the left fifth
       (by label extent) in runs/tune/area1_left20.wkt

Nothing here is used by the plugin; the files stay under runs/ (ignored by git).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from roof_detector.core.training.scenes import split_blocks  # noqa: E402
from roof_detector.core.vector_io import read_polygons  # noqa: E402


def block_window(ds, which: str) -> Window:
    """The window of one block of valid imagery: the smallest, the largest, or the whole raster."""
    if which == "all":
        return Window(0, 0, ds.width, ds.height)
    valid = ds.dataset_mask() > 0
    boxes = split_blocks(valid)
    boxes.sort(key=lambda b: int(valid[b[0] : b[0] + b[2], b[1] : b[1] + b[3]].sum()))
    r0, c0, rows, cols = boxes[0] if which == "smallest" else boxes[-1]
    return Window(c0, r0, cols, rows)


def write_scene(raster: str, labels: str, which: str, out_dir: str, stem: str, fraction: float) -> dict:
    """Write the block's raster and labels under ``out_dir``; return their paths and the left strip's WKT."""
    os.makedirs(out_dir, exist_ok=True)
    with rasterio.open(raster) as ds:
        win = block_window(ds, which)
        profile = ds.profile.copy()
        profile.update(width=int(win.width), height=int(win.height), transform=ds.window_transform(win))
        data = ds.read(window=win)
        mask = ds.dataset_mask(window=win)
        crs_wkt = ds.crs.to_wkt()
        bounds = rasterio.windows.bounds(win, ds.transform)
    tif = os.path.join(out_dir, f"{stem}.tif")
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(data)
        dst.write_mask(mask)
    layer = read_polygons(labels, target_crs_wkt=crs_wkt)
    box = shapely.box(*bounds)
    keep = [g for g in layer.geometries if g.intersects(box)]
    gpkg = os.path.join(out_dir, f"{stem}_labels.gpkg")
    _write_polygons(gpkg, keep, crs_wkt)
    x0, y0, x1, y1 = shapely.union_all(keep).bounds
    left = shapely.box(x0, y0, x0 + fraction * (x1 - x0), y1)
    n_left = sum(1 for g in keep if g.centroid.within(left))
    wkt_path = os.path.join(out_dir, f"{stem}_left{int(round(fraction * 100))}.wkt")
    with open(wkt_path, "w") as fh:
        fh.write(left.wkt)
    return {"raster": tif, "labels": gpkg, "area_wkt": wkt_path, "buildings": len(keep), "left": n_left}


def _write_polygons(path: str, geoms, crs_wkt: str) -> None:
    from roof_detector.core.osgeo_exc import ogr, osr

    if os.path.exists(path):
        os.remove(path)
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    lyr = ds.CreateLayer("buildings", srs, ogr.wkbMultiPolygon)
    for g in geoms:
        mp = g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g])
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(mp)))
        lyr.CreateFeature(f)
    ds = None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--area", type=int, default=1)
    p.add_argument("--zoom", type=int, default=19)
    p.add_argument("--block", choices=("smallest", "largest", "all"), default="smallest")
    p.add_argument("--fraction", type=float, default=0.2, help="width share of the left strip (labelled area)")
    p.add_argument("--out", default="runs/tune")
    a = p.parse_args()
    base = os.path.join(a.data, "oam", f"area{a.area}")
    info = write_scene(
        os.path.join(base, f"ortho_z{a.zoom}.tif"),
        os.path.join(base, "buildings.gpkg"),
        a.block,
        a.out,
        f"area{a.area}_z{a.zoom}_{a.block}",
        a.fraction,
    )
    print(info)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
