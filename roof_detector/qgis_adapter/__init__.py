"""The QGIS adapter: what every QGIS front end (dialogs, Processing) shares, with no widget.

* :mod:`.request` -- checks turning layers, extents and selections into plain requests;
* :mod:`.task` -- :class:`~.task.GuardedRun`, the one task lifecycle, and the detection task;
* :mod:`.errors` -- the one mapper from an engine error to the line a user reads;
* :mod:`.finetune_task`, :mod:`.lifecycle` -- fine-tuning task, stopping tasks on unload;
* :mod:`.paths` -- plugin files and model resolution; :mod:`.deps` -- the dependency check;
* :mod:`.output` -- buildings as QGIS fields, features and layers (the output sink).

Nothing here imports torch (or the engine) at module level, so the plugin
loads in a QGIS whose Python lacks torch.
"""

from qgis.PyQt.QtCore import QCoreApplication

LOG_TAG = "Roof Detector"


def tr(message: str) -> str:
    """Translate ``message`` in the plugin's context (QCoreApplication.translate)."""
    return QCoreApplication.translate("RoofDetector", message)
