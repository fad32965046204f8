"""Temporary files of our own naming, and cleaning those a killed run left behind.

Outputs are written under a hidden temporary name beside the target and
renamed when complete. A ``kill -9`` (or a crash) leaves that file; its
name carries the writer's process id, so the next run removes the ones whose
process is gone, and never a file another live run is writing:
``.<target name>.<pid>-<random>.tmp<suffix>`` (plus SQLite's ``-journal``,
``-wal``, ``-shm`` beside it), or ``.<target name>.<pid>.tmp<suffix>`` for a
writer that holds at most one temporary per target per process (the report's
files). No ``qgis`` import here.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import List

#: 0.2.0 named its GeoPackage temporaries without a process id; those older than this are stale.
LEGACY_STALE_S = 3600.0


def temp_path(target: str, suffix: str, one_per_process: bool = False) -> str:
    """A fresh temporary path beside ``target`` (not created).

    ``one_per_process``: the name carries the process id alone (no random part), for writers
    that never hold two temporaries of one target at once; it is then known before it exists.
    """
    directory, name = os.path.split(os.path.abspath(target))
    token = str(os.getpid()) if one_per_process else f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return os.path.join(directory, f".{name}.{token}.tmp{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(target: str, suffix: str) -> List[str]:
    """Remove the temporaries of ``target`` left by dead writers; return their paths."""
    directory, name = os.path.split(os.path.abspath(target))
    ours = re.compile(
        re.escape(f".{name}.") + r"(\d+)(?:-[0-9a-f]{8})?" + re.escape(f".tmp{suffix}") + r"(-journal|-wal|-shm)?$"
    )
    legacy = re.compile(
        re.escape(f".{name}.") + r"[0-9a-f]{8}" + re.escape(f".tmp{suffix}") + r"(-journal|-wal|-shm)?$"
    )
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    now = time.time()
    for entry in entries:
        path = os.path.join(directory, entry)
        match = ours.match(entry)
        try:
            if match:
                stale = not _alive(int(match.group(1)))
            elif legacy.match(entry):
                stale = now - os.path.getmtime(path) > LEGACY_STALE_S
            else:
                continue
            if stale:
                os.unlink(path)
                removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed
