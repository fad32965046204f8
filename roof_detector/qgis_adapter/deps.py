"""The one dependency check of every entry point, and how to fix what it finds.

:func:`dependency_problem` is THE check: the toolbar action, the menu
entries, the Processing algorithms (as a ``QgsProcessingException``, so
``qgis_process`` prints it), the report and fine-tune dialogs all call it
and show the same one message. It reports, for a purpose (``detect``,
``report``, ``finetune``):

* Python packages that cannot be imported (with why each is needed);
* a shapely built with another GEOS than QGIS's (the Linux GEOS rule: its
  symbols clash with QGIS's and geometry operations crash QGIS).

Detection on the CPU needs no torch: the bundled model ships with its ONNX
twin, run by onnxruntime. torch is needed to fine-tune, for a GPU, and for
the fp32 model on CPUs whose int8 arithmetic saturates (no VNNI; without
torch the twin runs there and detection warns: README, ONNX twin).

Missing packages are installed by the dependency dialog
(:mod:`.deps_dialog`) with pip, run by QGIS's own Python, into a folder the
plugin owns (:func:`deps_dir`, appended to ``sys.path`` at plugin load, so
QGIS's own numpy/GDAL keep precedence). Nothing is imported at module
level; a package already imported is not imported again, so the check is
quick on every click.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import tr

# import name -> (pip requirement, why it is needed)
ENGINE = {
    "numpy": ("numpy<2", "arrays (QGIS normally ships it)"),
    # affine 3 (slotted Affine) breaks rasterio 1.4's cached properties: "No '__dict__' attribute"
    "affine": ("affine>=2.4,<3", "raster geotransforms"),
    "rasterio": ("rasterio>=1.4,<1.5", "reading orthophotos"),
    "shapely": ("shapely>=2", "building outlines"),
    "pyproj": ("pyproj", "ground areas in metres"),
}
CPU_RUNTIME = {"onnxruntime": ("onnxruntime", "runs the bundled model on the CPU (no torch needed)")}
TORCH = {
    "torch": (
        "torch",
        "fine-tuning, GPUs, models without an ONNX twin, and CPUs without VNNI (where it runs the model in fp32)",
    )
}
CHARTS = {"matplotlib": ("matplotlib", "the training-curve chart")}

PURPOSES: Dict[str, Dict[str, Tuple[str, str]]] = {
    "detect": {**ENGINE, **CPU_RUNTIME},
    "report": {**ENGINE},
    "finetune": {**ENGINE, **TORCH, **CHARTS},
    # a detection on a Roof Detector server: QGIS alone (its network manager and GDAL) uploads,
    # polls and reads the result, so none of the engine's packages is needed here
    "server": {},
}
PURPOSE_TEXT = {
    "detect": "detect buildings",
    "report": "make the rooftop report",
    "finetune": "fine-tune a model",
    "server": "detect buildings on a Roof Detector server",
}

ALL = {**ENGINE, **CPU_RUNTIME, **TORCH, **CHARTS}


@dataclass
class Missing:
    """One package that cannot be imported."""

    module: str
    requirement: str
    why: str
    error: str = ""


@dataclass
class DependencyReport:
    """What :func:`check` found for a purpose."""

    purpose: str
    missing: List[Missing] = field(default_factory=list)
    geos: Optional[str] = None  # the GEOS-mismatch explanation, or None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.geos

    def requirements(self) -> List[str]:
        """pip requirements that fix what is missing (shapely again when its GEOS clashes)."""
        reqs = [m.requirement for m in self.missing]
        if self.geos and not any(r.startswith("shapely") for r in reqs):
            reqs.append(ENGINE["shapely"][0])
        return reqs

    def message(self) -> str:
        """The one user-facing message (empty when everything is there)."""
        if self.ok:
            return ""
        parts = []
        if self.missing:
            items = "; ".join(f"{m.module} ({tr(m.why)})" for m in self.missing)
            parts.append(
                tr("Roof Detector needs Python packages that QGIS's Python does not have to {what}: {items}.").format(
                    what=tr(PURPOSE_TEXT.get(self.purpose, self.purpose)), items=items
                )
            )
        if self.geos:
            parts.append(self.geos)
        parts.append(
            tr(
                "Open Plugins > Roof Detector > Check dependencies… and click Install, or run in a "
                "terminal:\n\n    {cmd}\n\nthen restart QGIS."
            ).format(cmd=install_command(self.requirements()))
        )
        return "\n\n".join(parts)


def deps_dir() -> str:
    """The plugin-owned folder pip installs into: $ROOF_DETECTOR_DEPS_DIR, or
    ``<QGIS settings>/python/roof_detector_deps/py<X.Y>`` (outside the plugin folder,
    so a plugin upgrade keeps it; per Python version, since wheels are)."""
    override = os.environ.get("ROOF_DETECTOR_DEPS_DIR")
    if override:
        return override
    base = None
    try:
        from qgis.core import QgsApplication

        base = QgsApplication.qgisSettingsDirPath()
    except Exception:  # noqa: BLE001 - outside QGIS
        pass
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".local", "share", "roof_detector")
    return os.path.join(base, "python", "roof_detector_deps", f"py{sys.version_info.major}.{sys.version_info.minor}")


def activate_deps_dir() -> str:
    """Put :func:`deps_dir` at the END of ``sys.path`` (QGIS's own packages win); return it."""
    path = deps_dir()
    if os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)
        importlib.invalidate_caches()
    return path


def _try_import(module: str) -> str:
    """'' when ``module`` imports, else the first line of why not (absent: no import attempted)."""
    if module in sys.modules and sys.modules[module] is not None:
        return ""
    try:
        if importlib.util.find_spec(module) is None:
            return "not installed"
    except (ImportError, ValueError):
        return "not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising OSError/RuntimeError
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    return ""


def missing_modules(purpose: str = "detect") -> List[str]:
    """Import names of the packages ``purpose`` needs that cannot be imported."""
    return [name for name in PURPOSES[purpose] if _try_import(name)]


def check(purpose: str = "detect") -> DependencyReport:
    """What ``purpose`` lacks here (packages, GEOS)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    activate_deps_dir()
    names = missing_modules(purpose)
    report = DependencyReport(purpose, [Missing(n, *ALL.get(n, (n, "")), error=_try_import(n)) for n in names])
    if "shapely" not in names:
        report.geos = geos_mismatch()
    return report


def dependency_problem(purpose: str = "detect") -> Optional[str]:
    """THE check of every entry point: None when ``purpose`` can run here, else the one message."""
    report = check(purpose)
    return None if report.ok else report.message()


def qgis_python_executable() -> str:
    """The Python interpreter QGIS runs (``sys.executable`` is often qgis itself).

    Embedded in QGIS (``qgis_process`` included), ``sys.executable`` is the first ``python3``
    on PATH, which may be another Python altogether (a pyenv shim): it is taken only when it
    resolves into this interpreter's own installation (``sys.exec_prefix``).
    """
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python") and _is_this_python(exe):
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


def _is_this_python(exe: str) -> bool:
    """``exe`` resolves (links followed) into the installation of the Python running this code."""
    real = os.path.realpath(exe)
    homes = {os.path.realpath(p) for p in (sys.exec_prefix, sys.base_exec_prefix) if p}
    return any(real.startswith(home.rstrip(os.sep) + os.sep) for home in homes)


def default_cpu_threads() -> int:
    """CPU threads detection uses (without torch: the CPUs this process may use)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def needs_source_shapely() -> bool:
    """The Linux GEOS rule: shapely must be built against the system GEOS QGIS links (not a PyPI wheel)."""
    return sys.platform.startswith("linux")


def pip_arguments(requirements: List[str], target: Optional[str] = None, gpu: bool = False) -> List[str]:
    """Arguments after the interpreter: ``-m pip install --target DIR ...``.

    pip's own configuration (index, proxy, find-links, trusted hosts) applies,
    as nothing here overrides it. torch comes as the CPU build unless ``gpu``
    (the CPU wheels' index is added as an *extra* index; the "+cpu" local
    version outranks PyPI's CUDA build). On Linux shapely is built from source
    against the system GEOS (needs libgeos-dev and a compiler).
    """
    target = target or deps_dir()
    args = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--upgrade", "--target", target]
    if needs_source_shapely() and any(r.startswith("shapely") for r in requirements):
        args += ["--no-binary", "shapely"]
    if (
        any(r.split("<")[0].split(">")[0].split("=")[0] == "torch" for r in requirements)
        and not gpu
        and sys.platform != "darwin"
    ):
        args += ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    # A dependency QGIS's Python already has (numpy, which GDAL is built against) is held at
    # QGIS's version, so what lands in the folder matches what QGIS imports (its copy wins anyway).
    constraints = write_constraints(target)
    if constraints:
        args += ["--constraint", constraints]
    return args + requirements


def write_constraints(target: str) -> Optional[str]:
    """A pip constraints file pinning numpy to QGIS's version (None when numpy is absent)."""
    try:
        import numpy
    except Exception:  # noqa: BLE001
        return None
    path = os.path.join(os.path.dirname(target.rstrip(os.sep)) or target, "constraints.txt")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"numpy=={numpy.__version__}\n")
    except OSError:
        return None
    return path


def install_command(requirements: List[str], gpu: bool = False) -> str:
    """The same pip run as the dialog's Install button, as a command line."""
    exe = qgis_python_executable()
    words = [exe] + pip_arguments(requirements, gpu=gpu)
    return " ".join(f'"{w}"' if (" " in w or "<" in w or ">" in w) else w for w in words)


def geos_mismatch(shapely_geos: Optional[str] = None, qgis_geos: Optional[str] = None) -> Optional[str]:
    """A message when shapely was built with another GEOS than QGIS links, else None.

    PyPI's shapely wheels carry their own GEOS; inside QGIS (which links the
    system GEOS) its symbols clash and geometry operations crash QGIS. Only
    version strings are compared here: no GEOS function is called.
    """
    if shapely_geos is None:
        try:
            import shapely
        except Exception:  # noqa: BLE001
            return None
        shapely_geos = ".".join(str(v) for v in shapely.geos_version)
    if qgis_geos is None:
        from qgis.core import Qgis

        qgis_geos = Qgis.geosVersion()
    if qgis_geos.split("-")[0] == shapely_geos:
        return None
    return tr(
        "The shapely package in QGIS's Python was built with GEOS {ours}, but QGIS uses GEOS {theirs}; "
        "geometry operations would crash QGIS. shapely must be rebuilt against QGIS's GEOS "
        "(pip install --no-binary shapely; on Debian/Ubuntu first: apt install libgeos-dev python3-dev "
        "build-essential)."
    ).format(ours=shapely_geos, theirs=qgis_geos)
