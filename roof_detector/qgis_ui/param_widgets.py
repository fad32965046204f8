"""Spin boxes built from the parameter declarations of :mod:`roof_detector.core.params`.

Range, decimals, step, unit suffix and tooltip come from the one
declaration, so the dialogs accept exactly what the CLI and Processing accept.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from qgis.PyQt.QtWidgets import QDoubleSpinBox, QSpinBox

from ..core.params import GROUPS, Param
from . import tr

Spin = Union[QSpinBox, QDoubleSpinBox]


def configure(box: Spin, p: Param, scale: float = 1.0, suffix: str = "") -> Spin:
    """Set ``box``'s range (times ``scale``, e.g. 100 for a percentage), step, unit and tooltip from ``p``."""
    if isinstance(box, QDoubleSpinBox):
        box.setDecimals(p.decimals)
    box.setRange(_typed(box, p.low * scale), _typed(box, p.high * scale))
    box.setSingleStep(_typed(box, p.step * scale))
    unit = suffix or (f" {p.unit}" if p.unit else "")
    if unit:
        box.setSuffix(unit)
    box.setToolTip(tr(p.help[:1].upper() + p.help[1:]))
    return box


def declared_spin(
    parent: Any, group: str, name: str, scale: float = 1.0, suffix: str = "", integer: Optional[bool] = None
) -> Spin:
    """A new spin box for the declared parameter ``group.name`` (a QSpinBox for whole numbers)."""
    p = GROUPS[group][name]
    integer = p.kind is int if integer is None else integer
    return configure(QSpinBox(parent) if integer else QDoubleSpinBox(parent), p, scale, suffix)


def _typed(box: Spin, value: float) -> Union[int, float]:
    return int(round(value)) if isinstance(box, QSpinBox) else float(value)
