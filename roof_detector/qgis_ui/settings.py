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
    "device": ("auto", str),              # auto | cpu | cuda
    "output_mode": ("memory", str),       # memory | gpkg
    "gpkg_path": ("", str),
    "gpkg_layer": ("buildings", str),
    # Fine-tune Model dialog
    "ft_area_mode": ("labels", str),      # labels | layer | selection
    "ft_base_model": ("bundled", str),    # bundled | library:<path>
    "ft_epochs": (10, int),
    "ft_lr": (3e-4, float),
    "ft_batch_size": (8, int),
    "ft_val_percent": (20, int),
    "ft_patience": (4, int),
    "ft_samples_per_epoch": (0, int),     # 0 = the engine's default
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
