"""Model metadata: the record every model file carries, and its checks.

The metadata record (a JSON object) holds at least::

    format            "roof-detector-model"
    format_version    1
    name, version     free text / semantic version of this model
    architecture      {"name": "efflite0_unet" | "plain_unet" | ..., "params": {...}}
    bands             ["red", "green", "blue"]: the input channel order
    normalization     {"input_range": [0, 1], "mean": [...], "std": [...],
                       "applied_in_model": true}
    output            "probability": N x C x H x W in [0, 1]
    outputs           optional, the channels in order: ["building"] (the default when
                      absent: every model before 0.3.0) or ["building", "border",
                      "contact"] (separation models, see core/training/targets.py)
    separation        separation models: {"core_threshold": t}, the score a pixel
                      needs to seed a roof (core/vectorize.py, separation_score)
    gsd_m             ground sample distance the model expects, metres / pixel
    tile_size_px      tile edge the model was trained for (multiple of 32)
    overlap_px        overlap between neighbouring tiles at inference
    threshold         probability threshold tuned on validation
    training          free-form summary of data, epochs, seed, command, time
    metrics           free-form figures per split, e.g. {"val": {"iou": ...}}

The TorchScript module takes float32 (or float16 on CUDA) RGB in [0, 1],
shape N x 3 x H x W, and returns probabilities N x C x H x W, one channel per
entry of ``outputs`` (C = 1 for building-only models).

No torch and no ``qgis`` import here.
"""

from __future__ import annotations

import math
from typing import Any, Dict

from .errors import ModelError

FORMAT_NAME = "roof-detector-model"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
REQUIRED_KEYS = ("architecture", "bands", "normalization", "gsd_m", "tile_size_px", "overlap_px", "threshold")
KNOWN_BANDS = ("red", "green", "blue")
#: The output layouts this version runs: building only, or building with separation outputs.
KNOWN_OUTPUTS = (["building"], ["building", "border", "contact"])
#: Plausible model metadata: ground pixel size (m) and largest tile edge (px).
MODEL_GSD_RANGE_M = (0.02, 5.0)
MODEL_MAX_TILE_PX = 2048


def model_outputs(meta: Dict[str, Any]) -> list:
    """The output channels a model's metadata declares (``["building"]`` when it declares none)."""
    return list(meta.get("outputs") or ["building"])


def validate_metadata(meta: Dict[str, Any], source: str = "model") -> Dict[str, Any]:
    """Check a metadata record; raise :class:`ModelError` naming what is wrong."""
    if not isinstance(meta, dict):
        raise ModelError(f"{source}: metadata.json is not a JSON object")
    if meta.get("format") not in (None, FORMAT_NAME):
        raise ModelError(f"{source}: metadata format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(
            f"{source}: metadata lacks {', '.join(missing)}; "
            "re-export the model with `python -m devtools train` or `finetune`"
        )
    bands = meta["bands"]
    if not isinstance(bands, list) or not bands or any(b not in KNOWN_BANDS for b in bands):
        raise ModelError(
            f"{source}: metadata asks for bands {bands!r}; this version supports "
            f"only {list(KNOWN_BANDS)} (RGB or grey replicated to RGB)"
        )
    try:
        gsd = float(meta["gsd_m"])
        tile = int(meta["tile_size_px"])
        overlap = int(meta["overlap_px"])
        thr = float(meta["threshold"])
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"{source}: metadata has a non-numeric gsd_m/tile_size_px/overlap_px/threshold ({exc})"
        ) from None
    if not (math.isfinite(gsd) and gsd > 0 and tile >= 32 and 0 <= overlap < tile // 2 and 0.0 < thr < 1.0):
        raise ModelError(
            f"{source}: metadata values out of range (gsd_m={gsd}, tile_size_px={tile}, "
            f"overlap_px={overlap}, threshold={thr})"
        )
    outputs = meta.get("outputs") or ["building"]
    if outputs not in KNOWN_OUTPUTS:
        raise ModelError(
            f"{source}: metadata declares outputs {outputs!r}; this version runs "
            + " or ".join(repr(o) for o in KNOWN_OUTPUTS)
            + ": update Roof Detector"
        )
    sep = meta.get("separation", {})
    core = sep.get("core_threshold", 0.5) if isinstance(sep, dict) else None
    if len(outputs) > 1 and not (isinstance(core, (int, float)) and 0.0 < core < 1.0):
        raise ModelError(f"{source}: metadata separation.core_threshold must lie between 0 and 1 (got {core!r})")
    # Absurd values would size every run absurdly (a 65536 px tile is 50 GB of activations;
    # 0.0003 m pixels turn a small orthophoto into millions of tiles): refused on load.
    if not MODEL_GSD_RANGE_M[0] <= gsd <= MODEL_GSD_RANGE_M[1]:
        raise ModelError(
            f"{source}: metadata gsd_m={gsd:g} m is not a plausible aerial pixel size "
            f"({MODEL_GSD_RANGE_M[0]:g} to {MODEL_GSD_RANGE_M[1]:g} m); the model file is not usable"
        )
    if tile > MODEL_MAX_TILE_PX:
        raise ModelError(
            f"{source}: metadata tile_size_px={tile} is beyond {MODEL_MAX_TILE_PX} px; the model file is not usable"
        )
    return meta
