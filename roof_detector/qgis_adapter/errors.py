"""The one mapping from an exception to the line a QGIS user reads (tasks and Processing alike).

Engine errors (:class:`~roof_detector.core.errors.RoofDetectorError`, parameter
errors included) and the adapter's own (request, write) keep their message; a
missing module gets the install explanation; a GPU out of memory gets advice;
anything else is logged with its traceback and shown as one line.
"""

from __future__ import annotations

import traceback
from typing import Optional

from qgis.core import Qgis, QgsMessageLog

from . import LOG_TAG, tr

#: Advice for a GPU out of memory; ``{error}`` is the first line of the error.
OUT_OF_MEMORY_TEXT = tr(
    "The GPU ran out of memory. Choose CPU as device, close other programs using the GPU, "
    "or use a smaller batch size. ({error})"
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (torch.cuda.OutOfMemoryError or its message)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in text


def user_message(
    exc: BaseException, cancelled: bool = False, out_of_memory_text: str = OUT_OF_MEMORY_TEXT
) -> Optional[str]:
    """The one-line message for ``exc``; None when the user cancelled (nothing to report)."""
    from ..core.errors import Cancelled, RoofDetectorError
    from .output import WriteError
    from .request import RequestError

    if isinstance(exc, Cancelled) or cancelled:
        return None
    if isinstance(exc, ImportError):
        from .deps import dependency_problem

        return dependency_problem("detect") or tr("A module could not be imported: {error}").format(error=exc)
    if isinstance(exc, (RoofDetectorError, RequestError, WriteError)):
        return str(exc)
    if is_out_of_memory(exc):
        return out_of_memory_text.format(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    QgsMessageLog.logMessage(
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), LOG_TAG, Qgis.Critical
    )
    return tr("Unexpected error: {error} (details in the log panel, tab '{tag}')").format(
        error=str(exc) or type(exc).__name__, tag=LOG_TAG
    )
