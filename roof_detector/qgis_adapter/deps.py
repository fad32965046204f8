"""Check that QGIS's Python has the engine's dependencies; say how to install them.

The engine needs torch, numpy, rasterio, shapely and pyproj. QGIS ships
numpy (and often the rest) but never torch. Nothing is imported at module
level here; :func:`missing_modules` tries the imports when asked, so the
plugin loads without them and explains on first use.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

from . import tr

# import name -> pip package name
REQUIRED = {
    "numpy": "numpy",
    "torch": "torch",
    "rasterio": "rasterio",
    "shapely": "shapely",
    "pyproj": "pyproj",
}


def missing_modules() -> List[str]:
    """Import names of the required modules that cannot be imported."""
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - ImportError, or a broken install raising OSError/RuntimeError
            missing.append(name)
    return missing


def qgis_python_executable() -> str:
    """Best guess of the Python interpreter QGIS runs (sys.executable may be qgis itself)."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    prefix = sys.exec_prefix
    if sys.platform == "win32":
        candidates = [os.path.join(prefix, "python.exe"), os.path.join(prefix, "python3.exe")]
    else:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [os.path.join(prefix, "bin", version), os.path.join(prefix, "bin", "python3")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return "python3"


def install_command(modules: List[str]) -> str:
    """The pip command that installs ``modules`` into QGIS's Python."""
    packages = " ".join(REQUIRED.get(m, m) for m in modules)
    exe = qgis_python_executable()
    quoted = f'"{exe}"' if " " in exe else exe
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    if sys.platform == "win32" or in_venv:
        return f"{quoted} -m pip install {packages}"
    return f"{quoted} -m pip install --user {packages}"


def install_message(modules: List[str]) -> str:
    """A user-facing explanation of what is missing and exactly how to install it."""
    cmd = install_command(modules)
    text = tr("Roof Detector needs Python packages that QGIS's Python does not have: {names}. "
              "Install them into QGIS's Python with:\n\n    {cmd}\n\n").format(
        names=", ".join(modules), cmd=cmd)
    if sys.platform == "win32":
        text += tr("On Windows run it in the 'OSGeo4W Shell' (Start menu, as administrator for an "
                   "all-users install). ")
    elif sys.platform != "darwin":
        text += tr("On Debian/Ubuntu with the system QGIS, if pip refuses ('externally managed "
                   "environment'), add --break-system-packages or install python3-torch from your "
                   "distribution. ")
    text += tr("For an NVIDIA GPU use the CUDA wheel from https://pytorch.org/get-started/locally/. "
               "Then restart QGIS.")
    return text


def geos_mismatch(shapely_geos: Optional[str] = None, qgis_geos: Optional[str] = None) -> Optional[str]:
    """A message when shapely was built with another GEOS than QGIS links, else None.

    PyPI's shapely wheels carry their own GEOS; inside QGIS (which links the
    system GEOS) its symbols clash and geometry operations crash QGIS. Only
    version strings are compared here: no GEOS function is called.
    """
    if shapely_geos is None:
        try:
            import shapely
        except Exception:  # noqa: BLE001 - any failure means 'not available'
            return None
        shapely_geos = ".".join(str(v) for v in shapely.geos_version)
    if qgis_geos is None:
        from qgis.core import Qgis

        qgis_geos = Qgis.geosVersion()
    if qgis_geos.split("-")[0] == shapely_geos:
        return None
    return tr("The shapely package in QGIS's Python was built with GEOS {ours}, but QGIS uses GEOS {theirs}; "
              "geometry operations would crash QGIS. Rebuild shapely against QGIS's GEOS:\n\n    {cmd}\n\n"
              "(on Debian/Ubuntu first: apt install libgeos-dev python3-dev). Then restart QGIS.").format(
        ours=shapely_geos, theirs=qgis_geos,
        cmd=install_command(["shapely"]).replace(" install ", " install --force-reinstall --no-binary shapely ", 1))


def check_dependencies() -> Optional[str]:
    """None when everything imports, else the install explanation for what is missing or clashing."""
    missing = missing_modules()
    return install_message(missing) if missing else geos_mismatch()


def finetune_dependencies_problem() -> Optional[str]:
    """The install explanation when the engine's or fine-tuning's packages are missing, else None."""
    missing = missing_modules()
    try:
        import matplotlib  # noqa: F401 - the training-curve PNG
    except Exception:  # noqa: BLE001
        missing.append("matplotlib")
    return install_message(missing) if missing else None
