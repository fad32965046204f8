"""The work folder of a ``detect-many`` run: one GeoPackage part per finished job and a manifest.

``manifest.jsonl``: the first line holds the run's settings (inputs, options,
margin, block size), every later line one finished job. A job is finished
when its line is in the manifest *and* its part exists; parts are written
atomically (:mod:`.gpkg_writer`) before their line is appended and synced,
so a crash at any moment leaves either a finished job or none. A re-run with
the same settings skips the finished jobs; with other settings it is refused
(a mix of two runs would be no result of either).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from .errors import OutputError

MANIFEST = "manifest.jsonl"


def saved_setting(folder: str, name: str) -> Any:
    """Setting ``name`` of the run whose parts ``folder`` holds (None: no run, or unreadable)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as fh:
            return json.loads(fh.readline())["settings"].get(name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class Manifest:
    """Finished jobs of one run, kept in ``folder/manifest.jsonl`` next to their parts."""

    def __init__(self, folder: str, settings: Dict[str, Any]):
        self.folder = folder
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.done: Dict[int, Dict[str, Any]] = {}
        self.path = os.path.join(folder, MANIFEST)
        try:
            os.makedirs(folder, exist_ok=True)
            if os.path.exists(self.path):
                self._load()
            else:
                self._append({"settings": self.settings})
        except OSError as exc:  # a read-only or full disk, a file in the way: before any work
            raise OutputError(
                f"Cannot use the work folder {folder} ({exc.strerror or exc}); choose another --work-dir "
                "on a writable disk with free space"
            ) from None

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        try:
            header = json.loads(lines[0])["settings"] if lines else None
        except (ValueError, KeyError, TypeError):
            header = None
        if header != self.settings:
            raise OutputError(
                f"{self.folder} holds the parts of a run with other inputs or settings; pass "
                "--restart to discard them, or another --work-dir"
            )
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a crash: that job is simply not finished
                continue
            if os.path.exists(self.part_path(int(entry["job"]))):
                self.done[int(entry["job"])] = entry

    def part_path(self, index: int) -> str:
        """Where job ``index``'s buildings are kept until the merge."""
        return os.path.join(self.folder, f"part-{index:06d}.gpkg")

    def record(self, index: int, entry: Dict[str, Any]) -> None:
        """Mark job ``index`` finished (its part must already be written)."""
        entry = dict(entry, job=index)
        self._append(entry)
        self.done[index] = entry

    def _append(self, obj: Dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def entry(self, index: int) -> Optional[Dict[str, Any]]:
        return self.done.get(index)
