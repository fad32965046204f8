"""Dialog widgets bound to saved settings: a list of (settings key, widget), loaded and saved one way.

Each dialog lists its bindings once instead of writing a ``setValue(settings.get(key))`` line
to load and a ``settings.set(key, value())`` line to save for every widget.
"""

from __future__ import annotations

from typing import Any, Iterable, Tuple

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

from . import settings
from .pickers import select_data

Binding = Tuple[str, QWidget]


def widget_value(widget: QWidget) -> Any:
    """What ``widget`` holds: a spin box's value, a button's check state, a line's text, a combo's data."""
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return widget.value()
    if isinstance(widget, QAbstractButton):
        return widget.isChecked()
    if isinstance(widget, QLineEdit):
        return widget.text()
    if isinstance(widget, QComboBox):
        return widget.currentData()
    if isinstance(widget, QgsFileWidget):
        return widget.filePath()
    raise TypeError(f"no settings binding for {type(widget).__name__}")


def set_widget_value(widget: QWidget, value: Any) -> None:
    """Show ``value`` in ``widget`` (a combo keeps its current item when no item holds ``value``)."""
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        widget.setValue(value)
    elif isinstance(widget, QAbstractButton):
        widget.setChecked(value)
    elif isinstance(widget, QLineEdit):
        widget.setText(value)
    elif isinstance(widget, QComboBox):
        select_data(widget, value)
    elif isinstance(widget, QgsFileWidget):
        widget.setFilePath(value)
    else:
        raise TypeError(f"no settings binding for {type(widget).__name__}")


def load_widgets(bindings: Iterable[Binding]) -> None:
    """Show each key's saved value (or its default) in its widget."""
    for key, widget in bindings:
        set_widget_value(widget, settings.get(key))


def save_widgets(bindings: Iterable[Binding]) -> None:
    """Save each widget's value under its key."""
    for key, widget in bindings:
        settings.set(key, widget_value(widget))
