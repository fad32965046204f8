"""Stopping the plugin's background tasks when QGIS closes or the plugin is unloaded/reloaded.

QGIS calls the plugin's ``unload()`` on exit and on reload while tasks may
still run in worker threads. :func:`cancel_tasks` cancels them, drops their
callbacks (so a ``finished()`` that runs later on the main thread touches no
deleted plugin object or dialog) and waits a few seconds for the running ones
to stop, so a detection does not keep writing while QGIS shuts down. A
cancelled task writes nothing: detection raises ``Cancelled`` before any
output, fine-tuning keeps or drops its model atomically.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, List

from qgis.core import Qgis, QgsMessageLog

from . import LOG_TAG, tr

# How long unloading (QGIS closing, plugin reload) waits in all for cancelled tasks to stop.
UNLOAD_WAIT_S = 5.0


def cancel_tasks(tasks: Iterable[Any], wait_s: float) -> List[Any]:
    """Cancel ``tasks`` and wait up to ``wait_s`` seconds in all for those already running to stop.

    Their ``on_finished`` callback is dropped first, so a task that ends
    later (its ``finished()`` runs on the main thread after the plugin is
    gone) touches neither the plugin nor its dialogs. A cancelled task
    writes nothing (see DetectTask/FinetuneTask). Returns the tasks still
    running when the wait ran out.
    """
    cancelled = []
    for task in list(tasks):
        try:
            task.on_finished = None
            task.cancel()
            cancelled.append(task)
        except RuntimeError:  # already deleted by the task manager
            pass
    deadline = time.monotonic() + max(0.0, wait_s)
    still_running = []
    for task in cancelled:
        started, done = getattr(task, "run_started", None), getattr(task, "run_done", None)
        if started is None or done is None or not started.is_set():
            continue  # a queued task is terminated by cancel() without running
        if not done.wait(max(0.0, deadline - time.monotonic())):
            still_running.append(task)
    if still_running:
        QgsMessageLog.logMessage(
            tr(
                "{n} Roof Detector task(s) still stopping while the plugin unloads; their results will be discarded."
            ).format(n=len(still_running)),
            LOG_TAG,
            Qgis.Warning,
        )
    return still_running
