"""The "Training" box of the Fine-tune dialog: a form built from the FINETUNE parameter declarations.

Spin box ranges, steps, units and tooltips come from :mod:`roof_detector.core.params`
(through :func:`.param_widgets.declared_spin`); the values are saved between sessions
and handed to the engine as :class:`~roof_detector.core.training.finetune.FinetuneOptions` keywords.
"""

from __future__ import annotations

from typing import Any, Dict, List

from qgis.PyQt.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QLabel, QWidget

from ..core.params import FINETUNE
from . import settings, tr
from .param_widgets import declared_spin
from .pickers import device_combo, restore_device
from .widget_settings import load_widgets, save_widgets


class TrainingBox(QGroupBox):
    """Epochs, learning rate, batch size, validation share, patience, samples, time budget, frozen encoder, device."""

    def __init__(self, parent: QWidget):
        super().__init__(tr("Training"), parent)
        self.epochs_spin = declared_spin(self, "finetune", "epochs")
        self.lr_spin = declared_spin(self, "finetune", "lr")
        self.batch_spin = declared_spin(self, "finetune", "batch_size")
        self.val_spin = declared_spin(self, "finetune", "val_fraction", scale=100.0, suffix=" %", integer=True)
        self.patience_spin = declared_spin(self, "finetune", "patience")
        self.samples_spin = declared_spin(self, "finetune", "samples_per_epoch")
        self.samples_spin.setMinimum(0)  # 0 shows "Automatic" (the declaration's None)
        self.samples_spin.setSpecialValueText(tr("Automatic"))
        self.samples_spin.setToolTip(
            tr("Training crops per epoch; Automatic = {what}").format(what=tr(FINETUNE["samples_per_epoch"].none_means))
        )
        self.budget_spin = declared_spin(self, "finetune", "max_minutes")
        self.budget_spin.setSpecialValueText(tr("None"))  # 0: no time budget (as the declaration's None)
        freeze = FINETUNE["freeze_encoder"]
        self.freeze_check = QCheckBox(tr(freeze.label), self)
        self.freeze_check.setToolTip(tr(freeze.help[:1].upper() + freeze.help[1:]))
        self.budget_info = QLabel(self)
        self.budget_info.setWordWrap(True)
        self.device_combo, devices = device_combo(self)
        self.device_info = QLabel(devices["text"], self)
        self.device_combo.setToolTip(devices["text"])
        self._lay_out()
        for spin in (self.epochs_spin, self.batch_spin, self.samples_spin, self.budget_spin):
            spin.valueChanged.connect(self.update_budget)

    def _lay_out(self) -> None:
        grid = QGridLayout(self)
        cells = (
            (tr("Epochs"), self.epochs_spin),
            (tr("Learning rate"), self.lr_spin),
            (tr("Batch size"), self.batch_spin),
            (tr("Validation"), self.val_spin),
            (tr("Patience"), self.patience_spin),
            (tr("Samples/epoch"), self.samples_spin),
            (tr("Time budget"), self.budget_spin),
            (tr("Device"), self.device_combo),
        )
        for i, (label, widget) in enumerate(cells):
            grid.addWidget(QLabel(label, self), i // 2, (i % 2) * 2)
            grid.addWidget(widget, i // 2, (i % 2) * 2 + 1)
        grid.addWidget(self.freeze_check, 4, 0, 1, 4)
        grid.addWidget(self.device_info, 5, 0, 1, 4)
        grid.addWidget(self.budget_info, 6, 0, 1, 4)

    def _bindings(self):
        return (
            ("ft_epochs", self.epochs_spin),
            ("ft_lr", self.lr_spin),
            ("ft_batch_size", self.batch_spin),
            ("ft_val_percent", self.val_spin),
            ("ft_patience", self.patience_spin),
            ("ft_samples_per_epoch", self.samples_spin),
            ("ft_max_minutes", self.budget_spin),
            ("ft_freeze_encoder", self.freeze_check),
        )

    def inputs(self) -> List[QWidget]:
        """The widgets a running task locks."""
        return [widget for _, widget in self._bindings()] + [self.device_combo]

    def load_settings(self) -> None:
        """Show the last run's choices (or the declared defaults)."""
        load_widgets(self._bindings())
        self.update_budget()
        restore_device(self.device_combo, settings.get("ft_device"))

    def save_settings(self) -> None:
        save_widgets(self._bindings() + (("ft_device", self.device_combo),))

    def options(self) -> Dict[str, Any]:
        """The choices as the engine's keyword arguments (0 = automatic / no budget: None)."""
        return dict(
            epochs=self.epochs_spin.value(),
            lr=self.lr_spin.value(),
            batch_size=self.batch_spin.value(),
            val_fraction=self.val_spin.value() / 100.0,
            patience=self.patience_spin.value(),
            samples_per_epoch=self.samples_spin.value() or None,
            max_minutes=self.budget_spin.value() or None,
            freeze_encoder=self.freeze_check.isChecked(),
            device=self.device_combo.currentData(),
        )

    def update_budget(self, *_: Any) -> None:
        """Say, before starting, how long training may take: the budget and the per-epoch cost."""
        from .present import budget_text

        self.budget_info.setText(
            budget_text(self.budget_spin.value(), self.samples_spin.value(), self.epochs_spin.value())
        )
