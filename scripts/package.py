#!/usr/bin/env python3
"""Build the plugin zip that QGIS's "Install from ZIP" accepts; optionally install it.

    python scripts/package.py                 -> dist/roof_detector-<version>.zip
    python scripts/package.py --deploy        also unpack it into the default QGIS profile
    python scripts/package.py --deploy --plugins-dir DIR

Zip layout (one top-level folder, as QGIS requires)::

    roof_detector/__init__.py ...   the package (core/, cli/, qgis_adapter/, qgis_ui/, qgis_io/, processing/, plugin.py)
    roof_detector/metadata.txt
    roof_detector/resources/        icon and styles (no build scripts)
    roof_detector/models/           roof_unet.pt, its ONNX twin roof_unet.onnx + README.md, when present
    roof_detector/LICENSE           when present

Excluded: tests, __pycache__, *.pyc, .venv and anything else not listed.
Entries are sorted and time-stamped with a fixed date, so the same tree
gives the same zip.
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "roof_detector"
MODEL_FILES = ("roof_unet.pt", "roof_unet.onnx", "README.md")
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")
EXCLUDED_DIRS = {"__pycache__", "tests", "test", ".pytest_cache", ".mypy_cache"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", "~")
FIXED_DATE = (2024, 1, 1, 0, 0, 0)
DEFAULT_PLUGINS_DIR = Path.home() / ".local/share/QGIS/QGIS3/profiles/default/python/plugins"


def _metadata_path(root: Path) -> Path:
    for candidate in (root / "metadata.txt", root / PLUGIN / "metadata.txt"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"metadata.txt not found in {root} or {root / PLUGIN}")


def read_version(root: Path = REPO_ROOT) -> str:
    """The plugin version from metadata.txt ([general] version)."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(_metadata_path(root), encoding="utf-8")
    return cfg["general"]["version"].strip()


def _walk(folder: Path, skip_suffixes: Tuple[str, ...] = ()) -> List[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(EXCLUDED_SUFFIXES + skip_suffixes):
                continue
            found.append(Path(dirpath) / name)
    return found


def collect_files(root: Path = REPO_ROOT) -> List[Tuple[Path, str]]:
    """(source file, name in the zip) for every file the plugin zip holds, sorted by name."""
    entries = [(p, f"{PLUGIN}/{p.relative_to(root / PLUGIN).as_posix()}") for p in _walk(root / PLUGIN)]
    metadata = _metadata_path(root)
    if metadata.parent == root:
        entries.append((metadata, f"{PLUGIN}/metadata.txt"))
    if (root / "resources").is_dir():
        entries += [
            (p, f"{PLUGIN}/resources/{p.relative_to(root / 'resources').as_posix()}")
            for p in _walk(root / "resources", skip_suffixes=(".py",))
        ]
    for name in MODEL_FILES:
        if (root / "models" / name).is_file():
            entries.append((root / "models" / name, f"{PLUGIN}/models/{name}"))
    for name in LICENSE_NAMES:
        if (root / name).is_file():
            entries.append((root / name, f"{PLUGIN}/{name}"))
    names = [arc for _, arc in entries]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SystemExit(f"files would collide in the zip: {sorted(duplicates)}")
    return sorted(entries, key=lambda e: e[1])


def check_twin(root: Path = REPO_ROOT) -> str:
    """Refuse to package an ONNX twin made from another version of the bundled model; describe the twin.

    The twin's ``source_sha256`` property (see roof_detector/core/onnx_twin.py)
    must be the SHA-256 of models/roof_unet.pt. The property is found in the
    raw protobuf bytes (key and value are plain strings there), so this check
    needs neither onnx nor onnxruntime.
    """
    import hashlib
    import re

    pt, twin = root / "models" / "roof_unet.pt", root / "models" / "roof_unet.onnx"
    if not pt.is_file():
        return "no bundled model"
    if not twin.is_file():
        return "no ONNX twin: CPU detection in QGIS will need torch (make onnx-twin)"
    digest = hashlib.sha256(pt.read_bytes()).hexdigest()
    data = twin.read_bytes()
    found = re.search(rb"source_sha256\x12@([0-9a-f]{64})", data)
    if not found or found.group(1).decode() != digest:
        raise SystemExit(
            f"{twin} was not made from the current {pt.name}: run `make onnx-twin` "
            "(needs ../shared/data) before packaging"
        )
    precision = re.search(rb"precision\x12\x04(fp32|int8)", data)
    return f"ONNX twin {precision.group(1).decode() if precision else '?'}, {twin.stat().st_size / 1e6:.1f} MB"


def check_entries(names: List[str]) -> None:
    """Refuse a zip QGIS would reject or that would not load."""
    required = [f"{PLUGIN}/__init__.py", f"{PLUGIN}/metadata.txt", f"{PLUGIN}/plugin.py"]
    missing = [n for n in required if n not in names]
    if missing:
        raise SystemExit(f"the zip lacks {missing}")
    if any(not n.startswith(PLUGIN + "/") for n in names):
        raise SystemExit("every entry must lie under the top-level folder roof_detector/")


def build_zip(root: Path = REPO_ROOT, dist: Path | None = None) -> Path:
    """Write ``<dist>/roof_detector-<version>.zip`` from the tree at ``root``; return its path."""
    root = Path(root)
    dist = Path(dist) if dist else root / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    check_twin(root)
    entries = collect_files(root)
    check_entries([arc for _, arc in entries])
    target = dist / f"{PLUGIN}-{read_version(root)}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for source, arcname in entries:
            info = zipfile.ZipInfo(arcname, FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, source.read_bytes())
    os.replace(tmp, target)
    return target


def deploy(zip_path: Path, plugins_dir: Path = DEFAULT_PLUGINS_DIR) -> Path:
    """Unpack ``zip_path`` into ``plugins_dir``, replacing an installed copy; return the plugin folder."""
    plugins_dir = Path(plugins_dir).expanduser()
    plugins_dir.mkdir(parents=True, exist_ok=True)
    target = plugins_dir / PLUGIN
    staging = plugins_dir / f".{PLUGIN}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging / PLUGIN, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv=None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default=str(REPO_ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--deploy", action="store_true", help="install the zip into a QGIS profile")
    parser.add_argument(
        "--plugins-dir",
        default=str(DEFAULT_PLUGINS_DIR),
        help="QGIS plugins folder for --deploy (default: the 'default' profile)",
    )
    args = parser.parse_args(argv)
    zip_path = build_zip(REPO_ROOT, Path(args.dist))
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    has_model = f"{PLUGIN}/models/roof_unet.pt" in names
    print(
        f"{zip_path} ({zip_path.stat().st_size / 1e6:.1f} MB, {len(names)} files"
        f"{'' if has_model else '; no bundled model: models/roof_unet.pt is absent'}; {check_twin(REPO_ROOT)})"
    )
    if args.deploy:
        print(f"installed into {deploy(zip_path, Path(args.plugins_dir))}; restart QGIS or reload the plugin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
