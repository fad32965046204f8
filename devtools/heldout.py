"""Held-out evaluation cases for a model: the figures of the model card.

Each case is a raster plus reference building polygons; it is scored by the
same path a user takes: :func:`~roof_detector.core.pipeline.detect_buildings`
(tiling, resampling to the model GSD, inference, polygonising) and then
:func:`~roof_detector.core.evaluate.evaluate` on the raster's own pixel grid
(nodata pixels excluded). Image/mask chips without georeference (INRIA) are
wrapped as GeoTIFFs at their published GSD in a local UTM frame, their masks
polygonised into reference polygons.

Cases (from ``../shared/data``, never used in training):

* ``oam_area4_z21`` / ``oam_area4_z19``: OAM area 4 (Catanduanes) at 0.07 and
  0.29 m/px, OSM labels;
* ``inria_test``: the two INRIA test chips (0.3 m), pooled;
* ``demo_atlanta``: the SpaceNet-4 sample in the solaris wheel (0.5 m,
  panchromatic uint16), when the wheel is in ``.cache/solaris``.
"""

from __future__ import annotations

import glob
import os
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from roof_detector.core.evaluate import EvaluationResult, evaluate, grid_from_raster
from roof_detector.core.metrics import Confusion
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from roof_detector.core.shape_metrics import ShapeStats
from roof_detector.core.vector_io import read_polygons

SOLARIS_WHEEL_GLOB = os.path.join(".cache", "solaris", "solaris-0.4.0-*.whl")


@dataclass
class Case:
    """One raster (or several, pooled) with reference polygons (file or in-memory)."""

    name: str
    rasters: List[str]
    references: List[object]  # a vector path, or a list of shapely geometries, per raster


def chip_to_geotiff(image_path: str, mask_path: str, gsd_m: float, out_dir: str):
    """Write a chip as a GeoTIFF (EPSG:32631, at ``gsd_m``) and return (tif path, reference polygons)."""
    import rasterio
    from PIL import Image
    from rasterio import features
    from rasterio.transform import from_origin
    import shapely

    img = np.asarray(Image.open(image_path).convert("RGB")).transpose(2, 0, 1)
    mask = (np.asarray(Image.open(mask_path).convert("L")) > 0).astype(np.uint8)
    transform = from_origin(500000.0, 5000000.0, gsd_m, gsd_m)
    path = os.path.join(out_dir, os.path.splitext(os.path.basename(image_path))[0] + ".tif")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=img.shape[2],
        height=img.shape[1],
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=transform,
    ) as ds:
        ds.write(img)
    polys = [shapely.geometry.shape(g) for g, v in features.shapes(mask, mask=mask > 0, transform=transform) if v]
    return path, polys


def solaris_sample(cache_dir: str) -> Optional[tuple]:
    """(GeoTIFF path, label GeoJSON path) of the solaris demo image, extracted from the cached wheel."""
    wheels = sorted(glob.glob(SOLARIS_WHEEL_GLOB))
    if not wheels:
        return None
    out = os.path.join(cache_dir, "solaris_data")
    os.makedirs(out, exist_ok=True)
    names = {
        "solaris/data/sample_geotiff.tif": "sample_geotiff.tif",
        "solaris/data/geotiff_labels.geojson": "geotiff_labels.geojson",
    }
    with zipfile.ZipFile(wheels[0]) as zf:
        for member, name in names.items():
            dest = os.path.join(out, name)
            if not os.path.exists(dest):
                with zf.open(member) as src, open(dest, "wb") as dst:
                    dst.write(src.read())
    return os.path.join(out, "sample_geotiff.tif"), os.path.join(out, "geotiff_labels.geojson")


#: Every held-out case name, whether or not its data is here.
CASES = ("oam_area4_z21", "oam_area4_z19", "inria_test", "demo_atlanta")


def build_cases(data_dir: str, work_dir: str, names: Optional[List[str]] = None) -> List[Case]:
    """The held-out cases available here (those named, or all)."""
    cases: List[Case] = []
    oam4 = os.path.join(data_dir, "oam", "area4")
    for zoom in (21, 19):
        cases.append(
            Case(
                f"oam_area4_z{zoom}", [os.path.join(oam4, f"ortho_z{zoom}.tif")], [os.path.join(oam4, "buildings.gpkg")]
            )
        )
    cases.append(_inria_case("inria_test", os.path.join(data_dir, "chips", "inria", "test"), work_dir))
    demo = solaris_sample(work_dir)
    if demo:
        cases.append(Case("demo_atlanta", [demo[0]], [demo[1]]))
    return [c for c in cases if not names or c.name in names]


def build_tuning_cases(data_dir: str, work_dir: str) -> List[Case]:
    """Scenes no held-out figure uses, where the engine's constants were chosen: OAM areas 1, 2,
    3 and 5 at z19 (areas 2, 3, 5 and area 1's larger block trained the bundled model) and the
    INRIA validation chips (pooled). For comparisons on more buildings than area 4 holds."""
    cases = []
    for area in (1, 2, 3, 5):
        oam = os.path.join(data_dir, "oam", f"area{area}")
        cases.append(
            Case(f"tuning_oam{area}_z19", [os.path.join(oam, "ortho_z19.tif")], [os.path.join(oam, "buildings.gpkg")])
        )
    cases.append(_inria_case("tuning_inria_val", os.path.join(data_dir, "chips", "inria", "val"), work_dir))
    return cases


def _inria_case(name: str, folder: str, work_dir: str) -> Case:
    """The INRIA chips of ``folder`` (``images/``, ``masks/``) as GeoTIFFs at 0.3 m, pooled."""
    rasters, refs = [], []
    for img in sorted(glob.glob(os.path.join(folder, "images", "*.png"))):
        tif, polys = chip_to_geotiff(img, os.path.join(folder, "masks", os.path.basename(img)), 0.3, work_dir)
        rasters.append(tif)
        refs.append(polys)
    return Case(name, rasters, refs)


def score_case(case: Case, options: DetectOptions, model=None, log: Callable[[str], None] = print) -> Dict[str, float]:
    """Detect on each raster of the case and evaluate, pooling pixels and objects over rasters."""
    conf = Confusion()
    n_pred = n_ref = n_match = 0
    seconds = 0.0
    ious: List[float] = []
    pred_shape, ref_shape = ShapeStats(), ShapeStats()
    for raster, ref in zip(case.rasters, case.references):
        res = detect_buildings(raster, options, model=model)
        seconds += res.seconds
        grid = grid_from_raster(raster)
        ref_geoms = read_polygons(ref, grid.crs_wkt).geometries if isinstance(ref, str) else ref
        ev: EvaluationResult = evaluate([b.geometry for b in res.buildings], ref_geoms, grid)
        conf.add(ev.pixel)
        n_pred += ev.n_predicted
        n_ref += ev.n_reference
        n_match += ev.n_matched
        ious += [m.iou for m in ev.matches]
        pred_shape += ev.predicted_shape
        ref_shape += ev.reference_shape
    d = conf.as_dict()
    out = {
        "pixel_iou": d["iou"],
        "pixel_accuracy": d["accuracy"],
        "precision": d["precision"],
        "recall": d["recall"],
        "f1": d["f1"],
        "predicted": n_pred,
        "reference": n_ref,
        "matched": n_match,
        "object_precision": n_match / n_pred if n_pred else 0.0,
        "object_recall": n_match / n_ref if n_ref else 0.0,
        "object_f1": 2 * n_match / (n_pred + n_ref) if n_pred + n_ref else 0.0,
        "mean_matched_iou": float(np.mean(ious)) if ious else None,
        "median_vertices": pred_shape.median_vertices(),
        "regular_share": pred_shape.regular_share(),
        "reference_median_vertices": ref_shape.median_vertices(),
        "reference_regular_share": ref_shape.regular_share(),
        "seconds": round(seconds, 2),
    }
    log(
        f"{case.name:16s} IoU {out['pixel_iou']:.4f}  accuracy {out['pixel_accuracy']:.4f}  "
        f"F1 {out['f1']:.4f}  buildings {n_pred} predicted / {n_ref} reference, {n_match} matched "
        f"(object F1 {out['object_f1']:.3f}, matched IoU {_fmt(out['mean_matched_iou'], '.3f')})  "
        f"vertices {_fmt(out['median_vertices'], 'g')} (reference {_fmt(out['reference_median_vertices'], 'g')})  "
        f"regular {_fmt(out['regular_share'], '.0%')} (reference {_fmt(out['reference_regular_share'], '.0%')})"
    )
    return out


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def score_all(
    data_dir: str,
    options: DetectOptions,
    names: Optional[List[str]] = None,
    log: Callable[[str], None] = print,
    tuning: bool = False,
) -> Dict[str, Dict[str, float]]:
    """Score every available held-out case (``tuning``: the tuning scenes instead) with one loaded model."""
    from roof_detector.core.model_io import load_model

    model = load_model(options.model_path, options.device)
    # the figures depend on it: the int8 twin, or fp32 where int8 arithmetic saturates (README, ONNX twin)
    unused = model.extra.get("onnx_twin_unused")
    log(
        f"model: {model.extra.get('backend', 'torch')} {model.extra.get('onnx_precision', 'fp32')}"
        + (f" (ONNX twin unused: {unused})" if unused else "")
    )
    with tempfile.TemporaryDirectory(prefix="roofdet-heldout-") as work:
        cases = build_tuning_cases(data_dir, work) if tuning else build_cases(data_dir, work, names)
        return {c.name: score_case(c, options, model, log) for c in cases}
