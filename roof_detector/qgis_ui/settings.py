"""The dialog's last choices, kept in QgsSettings under ``roof_detector/``."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsSettings

from ..core.params import GROUPS, Param, ParameterError

PREFIX = "roof_detector/"

#: Settings keys that store a declared parameter (core.params): default and range come from there.
DECLARED = {
    "min_area_m2": ("detect", "min_area_m2"),
    "separate_touching": ("detect", "separate_touching"),
    "tta": ("detect", "tta"),
    "device": ("detect", "device"),
    "regularize": ("outlines", "regularize"),
    "regularize_tolerance_m": ("outlines", "regularize_tolerance_m"),
    "solar_setback_m": ("solar", "setback_m"),
    "solar_usable_fraction": ("solar", "usable_fraction"),
    "solar_panel_area_m2": ("solar", "panel_area_m2"),
    "solar_panel_wp": ("solar", "panel_wp"),
    "ft_epochs": ("finetune", "epochs"),
    "ft_lr": ("finetune", "lr"),
    "ft_batch_size": ("finetune", "batch_size"),
    "ft_patience": ("finetune", "patience"),
    "ft_max_minutes": ("finetune", "max_minutes"),  # time budget; 0 = none
    "ft_freeze_encoder": ("finetune", "freeze_encoder"),
}


def _declared(key: str) -> Param:
    group, name = DECLARED[key]
    return GROUPS[group][name]


# key -> (default, type); declared parameters take theirs from core.params.
DEFAULTS = {
    "area_mode": ("layer", str),  # layer | extent | selection
    "aoi_layer_id": ("", str),
    "model_choice": ("bundled", str),  # bundled | library:<path> | file
    "model_file": ("", str),
    "threshold_override": (False, bool),
    "threshold": (0.5, float),  # the spin box's value when custom (declared default: the model's)
    "output_mode": ("memory", str),  # memory | gpkg
    "gpkg_layer": ("buildings", str),
    # The Rooftop Report sizes layers without solar fields with the solar choices.
    "solar_yield_from_latitude": (True, bool),
    "solar_yield": (1100.0, float),  # kWh/kWp/yr, used when not estimated from latitude
    "solar_group_collapsed": (True, bool),
    "report_dir": ("", str),  # last folder the Rooftop Report exported to
    # Run on: this computer or a Roof Detector server (the token lives in QGIS's auth database)
    "run_on": ("local", str),  # local | server
    "server_url": ("http://127.0.0.1:8000", str),
    "server_authcfg": ("", str),  # id of the token's QgsAuthMethodConfig
    # Fine-tune Model dialog
    "ft_area_mode": ("labels", str),  # labels | layer | selection
    "ft_base_model": ("bundled", str),  # bundled | library:<path>
    "ft_val_percent": (20, int),  # val_fraction in percent
    "ft_samples_per_epoch": (0, int),  # 0 = the engine's default (scaled to the labelled area)
    "ft_device": ("auto", str),
}
DEFAULTS.update({key: (_declared(key).default, _declared(key).kind) for key in DECLARED})
#: Stored numbers that are not declared parameters but hold one: checked against its range.
_RANGE_OF = {
    "threshold": ("detect", "threshold"),
    "solar_yield": ("solar", "specific_yield_kwh_per_kwp"),
    "ft_val_percent": ("finetune", "val_fraction"),
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
        value = kind(value)
    except (TypeError, ValueError):
        return default
    return _in_range(key, value, default)


def _in_range(key: str, value: Any, default: Any) -> Any:
    """A stored number outside its declared range (an older version, a hand edit) reads as the default."""
    if key in DECLARED:
        p = _declared(key)
    elif key in _RANGE_OF:
        group, name = _RANGE_OF[key]
        p = GROUPS[group][name]
        value = value / 100.0 if key == "ft_val_percent" else value
    else:
        return value
    try:
        p.check(value)
    except ParameterError:
        return default
    return int(round(value * 100)) if key == "ft_val_percent" else value


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
    return dict(
        setback_m=get("solar_setback_m"),
        usable_fraction=get("solar_usable_fraction"),
        panel_area_m2=get("solar_panel_area_m2"),
        panel_wp=get("solar_panel_wp"),
        specific_yield_kwh_per_kwp=None if get("solar_yield_from_latitude") else get("solar_yield"),
    )
