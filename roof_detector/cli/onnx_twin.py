"""``python -m roof_detector onnx-twin``: write a model file's ONNX twin, checked against it.

The twin (``<model>.onnx`` beside the model file) lets QGIS detect on the
CPU with ONNX Runtime alone, without torch. ``--precision fp32`` exports
the graph and checks it against TorchScript (max abs difference <= 1e-3).
``--precision int8`` quantises it statically (QDQ, per-channel int8
weights) with activation ranges calibrated on tiles of ``--calibration``
rasters (training imagery, never the held-out test areas), and checks that
its masks agree with TorchScript's on >= 99 % of the pixels; whether int8 is
good enough to ship is decided on held-out data with ``score --model
<twin>.onnx`` (see the README, "ONNX twin").
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("onnx-twin", help="write the ONNX twin of a model file (CPU detection without torch)",
                       description=__doc__)
    p.add_argument("--model", default=None, help="TorchScript model file (default: bundled)")
    p.add_argument("--out", default=None, help="output .onnx (default: beside the model, same name)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--calibration", action="append", default=[], metavar="RASTER",
                   help="raster whose tiles calibrate int8 activation ranges (repeatable)")
    p.add_argument("--calibration-tiles", type=int, default=64, help="tiles sampled for calibration (default 64)")
    p.add_argument("--if-stale", action="store_true",
                   help="do nothing when a twin made from this very model file is already there")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import RoofDetectorError
    from ..core.model_io import BUNDLED_MODEL_PATH, read_metadata
    from ..core.onnx_twin import find_twin, twin_path

    model = str(args.model or BUNDLED_MODEL_PATH)
    meta = read_metadata(model)
    if args.if_stale and not args.out:
        found, _ = find_twin(model, meta)
        if found:
            print(f"{found} is up to date")
            return 0
    from ..core.onnx_backend import make_twin

    calibration = check = None
    if args.precision == "int8":
        if not args.calibration:
            raise RoofDetectorError("int8 needs --calibration RASTER (training imagery at the model's GSD or finer)")
        tiles = sample_tiles(args.calibration, meta, args.calibration_tiles)
        calibration = [tiles[i:i + 8] for i in range(0, len(tiles), 8)]
        check = tiles[: min(16, len(tiles))]
    try:
        figures = make_twin(model, args.out or str(twin_path(model)), args.precision, calibration, check)
    except ValueError as exc:
        raise RoofDetectorError(f"the ONNX twin failed its check: {exc}") from None
    print(json.dumps(figures))
    return 0


def sample_tiles(rasters, meta, count: int, seed: int = 0):
    """``count`` model tiles (float32 N x 3 x T x T) with mostly valid pixels, spread over ``rasters``."""
    import numpy as np

    from ..core.geo import pixel_size_m
    from ..core.inference import read_tiles
    from ..core.raster_source import open_source
    from ..core.tiling import model_grid, tile_grid

    rng = np.random.default_rng(seed)
    tile_px, overlap = int(meta["tile_size_px"]), int(meta["overlap_px"])
    picked = []
    per_raster = -(-count // len(rasters))
    for path in rasters:
        src, _owned = open_source(path)
        try:
            px_m = pixel_size_m(src.crs_wkt, src.transform, src.width, src.height)
            grid = model_grid(src.transform, src.width, src.height, px_m, float(meta["gsd_m"]))
            tiles = tile_grid(grid.width_px, grid.height_px, tile_px, overlap)
            got = 0
            for i in rng.permutation(len(tiles)):
                rgb, valid = read_tiles(src, grid, [tiles[i]], tile_px)
                if valid.mean() >= 0.9:
                    picked.append(rgb[0])
                    got += 1
                    if got >= per_raster:
                        break
        finally:
            src.close()
    if not picked:
        from ..core.errors import InputRasterError

        raise InputRasterError("no calibration tile with >= 90 % valid pixels in the rasters given")
    return np.stack(picked[:count])
