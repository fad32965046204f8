"""Where the plugin's files are, in the repository and in an installed zip.

In the repository, ``models/`` and ``resources/`` sit next to the
``roof_detector/`` package (repo_root/models); in the zip QGIS installs they
sit inside it (plugins/roof_detector/models). Every lookup tries the plugin
folder first, then its parent.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import List, Optional

PLUGIN_DIR = Path(__file__).resolve().parents[1]
BUNDLED_MODEL_NAME = "roof_unet.pt"


def _first_existing(relative: str) -> Optional[Path]:
    for base in (PLUGIN_DIR, PLUGIN_DIR.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return None


def resource_path(name: str) -> str:
    """Absolute path of ``resources/<name>`` (zip or repo layout); '' if absent."""
    found = _first_existing(os.path.join("resources", name))
    return str(found) if found else ""


def bundled_model_path() -> Optional[str]:
    """Path of the bundled model ``models/roof_unet.pt``, or None if not shipped."""
    found = _first_existing(os.path.join("models", BUNDLED_MODEL_NAME))
    return str(found) if found else None


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
