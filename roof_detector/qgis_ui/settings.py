"""The dialog's last choices, kept in QgsSettings under ``roof_detector/``."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsSettings

PREFIX = "roof_detector/"

# key -> (default, type)
DEFAULTS = {
    "area_mode": ("layer", str),          # layer | extent | selection
    "aoi_layer_id": ("", str),
    "model_choice": ("bundled", str),     # bundled | library:<path> | file
    "model_file": ("", str),
    "threshold_override": (False, bool),
    "threshold": (0.5, float),
    "min_area_m2": (10.0, float),
    "separate_touching": (True, bool),
    "tta": (False, bool),
    "device": ("auto", str),              # auto | cpu | cuda
    "output_mode": ("memory", str),       # memory | gpkg
    "gpkg_path": ("", str),
    "gpkg_layer": ("buildings", str),
    # outlines and rooftop solar (Detect dialog; the Rooftop Report sizes layers without solar fields with them)
    "regularize": (True, bool),
    "regularize_tolerance_m": (1.0, float),
    "solar_setback_m": (0.5, float),
    "solar_usable_fraction": (0.6, float),
    "solar_panel_area_m2": (1.96, float),
    "solar_panel_wp": (400.0, float),
    "solar_yield_from_latitude": (True, bool),
    "solar_yield": (1100.0, float),       # kWh/kWp/yr, used when not estimated from latitude
    "solar_group_collapsed": (True, bool),
    "report_dir": ("", str),              # last folder the Rooftop Report exported to
    # Fine-tune Model dialog
    "ft_area_mode": ("labels", str),      # labels | layer | selection
    "ft_base_model": ("bundled", str),    # bundled | library:<path>
    "ft_epochs": (30, int),
    "ft_lr": (3e-4, float),
    "ft_batch_size": (8, int),
    "ft_val_percent": (20, int),
    "ft_patience": (5, int),
    "ft_samples_per_epoch": (0, int),     # 0 = the engine's default (scaled to the labelled area)
    "ft_max_minutes": (15, int),          # time budget; 0 = none
    "ft_device": ("auto", str),
}


def get(key: str) -> Any:
    """The stored value of ``key``, or its default, converted to the key's type."""
    default, kind = DEFAULTS[key]
    value = QgsSettings().value(PREFIX + key, default)
    if kind is bool:
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return bool(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def set(key: str, value: Any) -> None:  # noqa: A001 - mirrors QgsSettings.setValue
    """Store ``value`` under ``roof_detector/<key>``."""
    if key not in DEFAULTS:
        raise KeyError(key)
    QgsSettings().setValue(PREFIX + key, value)


def clear() -> None:
    """Forget every stored choice (tests, or a 'reset' button)."""
    settings = QgsSettings()
    for key in DEFAULTS:
        settings.remove(PREFIX + key)


def solar_kwargs() -> dict:
    """The remembered solar sizing choices as keyword arguments of ``core.solar.SolarParams``."""
    return dict(setback_m=get("solar_setback_m"), usable_fraction=get("solar_usable_fraction"),
                panel_area_m2=get("solar_panel_area_m2"), panel_wp=get("solar_panel_wp"),
                specific_yield_kwh_per_kwp=None if get("solar_yield_from_latitude") else get("solar_yield"))
