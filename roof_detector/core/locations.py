"""Where the package's own files are, in the repository and in the installed plugin zip.

In the repository ``models/`` and ``resources/`` sit next to the
``roof_detector/`` package; in the zip QGIS installs they sit inside it.
Every lookup tries the package folder first, then its parent. The one
resolver of the bundled model (the engine, the CLI and the plugin use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parents[1]
BUNDLED_MODEL_NAME = "roof_unet.pt"


def package_file(relative: str) -> Optional[Path]:
    """``relative`` (e.g. ``models/roof_unet.pt``) inside the package folder or beside it; None if absent."""
    for base in (PACKAGE_DIR, PACKAGE_DIR.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return None


def bundled_model_file() -> Path:
    """The bundled model's path (where it would be in the repository when it is missing)."""
    return package_file(f"models/{BUNDLED_MODEL_NAME}") or PACKAGE_DIR.parent / "models" / BUNDLED_MODEL_NAME
