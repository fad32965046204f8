"""What the Fine-tune dialog shows of a finished run: the before/after table and the run's summary lines."""

from __future__ import annotations

from typing import Dict, Optional

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QGroupBox, QHeaderView, QLabel, QSizePolicy, QTableWidget, QTableWidgetItem, QVBoxLayout

from . import tr


def epochs_text(n: int) -> str:
    """'1 epoch', '12 epochs'."""
    return tr("1 epoch") if n == 1 else tr("{n} epochs").format(n=n)


def stop_reason(stopped: str) -> str:
    """Why training ended, in words (the engine's ``TrainResult.stopped``)."""
    return {
        "early-stopping": tr("stopped early: validation IoU no longer improved"),
        "max-epochs": tr("all epochs run"),
        "cancelled": tr("stopped by you"),
        "time-budget": tr("time budget reached"),
    }.get(stopped, stopped)


class ComparisonBox(QGroupBox):
    """Validation IoU and accuracy of the base model and the fine-tuned one, with the change."""

    def __init__(self, parent: Optional[QGroupBox] = None):
        super().__init__(tr("Validation before / after"), parent)
        layout = QVBoxLayout(self)
        self.table = QTableWidget(2, 3, self)
        self.table.setHorizontalHeaderLabels([tr("Base model"), tr("Fine-tuned"), tr("Change")])
        self.table.setVerticalHeaderLabels([tr("IoU"), tr("Accuracy")])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setFixedHeight(
            self.table.horizontalHeader().sizeHint().height()
            + 2 * self.table.verticalHeader().defaultSectionSize()
            + 2 * self.table.frameWidth()
        )
        self.info = QLabel(self)
        self.info.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        layout.addWidget(self.table)
        layout.addWidget(self.info)
        self.setVisible(False)

    def show_figures(self, before: Optional[Dict[str, float]], after: Optional[Dict[str, float]]) -> None:
        """Fill the table and show the box."""
        for row, key in enumerate(("iou", "accuracy")):
            b, a = (before or {}).get(key), (after or {}).get(key)
            cells = [
                f"{b:.3f}" if b is not None else "-",
                f"{a:.3f}" if a is not None else "-",
                f"{a - b:+.3f}" if a is not None and b is not None else "-",
            ]
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.setVisible(True)
