"""The cache of fp32 ONNX graphs exported from model files, and which entries are known good.

:mod:`.onnx_backend` exports a model file's graph once and checks it against TorchScript
(within 1e-3). That check needs torch and the TorchScript model: 1.4 s per load on a 2-core
machine, and the import holds the GIL long enough to stall QGIS's main thread for half a
second. So an entry that passed it gets a record beside it (``<entry>.verified.json``: the
entry's SHA-256 and the ONNX Runtime version that ran the check), and a later load that finds
the entry unchanged, checked by the same ONNX Runtime, runs it without torch. Anything else
(no record, another hash, another ONNX Runtime) goes through the full check again.

Each load that uses an entry marks it used (its modification time); making a new entry removes
those no load has used for :data:`UNUSED_DAYS` days, so the cache does not grow by one
15 MB file per fine-tuned or replaced model for ever.

No torch and no ``qgis`` import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

from .onnx_twin import file_sha256
from .temp_files import temp_path

RECORD_SUFFIX = ".verified.json"
#: Entries no load has used for this long are removed when a new one is made (each is ~15 MB,
#: one per model file: fine-tuned models and replaced ones would pile up for ever).
UNUSED_DAYS = 30


def cache_dir() -> Path:
    """Where derived ONNX files live: $ROOF_DETECTOR_CACHE, else $XDG_CACHE_HOME or ~/.cache, /roof_detector/onnx."""
    base = os.environ.get("ROOF_DETECTOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "roof_detector"
    )
    return Path(base) / "onnx"


def file_key(path: str) -> str:
    """The cache key of a model file: the first 16 hex digits of its SHA-1."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def entry_path(model_path: str) -> Path:
    """The cache entry of ``model_path``'s fp32 graph (it may not exist)."""
    return cache_dir() / f"{file_key(model_path)}.onnx"


def _runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def record_verified(entry: Path, checked_sha256: str) -> str:
    """Record that ``entry``, whose bytes hashed ``checked_sha256`` when its check began, agreed with
    its TorchScript model; return why it could not be recorded ("" when it was).

    Nothing is recorded when the entry has changed since (another process replaced it with its own
    export: that process records its own check).
    """
    record = Path(str(entry) + RECORD_SUFFIX)
    tmp = temp_path(str(record), ".json")
    try:
        if file_sha256(entry) != checked_sha256:
            return ""
        with open(tmp, "w") as f:
            json.dump({"sha256": checked_sha256, "onnxruntime": _runtime_version()}, f)
        os.replace(tmp, record)
    except OSError as exc:  # a read-only cache: every load checks the entry again (with torch)
        return f"{record.parent}: {exc.strerror or exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ""


def forget(entry: Path) -> None:
    """Remove ``entry``'s record of a passed check (a corrupt or disagreeing entry)."""
    try:
        Path(str(entry) + RECORD_SUFFIX).unlink()
    except OSError:
        pass


def verified_entry(model_path: str) -> Optional[str]:
    """``model_path``'s cache entry when it passed the check against TorchScript, is unchanged
    since, and this ONNX Runtime ran the check; else None."""
    try:
        entry = entry_path(model_path)
        with open(str(entry) + RECORD_SUFFIX) as f:
            record = json.load(f)
        if record.get("onnxruntime") != _runtime_version() or record.get("sha256") != file_sha256(entry):
            return None
    except (OSError, ValueError, AttributeError):  # no record, no entry, a record that is not a JSON object
        return None
    mark_used(entry)
    return str(entry)


def mark_used(entry: Path) -> None:
    """Note that ``entry`` was used now (its modification time: :func:`remove_unused` keeps it)."""
    try:
        os.utime(entry)
    except OSError:  # a read-only cache: nothing is removed from it either
        pass


def remove_unused(keep: Path, unused_days: float = UNUSED_DAYS) -> list:
    """Remove the entries (and records) of the cache no load has used for ``unused_days``, but
    ``keep``; return the entries removed."""
    cutoff = time.time() - unused_days * 86400.0
    removed = []
    for entry in keep.parent.glob("*.onnx"):
        try:
            if entry != keep and entry.stat().st_mtime < cutoff:
                forget(entry)
                entry.unlink()
                removed.append(entry)
        except OSError:  # gone meanwhile (another process), or not ours to remove
            pass
    return removed
