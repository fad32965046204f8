"""Loading TorchScript files without torch 2.x's deprecation warnings (torch imported on call only)."""

from __future__ import annotations

from typing import Any


def quiet_deprecations():
    """A context that hides torch 2.x's TorchScript deprecation warnings.

    torch warns on every ``torch.jit.load`` / ``freeze`` / ``optimize_for_inference``
    that TorchScript is deprecated; our model files are TorchScript by design
    (the format of record), so the warning says nothing a user can act on and
    only filled QGIS's log panel on every detection.
    """
    import warnings

    ctx = warnings.catch_warnings()
    ctx.__enter__()
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*", category=category)
    return ctx


def jit_load(path: str) -> Any:
    """``torch.jit.load`` on the CPU, without its deprecation warning (see :func:`quiet_deprecations`)."""
    import torch

    ctx = quiet_deprecations()
    try:
        return torch.jit.load(path, map_location="cpu")
    finally:
        ctx.__exit__(None, None, None)
