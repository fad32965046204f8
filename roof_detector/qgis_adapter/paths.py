"""Where the plugin's files are: resources, the bundled model, the user's model library.

The bundled model and the resources are found by :mod:`roof_detector.core.locations`
(the engine's own resolver: plugin folder first, then its parent).
"""

from __future__ import annotations

import glob
import os
from typing import List, Optional

from ..core.locations import bundled_model_file, package_file


def resource_path(name: str) -> str:
    """Absolute path of ``resources/<name>`` (zip or repo layout); '' if absent."""
    found = package_file(os.path.join("resources", name))
    return str(found) if found else ""


def bundled_model_path() -> Optional[str]:
    """Path of the bundled model ``models/roof_unet.pt``, or None if not shipped (core.locations resolves it)."""
    path = bundled_model_file()
    return str(path) if path.is_file() else None


def model_library_dir() -> str:
    """The user's model library folder: ``<QGIS profile>/roof_detector/models``."""
    from qgis.core import QgsApplication

    return os.path.join(QgsApplication.qgisSettingsDirPath(), "roof_detector", "models")


def library_models() -> List[str]:
    """Sorted paths of the ``*.pt`` files in the model library folder."""
    return sorted(glob.glob(os.path.join(model_library_dir(), "*.pt")))


def library_models_in(folder: str):
    """Sorted ``*.pt`` paths of ``folder`` (the library by default: :func:`library_models`)."""
    if os.path.normpath(folder) == os.path.normpath(model_library_dir()):
        return library_models()
    return sorted(glob.glob(os.path.join(glob.escape(folder), "*.pt")))
