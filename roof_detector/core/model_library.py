"""The user's model library: a folder of model files (``*.pt``) and their side files.

A model ``NAME.pt`` may come with ``NAME_curves.png`` (training curves) and
``NAME_metrics.json`` (fine-tuning figures), written by
:func:`roof_detector.core.training.finetune.finetune`; renaming, deleting
and importing keep them together with the model.

Pure Python (no ``qgis`` import): the QGIS "Model Library" dialog is a thin
layer over these functions. Every refusal raises :class:`ModelLibraryError`
with a message that names the file and says what to do.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .errors import ModelError, RoofDetectorError

MODEL_SUFFIX = ".pt"
SIDE_SUFFIXES = ("_curves.png", "_metrics.json")


class ModelLibraryError(RoofDetectorError):
    """A library operation was refused (invalid model file, name clash, missing file...)."""


@dataclass
class ModelEntry:
    """One ``*.pt`` file of the library with what its metadata says (``error`` when unreadable)."""

    path: str
    name: str
    version: str = ""
    gsd_m: Optional[float] = None
    val_iou: Optional[float] = None
    tile_size_px: Optional[int] = None
    base_model: str = ""
    created: str = ""
    error: str = ""

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    @property
    def ok(self) -> bool:
        return not self.error


def file_stem(name: str) -> str:
    """A safe file name stem for a model name: letters, digits, ``-``, ``_`` and ``.`` only.

    Raises :class:`ModelLibraryError` for a name with nothing usable in it.
    """
    stem = str(name or "").strip()
    if stem.lower().endswith(MODEL_SUFFIX):
        stem = stem[: -len(MODEL_SUFFIX)]
    stem = re.sub(r"\s+", "_", stem)
    stem = re.sub(r"_{2,}", "_", re.sub(r"[^\w.-]+", "_", stem)).strip("._-")
    if not stem:
        raise ModelLibraryError(f"{name!r} is not usable as a model name; use letters, digits, '-' or '_'")
    return stem[:120]


def side_files(model_path: str) -> List[str]:
    """The side files of ``model_path`` that exist (curves PNG, metrics JSON)."""
    base = os.path.splitext(model_path)[0]
    return [base + s for s in SIDE_SUFFIXES if os.path.isfile(base + s)]


def validation_iou(meta: Dict[str, Any]) -> Optional[float]:
    """The validation IoU a model file records, whatever tool wrote it (None if absent).

    Fine-tuned models hold ``metrics.val_after.iou``; trained ones
    ``metrics.val.pooled.iou`` (or one validation set's ``iou``); checkpoints
    ``metrics.val.val_iou``.
    """
    metrics = meta.get("metrics") or {}
    if not isinstance(metrics, dict):
        return None
    val = metrics.get("val")
    pooled = val.get("pooled") if isinstance(val, dict) else None
    for c in (metrics.get("val_after"), pooled, val):
        if isinstance(c, dict):
            for key in ("iou", "val_iou"):
                if isinstance(c.get(key), (int, float)):
                    return float(c[key])
    if isinstance(val, dict):
        for part in val.values():
            if isinstance(part, dict) and isinstance(part.get("iou"), (int, float)):
                return float(part["iou"])
    return None


def describe(path: str) -> ModelEntry:
    """A :class:`ModelEntry` for one model file; unreadable files get ``error`` set, not raised."""
    from .model_io import read_metadata

    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        meta = read_metadata(path)
    except ModelError as exc:
        return ModelEntry(path=path, name=stem, error=str(exc))
    base = meta.get("base_model")
    if isinstance(base, dict):
        base_name = base.get("name") or base.get("path") or ""
    else:
        base_name = str(base or "")
    try:
        gsd = float(meta["gsd_m"])
        tile = int(meta["tile_size_px"])
    except (TypeError, ValueError, KeyError):
        gsd, tile = None, None
    return ModelEntry(
        path=path,
        name=str(meta.get("name") or stem),
        version=str(meta.get("version") or ""),
        gsd_m=gsd,
        val_iou=validation_iou(meta),
        tile_size_px=tile,
        base_model=str(base_name),
        created=str(meta.get("created") or ""),
    )


def list_models(library_dir: str) -> List[ModelEntry]:
    """Every ``*.pt`` file of ``library_dir``, sorted by file name (an absent folder is empty)."""
    if not os.path.isdir(library_dir):
        return []
    paths = sorted(
        glob.glob(os.path.join(glob.escape(library_dir), "*" + MODEL_SUFFIX)), key=lambda p: os.path.basename(p).lower()
    )
    return [describe(p) for p in paths if not os.path.basename(p).startswith(".tmp-")]


def _clash(library_dir: str, stem: str, ignore: Optional[str] = None) -> Optional[str]:
    """The existing library file whose name equals ``stem.pt`` ignoring case, if any."""
    wanted = (stem + MODEL_SUFFIX).lower()
    if not os.path.isdir(library_dir):
        return None
    for entry in os.listdir(library_dir):
        path = os.path.join(library_dir, entry)
        if entry.lower() == wanted and (
            ignore is None or os.path.normcase(os.path.abspath(path)) != os.path.normcase(os.path.abspath(ignore))
        ):
            return path
    return None


def new_model_path(library_dir: str, name: str) -> str:
    """Where a new model called ``name`` goes in the library; refuses a name already taken."""
    stem = file_stem(name)
    existing = _clash(library_dir, stem)
    if existing:
        raise ModelLibraryError(
            f"The library already holds a model file {os.path.basename(existing)}; "
            "choose another name, or rename or delete that model first"
        )
    return os.path.join(library_dir, stem + MODEL_SUFFIX)


def _require_model(path: str, action: str) -> Dict[str, Any]:
    from .model_io import read_metadata

    try:
        return read_metadata(path)
    except ModelError as exc:
        raise ModelLibraryError(f"Cannot {action} {os.path.basename(path)}: {exc}") from None


def rename_model(path: str, new_name: str) -> str:
    """Give the model at ``path`` a new name: its file (and side files) and its metadata name.

    Returns the new path. The model is rewritten atomically with the new
    metadata; the weights are untouched.
    """
    import torch

    from .model_io import METADATA_FILE, save_model

    if not os.path.isfile(path):
        raise ModelLibraryError(f"Model file not found: {path}")
    meta = _require_model(path, "rename")
    library_dir = os.path.dirname(os.path.abspath(path))
    stem = file_stem(new_name)
    target = os.path.join(library_dir, stem + MODEL_SUFFIX)
    existing = _clash(library_dir, stem, ignore=path)
    if existing:
        raise ModelLibraryError(
            f"Cannot rename to {new_name!r}: the library already holds "
            f"{os.path.basename(existing)}; choose another name"
        )
    old_base, new_base = os.path.splitext(path)[0], os.path.splitext(target)[0]
    if old_base != new_base:
        for suffix in SIDE_SUFFIXES:
            if os.path.exists(new_base + suffix):
                raise ModelLibraryError(
                    f"Cannot rename to {new_name!r}: {os.path.basename(new_base + suffix)} "
                    "already exists in the library"
                )
    try:
        module = torch.jit.load(path, map_location="cpu", _extra_files={METADATA_FILE: ""})
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds
        raise ModelLibraryError(
            f"Cannot rename {os.path.basename(path)}: it does not load as TorchScript "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    meta = dict(meta)
    meta["name"] = str(new_name).strip()
    save_model(module, target, meta)
    if os.path.normcase(os.path.abspath(target)) != os.path.normcase(os.path.abspath(path)):
        if os.path.exists(path) and not os.path.samefile(path, target):
            os.unlink(path)
        for suffix in SIDE_SUFFIXES:
            if os.path.exists(old_base + suffix) and old_base + suffix != new_base + suffix:
                os.replace(old_base + suffix, new_base + suffix)
    return target


def delete_model(path: str) -> List[str]:
    """Delete a model file and its side files; return what was removed."""
    if not os.path.isfile(path):
        raise ModelLibraryError(f"Model file not found: {path}")
    removed = []
    for p in [path] + side_files(path):
        try:
            os.unlink(p)
        except OSError as exc:
            raise ModelLibraryError(f"Cannot delete {p}: {exc.strerror or exc}") from None
        removed.append(p)
    return removed


def _copy_atomic(source: str, target: str) -> None:
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(target)[1], dir=folder)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def import_model(source: str, library_dir: str, name: Optional[str] = None) -> str:
    """Copy a model file into the library after checking it is a loadable Roof Detector model.

    The library file is named after ``name`` (default: the source file's
    name); a name already in the library is refused. Side files next to the
    source (``*_curves.png``, ``*_metrics.json``) come along. Returns the new path.
    """
    import torch

    if not os.path.isfile(source):
        raise ModelLibraryError(f"Model file not found: {source}")
    _require_model(source, "import")
    try:
        torch.jit.load(source, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelLibraryError(
            f"Cannot import {os.path.basename(source)}: it does not load as TorchScript "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    os.makedirs(library_dir, exist_ok=True)
    target = new_model_path(library_dir, name or os.path.splitext(os.path.basename(source))[0])
    if os.path.normcase(os.path.abspath(source)) == os.path.normcase(os.path.abspath(target)):
        raise ModelLibraryError(f"{source} is already in the library")
    _copy_atomic(source, target)
    src_base, dst_base = os.path.splitext(source)[0], os.path.splitext(target)[0]
    for side in side_files(source):
        suffix = side[len(src_base) :]
        if not os.path.exists(dst_base + suffix):
            _copy_atomic(side, dst_base + suffix)
    return target


def export_model_file(path: str, destination: str, overwrite: bool = False) -> str:
    """Copy a library model to ``destination`` (a file path, or a folder to copy into).

    An existing file is replaced only with ``overwrite`` (a file dialog has
    asked already). Returns the written path.
    """
    if not os.path.isfile(path):
        raise ModelLibraryError(f"Model file not found: {path}")
    _require_model(path, "export")
    target = os.path.join(destination, os.path.basename(path)) if os.path.isdir(destination) else destination
    if not target.lower().endswith(MODEL_SUFFIX):
        target += MODEL_SUFFIX
    if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        raise ModelLibraryError(f"Folder {os.path.dirname(os.path.abspath(target))} does not exist")
    if os.path.exists(target):
        if os.path.samefile(target, path):
            raise ModelLibraryError(f"{target} is the model itself; choose another place")
        if not overwrite:
            raise ModelLibraryError(f"{target} already exists; choose another file name")
    try:
        _copy_atomic(path, target)
    except OSError as exc:
        raise ModelLibraryError(f"Cannot write {target}: {exc.strerror or exc}") from None
    return target
