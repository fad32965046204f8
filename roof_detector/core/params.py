"""Every user-facing parameter, declared once: name, type, default, range, unit, help.

The engine's option classes (``DetectOptions``, ``SolarParams``,
``FinetuneOptions``; ``detect_many``'s keywords) take their defaults from here, the engine validates
with :func:`check` (one error type, :class:`ParameterError`), and each front
end builds its own controls from the same declarations: the CLI's argparse
options (``cli/arguments.py``), the Processing parameters
(``processing/parameters.py``), the dialogs' spin boxes and the defaults of
the saved settings (``qgis_ui/param_widgets.py``, ``qgis_ui/settings.py``).
So a range or a default is changed here and nowhere else.

Ranges are closed intervals and every number must also be finite: ``nan``
and ``inf`` are refused, as are values so small or large that they only
make sense as typing errors (a panel of 1e-300 m², 1e308 Wp).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from .param_declaration import Param, ParameterError

# Param and ParameterError are defined in .param_declaration and used from here by every front end.
__all__ = ["Param", "ParameterError", "DETECT", "OUTLINES", "SOLAR", "FINETUNE", "MANY", "GROUPS"]
__all__ += ["BUNDLED_MODEL_GRID", "default", "check", "check_fields"]


def _params(*items: Param) -> Dict[str, Param]:
    return {p.name: p for p in items}


#: Detection (DetectOptions).
DETECT = _params(
    Param(
        "threshold",
        float,
        None,
        "Threshold",
        "probability above which a pixel is building",
        flag="--threshold",
        key="THRESHOLD",
        low=0.01,
        high=0.99,
        step=0.05,
        optional=True,
        none_means="the model's tuned value",
    ),
    Param(
        "min_area_m2",
        float,
        10.0,
        "Minimum building area",
        "drop buildings smaller than this",
        flag="--min-area",
        key="MIN_AREA",
        low=0.0,
        high=100000.0,
        unit="m²",
        decimals=1,
    ),
    Param(
        "separate_touching",
        bool,
        True,
        "Separate touching buildings",
        (
            "split touching roofs along the probability valley between them (or the seam a model with border/contact "
            "outputs marks), one polygon per roof"
        ),
        flag="--separate-touching",
        key="SEPARATE_TOUCHING",
    ),
    Param(
        "tta",
        bool,
        False,
        "Test-time augmentation",
        "average the model over 4 flips of each tile: fewer missed roofs, about 4 times the model time",
        flag="--tta",
        key="TTA",
    ),
    Param(
        "device",
        str,
        "auto",
        "Device",
        "where the model runs (auto: the GPU when there is one)",
        flag="--device",
        key="DEVICE",
        choices=("auto", "cpu", "cuda"),
        choice_labels=("Automatic", "CPU", "CUDA GPU"),
    ),
    Param(
        "batch_size",
        int,
        None,
        "Batch size",
        "tiles per model call",
        flag="--batch-size",
        key="BATCH_SIZE",
        low=1,
        high=1024,
        decimals=0,
        optional=True,
        none_means="8 on CPU, fitted to free memory on GPU",
    ),
    # The size guard (core.work_estimate): the dialog asks this as a question instead of a check box.
    Param(
        "confirm_large_run",
        bool,
        False,
        "Run even when very large",
        "run a raster of more than 100,000 tiles or one needing more memory than is free; without it such a "
        "run is refused before it starts (one needing more memory than the machine has is always refused)",
        flag="--yes",
        short_flag="-y",
        key="CONFIRM_LARGE",
    ),
)

#: Outline regularisation (DetectOptions; the solar command and algorithm too).
OUTLINES = _params(
    Param(
        "regularize",
        bool,
        True,
        "Regularise outlines",
        "square the outlines (right angles, 45-degree diagonals) before measuring",
        flag="--regularize",
        key="REGULARIZE",
    ),
    Param(
        "regularize_tolerance_m",
        float,
        1.0,
        "Regularisation tolerance",
        "the narrowest wing, notch or step a squared outline keeps (smaller details are squared away; larger values give coarser shapes, and more outlines fail the agreement check and stay as traced)",
        flag="--tolerance",
        key="TOLERANCE",
        low=0.1,
        high=10.0,
        unit="m",
        decimals=1,
        step=0.1,
    ),
)

#: Rooftop solar sizing (SolarParams).
SOLAR = _params(
    Param(
        "setback_m",
        float,
        0.5,
        "Roof edge setback",
        "panels keep this distance from the roof edge",
        flag="--setback",
        key="SETBACK",
        low=0.0,
        high=10.0,
        unit="m",
        step=0.1,
    ),
    Param(
        "usable_fraction",
        float,
        0.6,
        "Usable fraction",
        "share of the inset roof that takes panels (chimneys, skylights, shade, faces turned away)",
        flag="--usable-fraction",
        key="USABLE_FRACTION",
        low=0.0,
        high=1.0,
        step=0.05,
    ),
    Param(
        "panel_area_m2",
        float,
        1.96,
        "Panel area",
        "area of one panel",
        flag="--panel-area",
        key="PANEL_AREA",
        low=0.1,
        high=10.0,
        unit="m²",
        step=0.01,
    ),
    Param(
        "panel_wp",
        float,
        400.0,
        "Panel power",
        "peak power of one panel",
        flag="--panel-wp",
        key="PANEL_WP",
        low=10.0,
        high=2000.0,
        unit="Wp",
        decimals=0,
        step=10.0,
    ),
    Param(
        "specific_yield_kwh_per_kwp",
        float,
        None,
        "Specific yield",
        "yearly energy per kWp installed",
        flag="--yield",
        key="SPECIFIC_YIELD",
        low=1.0,
        high=4999.0,
        unit="kWh/kWp/yr",
        decimals=0,
        step=50.0,
        optional=True,
        none_means="estimated from each building's latitude",
    ),
)

#: Fine-tuning (FinetuneOptions).
FINETUNE = _params(
    Param(
        "epochs",
        int,
        30,
        "Epochs",
        "at most this many epochs (training stops earlier on no gain)",
        flag="--epochs",
        key="EPOCHS",
        low=1,
        high=500,
        decimals=0,
    ),
    Param(
        "lr",
        float,
        3e-4,
        "Learning rate",
        "step size of the optimiser",
        flag="--lr",
        key="LR",
        low=1e-6,
        high=0.1,
        decimals=6,
        step=0.0001,
    ),
    Param(
        "batch_size",
        int,
        8,
        "Batch size",
        "training crops per step",
        flag="--batch-size",
        key="BATCH_SIZE",
        low=1,
        high=128,
        decimals=0,
    ),
    Param(
        "val_fraction",
        float,
        0.2,
        "Validation share",
        "share of the labelled area held out, in whole blocks, to validate each epoch",
        flag="--val-fraction",
        key="VAL_FRACTION",
        low=0.05,
        high=0.5,
        step=0.05,
    ),
    Param(
        "patience",
        int,
        5,
        "Patience",
        "stop after this many epochs without validation IoU gain",
        flag="--patience",
        key="PATIENCE",
        low=1,
        high=100,
        decimals=0,
    ),
    Param(
        "samples_per_epoch",
        int,
        None,
        "Samples per epoch",
        "training crops per epoch",
        flag="--samples-per-epoch",
        key="SAMPLES_PER_EPOCH",
        low=1,
        high=100000,
        decimals=0,
        optional=True,
        none_means="40 per model tile of labelled area, 96 to 480",
    ),
    Param(
        "max_minutes",
        float,
        15.0,
        "Time budget",
        "training stops at this time and keeps the best epoch (0: no budget)",
        flag="--max-minutes",
        key="MAX_MINUTES",
        low=0.0,
        high=10080.0,
        unit="min",
        decimals=0,
        step=5.0,
        optional=True,
        none_means="no budget",
    ),
    Param(
        "freeze_encoder",
        bool,
        True,
        "Train the decoder only",
        (
            "keep the base model's encoder (its weights and statistics) and train the decoder and head: "
            "adapts to a small labelled area without forgetting the rest, and each epoch is faster"
        ),
        flag="--freeze-encoder",
        key="FREEZE_ENCODER",
    ),
    Param(
        "compare_outside",
        bool,
        True,
        "Compare outside the labelled area",
        "measure the base and fine-tuned models on labels beyond the labelled area, when there are any",
        flag="--compare-outside",
        key="COMPARE_OUTSIDE",
    ),
    # No Processing key: a Processing destination is replaced after QGIS asked (never the base model);
    # the dialog always writes a new file of the model library.
    Param(
        "overwrite",
        bool,
        False,
        "Replace the output model",
        "replace the output model file if it exists (never the base model)",
        flag="--overwrite",
    ),
)

#: Distribution of ``detect-many`` (core.detect_many): local workers, the margin read around each tile,
#: blocks of large rasters.
MANY = _params(
    Param(
        "workers",
        int,
        1,
        "Workers",
        "local Dask workers (1: threads of this process; more: one process each); the CPU cores are shared between them",
        flag="--workers",
        key="WORKERS",
        low=1,
        high=256,
        decimals=0,
    ),
    Param(
        "threads_per_worker",
        int,
        None,
        "Threads per worker",
        "model threads per worker",
        flag="--threads-per-worker",
        key="THREADS_PER_WORKER",
        low=1,
        high=1024,
        decimals=0,
        optional=True,
        none_means="cores / workers locally, all cores of a remote worker's machine",
    ),
    Param(
        "margin_m",
        float,
        30.0,
        "Margin",
        "distance read around each job from its neighbours so that buildings on a border come out whole: "
        "the largest reach of a building beyond the seam plus the model's context (30 m: 25 m, the "
        "99th percentile of 798 OpenStreetMap buildings, + 4.8 m, half the model's tile overlap)",
        flag="--margin-m",
        key="MARGIN",
        low=0.0,
        high=1000.0,
        unit="m",
        decimals=1,
        step=5.0,
    ),
    Param(
        "group_tiles",
        int,
        None,
        "Tiles per job",
        "neighbouring input tiles per job side (K x K tiles read as one block through a VRT): the margin "
        "is read once per block instead of once per tile",
        flag="--group-tiles",
        key="GROUP_TILES",
        low=1,
        high=16,
        decimals=0,
        optional=True,
        none_means="4, or 2, or 1: the largest that leaves at least 4 jobs and 2 per worker "
        "(an interrupted run goes on with its own)",
    ),
    Param(
        "block_px",
        int,
        10000,
        "Block size",
        "inputs larger than this a side are cut into blocks, one task each",
        flag="--block-px",
        key="BLOCK_PX",
        low=256,
        high=100000,
        unit="px",
        decimals=0,
        step=256,
    ),
)

#: The model grid a planner assumes before a model is chosen: the bundled model's
#: (a test keeps it equal to models/roof_unet.pt's metadata).
BUNDLED_MODEL_GRID: Dict[str, float] = {"gsd_m": 0.3, "tile_size_px": 256, "overlap_px": 32}

#: Every group by name, for lookups by the front ends.
GROUPS: Dict[str, Dict[str, Param]] = {
    "detect": DETECT,
    "outlines": OUTLINES,
    "solar": SOLAR,
    "finetune": FINETUNE,
    "many": MANY,
}


def default(group: str, name: str) -> Any:
    """The default value of a parameter (what the option classes use as field default)."""
    return GROUPS[group][name].default


def check(group: str, values: Dict[str, Any], names: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Check the declared ``values`` of ``group`` (all of them, or ``names``); return them converted.

    Raises :class:`ParameterError` for the first bad value. Keys not
    declared in the group are an error too: nothing is silently dropped.
    """
    declared = GROUPS[group]
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ParameterError(f"Unknown {group} parameter(s): {', '.join(unknown)}")
    out = dict(values)
    for name in names if names is not None else values:
        out[name] = declared[name].check(values[name])
    return out


def check_fields(obj: Any, group: str) -> None:
    """Check each declared parameter of ``group`` that the dataclass ``obj`` has as a field."""
    for name, p in GROUPS[group].items():
        if hasattr(obj, name):
            p.check(getattr(obj, name))
