"""The Detect dialog's collapsible "Outlines and rooftop solar" group.

Outline regularisation and the solar sizing parameters, with ranges from
:mod:`roof_detector.core.params`, remembered through :mod:`.settings` (the
Rooftop Report sizes layers without solar fields with the same choices).
"""

from __future__ import annotations

from typing import Any, Dict

from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtWidgets import QCheckBox, QGridLayout, QHBoxLayout, QLabel, QWidget

from . import settings, tr
from .param_widgets import declared_spin

#: settings key -> attribute of the spin box holding it
SPIN_SETTINGS = (
    ("regularize_tolerance_m", "tolerance_spin"),
    ("solar_setback_m", "setback_spin"),
    ("solar_usable_fraction", "usable_spin"),
    ("solar_panel_area_m2", "panel_area_spin"),
    ("solar_panel_wp", "panel_wp_spin"),
    ("solar_yield", "yield_spin"),
)
WIDGETS = ("regularize_check", "yield_auto_check") + tuple(name for _, name in SPIN_SETTINGS)


class SolarBox(QgsCollapsibleGroupBox):
    """Regularise + tolerance, setback, usable fraction, panel area and power, specific yield."""

    def __init__(self, parent: QWidget):
        super().__init__(tr("Outlines and rooftop solar"), parent)
        self.setObjectName("roofDetectorSolarBox")
        self.setSaveCollapsedState(False)  # remembered in our own settings instead
        self.regularize_check = QCheckBox(tr("Regularise"), self)
        self.regularize_check.setToolTip(
            tr(
                "Square the traced outlines (right angles, 45° diagonals); shapes "
                "that follow no two directions (round tanks, curved roofs) stay "
                "as traced."
            )
        )
        self.tolerance_spin = declared_spin(self, "outlines", "regularize_tolerance_m")
        self.setback_spin = declared_spin(self, "solar", "setback_m")
        self.usable_spin = declared_spin(self, "solar", "usable_fraction")
        self.panel_area_spin = declared_spin(self, "solar", "panel_area_m2")
        self.panel_wp_spin = declared_spin(self, "solar", "panel_wp", integer=False)
        self.yield_auto_check = QCheckBox(tr("From latitude"), self)
        self.yield_auto_check.setToolTip(
            tr(
                "Estimate the yield from each building's latitude: a coarse "
                "estimate (about ±25 %); enter your site's value from PVGIS or "
                "the Global Solar Atlas when it matters."
            )
        )
        self.yield_spin = declared_spin(self, "solar", "specific_yield_kwh_per_kwp", integer=False)
        self._lay_out()
        for check in (self.regularize_check, self.yield_auto_check):
            check.toggled.connect(self.update_enabled)

    def _lay_out(self) -> None:
        grid = QGridLayout(self)
        rows = (
            (tr("Outlines"), self.regularize_check, tr("Tolerance"), self.tolerance_spin),
            (tr("Setback"), self.setback_spin, tr("Usable fraction"), self.usable_spin),
            (tr("Panel area"), self.panel_area_spin, tr("Panel power"), self.panel_wp_spin),
        )
        for r, (label, left, label2, right) in enumerate(rows):
            grid.addWidget(QLabel(label, self), r, 0)
            grid.addWidget(left, r, 1)
            grid.addWidget(QLabel(label2, self), r, 2)
            grid.addWidget(right, r, 3)
        grid.itemAtPosition(1, 0).widget().setToolTip(self.setback_spin.toolTip())
        yield_row = QHBoxLayout()
        yield_row.addWidget(self.yield_auto_check)
        yield_row.addWidget(self.yield_spin, 1)
        grid.addWidget(QLabel(tr("Specific yield"), self), len(rows), 0)
        grid.addLayout(yield_row, len(rows), 1, 1, 3)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

    def update_enabled(self, *_: Any) -> None:
        """The tolerance only when regularising; the yield only when not estimated from latitude."""
        self.tolerance_spin.setEnabled(self.regularize_check.isChecked())
        self.yield_spin.setEnabled(not self.yield_auto_check.isChecked())

    def load(self) -> None:
        """The remembered choices (or the declared defaults)."""
        self.regularize_check.setChecked(settings.get("regularize"))
        self.yield_auto_check.setChecked(settings.get("solar_yield_from_latitude"))
        for key, name in SPIN_SETTINGS:
            getattr(self, name).setValue(settings.get(key))
        self.setCollapsed(settings.get("solar_group_collapsed"))
        self.update_enabled()

    def save(self) -> None:
        """Remember the choices."""
        settings.set("regularize", self.regularize_check.isChecked())
        settings.set("solar_yield_from_latitude", self.yield_auto_check.isChecked())
        for key, name in SPIN_SETTINGS:
            settings.set(key, getattr(self, name).value())
        settings.set("solar_group_collapsed", self.isCollapsed())

    def outline_kwargs(self) -> Dict[str, Any]:
        """Regularisation as ``DetectOptions`` keyword arguments."""
        return dict(regularize=self.regularize_check.isChecked(), regularize_tolerance_m=self.tolerance_spin.value())

    def solar_kwargs(self) -> Dict[str, Any]:
        """The solar parameters as keyword arguments of ``core.solar.SolarParams``."""
        return dict(
            setback_m=self.setback_spin.value(),
            usable_fraction=self.usable_spin.value(),
            panel_area_m2=self.panel_area_spin.value(),
            panel_wp=self.panel_wp_spin.value(),
            specific_yield_kwh_per_kwp=None if self.yield_auto_check.isChecked() else self.yield_spin.value(),
        )
