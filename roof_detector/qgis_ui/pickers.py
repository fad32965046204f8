"""Pickers both dialogs (Detect Buildings, Fine-tune Model) build the same way.

The layer combos, the model combo (bundled model and library models), the
device combo with its CUDA check, and the model summary shown under it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Tuple

from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import QComboBox, QWidget

from ..core.params import DETECT
from ..qgis_adapter.paths import bundled_model_path
from . import tr

_DEVICE = DETECT["device"]
DEVICES = tuple(zip(_DEVICE.choices, _DEVICE.choice_labels))  # the declared choices, as the CLI and Processing
LIBRARY_PREFIX = "library:"


def describe_devices() -> Dict[str, Any]:
    """{'cuda': bool, 'text': what was found}, e.g. 'GPU found: NVIDIA H100'.

    torch is imported (seconds, on the GUI thread) only where an NVIDIA driver is present.
    """
    from ..core.devices import cuda_driver_present
    from ..qgis_adapter.deps import default_cpu_threads

    threads = default_cpu_threads()
    if not cuda_driver_present():
        return {"cuda": False, "text": tr("No CUDA GPU found; CPU with {n} threads").format(n=threads)}
    try:
        import torch
    except Exception:  # noqa: BLE001 - the plugin checks dependencies before; stay robust
        return {
            "cuda": False,
            "text": tr(
                "CPU with {n} threads (ONNX Runtime); a GPU needs PyTorch, which is not "
                "installed: Plugins > Roof Detector > Check dependencies"
            ).format(n=threads),
        }
    if torch.cuda.is_available():
        return {"cuda": True, "text": tr("GPU found: {name}").format(name=torch.cuda.get_device_name(0))}
    return {"cuda": False, "text": tr("No CUDA GPU found; CPU with {n} threads").format(n=torch.get_num_threads())}


def model_summary(path: Optional[str]) -> Dict[str, Any]:
    """{'ok', 'text', 'threshold', 'meta'} for a model file, from its metadata only (cheap)."""
    if not path:
        return {"ok": False, "text": tr("No model file chosen"), "threshold": None, "meta": None}
    try:
        from ..core.model_io import read_metadata

        meta = read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - ModelError, or torch missing
        return {"ok": False, "text": str(exc), "threshold": None, "meta": None}
    text = tr("{name} {version}, {gsd} m/pixel, threshold {thr:.2f}").format(
        name=meta.get("name", os.path.basename(path)),
        version=meta.get("version", ""),
        gsd=meta.get("gsd_m"),
        thr=float(meta["threshold"]),
    )
    return {"ok": True, "text": text, "threshold": float(meta["threshold"]), "meta": meta}


def layer_combo(parent: QWidget, filters: Any) -> QgsMapLayerComboBox:
    """A map layer combo showing only the layers that ``filters`` (QgsMapLayerProxyModel) lets through."""
    combo = QgsMapLayerComboBox(parent)
    combo.setFilters(filters)
    return combo


def select_data(combo: QComboBox, data: Any) -> None:
    """Make the item holding ``data`` current; keep the current one when none does."""
    index = combo.findData(data)
    if index >= 0:
        combo.setCurrentIndex(index)


def choice_combo(parent: QWidget, choices: Iterable[Tuple[str, str]]) -> QComboBox:
    """A combo with one item per (data, untranslated label) of ``choices``."""
    combo = QComboBox(parent)
    for key, label in choices:
        combo.addItem(tr(label), key)
    return combo


def device_combo(parent: QWidget) -> Tuple[QComboBox, Dict[str, Any]]:
    """The device combo (CUDA disabled when torch finds no GPU) and :func:`describe_devices`' answer."""
    combo = choice_combo(parent, DEVICES)
    devices = describe_devices()
    if not devices["cuda"]:
        combo.model().item(2).setEnabled(False)
    return combo, devices


def restore_device(combo: QComboBox, device: Any) -> None:
    """Select the remembered ``device``; 'auto' instead when it is missing or disabled (no GPU now)."""
    select_data(combo, device)
    if not combo.model().item(combo.currentIndex()).isEnabled():
        select_data(combo, "auto")


def add_model_choices(combo: QComboBox, library_paths: Iterable[str], folder: str) -> None:
    """Add the bundled model and each library model to ``combo`` (data 'bundled', 'library:<path>')."""
    bundled = bundled_model_path()
    combo.addItem(tr("Bundled model") if bundled else tr("Bundled model (not installed)"), "bundled")
    for path in library_paths:
        combo.addItem(tr("Library: {name}").format(name=os.path.basename(path)), LIBRARY_PREFIX + path)
    combo.setToolTip(tr("Models in {folder} are listed here.").format(folder=folder))


def chosen_model_path(choice: Optional[str]) -> Optional[str]:
    """The model file behind a model combo's data: the library path, else the bundled model (None if absent)."""
    choice = choice or "bundled"
    if choice.startswith(LIBRARY_PREFIX):
        return choice[len(LIBRARY_PREFIX) :]
    return bundled_model_path()
