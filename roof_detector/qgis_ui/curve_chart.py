"""A small live chart of training curves: loss, IoU and accuracy per epoch, train and validation.

Drawn with QPainter (no matplotlib Qt backend to match with QGIS's Qt). It
only stores the rows it is given and repaints; rows arrive on the main
thread from the fine-tune task's per-epoch signal.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from qgis.PyQt.QtCore import QPointF, QRectF, QSize, Qt
from qgis.PyQt.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qgis.PyQt.QtWidgets import QSizePolicy, QWidget

from . import tr

# (metric key, panel title); each panel draws train_<key> and val_<key>
PANELS: Tuple[Tuple[str, str], ...] = (("loss", "Loss"), ("iou", "IoU"), ("accuracy", "Accuracy"))
TRAIN_COLOR = QColor(31, 119, 180)
VAL_COLOR = QColor(230, 110, 20)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def nice_range(values: Sequence[float], unit_interval: bool) -> Tuple[float, float]:
    """The y range of a panel: [0, 1]-bounded metrics zoom on their values, loss starts at 0."""
    vals = [v for v in values if _finite(v)]
    if not vals:
        return (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    if unit_interval:
        pad = max(0.02, (hi - lo) * 0.1)
        return (max(0.0, lo - pad), min(1.0, hi + pad)) if hi - lo > 1e-9 or lo > 0 else (0.0, 1.0)
    return (0.0, hi * 1.1 if hi > 0 else 1.0)


class CurveChart(QWidget):
    """Three stacked panels (loss, IoU, accuracy) of train (blue) and validation (orange) per epoch."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.rows: List[Dict[str, Any]] = []
        self.best_epoch: Optional[int] = None
        self.setMinimumSize(320, 360)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setToolTip(tr("Training curves per epoch: train (blue) and validation (orange)"))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(420, 420)

    # -- data ----------------------------------------------------------------
    def clear(self) -> None:
        self.rows = []
        self.best_epoch = None
        self.update()

    def add_row(self, row: Dict[str, Any], improved: bool = False) -> None:
        """Add one epoch's figures (keys epoch, train_loss, val_loss, train_iou, ...)."""
        self.rows.append(dict(row))
        if improved:
            self.best_epoch = int(row.get("epoch", len(self.rows)))
        self.update()

    def series(self, key: str) -> List[Tuple[float, float]]:
        """(epoch, value) points of one curve, e.g. ``series('val_iou')``; non-finite values left out."""
        return [(float(r.get("epoch", i + 1)), float(r[key])) for i, r in enumerate(self.rows) if _finite(r.get(key))]

    # -- drawing -------------------------------------------------------------
    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.Antialiasing)
            painter.fillRect(self.rect(), self.palette().base())
            legend_h = 18
            self._legend(painter, QRectF(0, 0, self.width(), legend_h))
            h = (self.height() - legend_h) / len(PANELS)
            for i, (key, title) in enumerate(PANELS):
                self._panel(painter, QRectF(0, legend_h + i * h, self.width(), h), key, tr(title))
        finally:
            painter.end()

    def _legend(self, p: QPainter, rect: QRectF) -> None:
        x = rect.left() + 48
        metrics = p.fontMetrics()
        for color, label in ((TRAIN_COLOR, tr("train")), (VAL_COLOR, tr("validation"))):
            p.setPen(QPen(color, 2))
            p.drawLine(QPointF(x, rect.center().y()), QPointF(x + 18, rect.center().y()))
            p.setPen(self.palette().text().color())
            width = metrics.horizontalAdvance(label) + 4
            p.drawText(QRectF(x + 22, rect.top(), width, rect.height()), Qt.AlignVCenter | Qt.AlignLeft, label)
            x += 22 + width + 16
        if self.best_epoch is not None:
            p.drawText(
                QRectF(x, rect.top(), rect.width() - x - 4, rect.height()),
                Qt.AlignVCenter | Qt.AlignLeft,
                tr("best epoch: {n}").format(n=self.best_epoch),
            )

    def _panel(self, p: QPainter, rect: QRectF, key: str, title: str) -> None:
        text_color = self.palette().text().color()
        plot = QRectF(rect.left() + 46, rect.top() + 16, rect.width() - 58, rect.height() - 34)
        if plot.width() < 10 or plot.height() < 10:
            return
        train, val = self.series("train_" + key), self.series("val_" + key)
        lo, hi = nice_range([v for _, v in train + val], unit_interval=key != "loss")
        n = max([int(e) for e, _ in train + val] or [1])
        x_max = max(2, n)

        def to_point(epoch: float, value: float) -> QPointF:
            x = plot.left() + (epoch - 1) / (x_max - 1) * plot.width()
            y = plot.bottom() - (value - lo) / ((hi - lo) or 1.0) * plot.height()
            return QPointF(x, y)

        small = QFont(self.font())
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.8))
        p.setFont(small)
        p.setPen(text_color)
        p.drawText(QRectF(plot.left(), rect.top(), plot.width(), 16), Qt.AlignCenter, title)
        grid = QPen(QColor(128, 128, 128, 70), 1)
        for i in range(5):
            value = lo + (hi - lo) * i / 4
            y = plot.bottom() - plot.height() * i / 4
            p.setPen(grid)
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(text_color)
            p.drawText(QRectF(rect.left(), y - 8, 42, 16), Qt.AlignRight | Qt.AlignVCenter, f"{value:.2f}")
        step = max(1, int(math.ceil(x_max / 8)))
        for epoch in range(1, x_max + 1, step):
            pt = to_point(epoch, lo)
            p.drawText(QRectF(pt.x() - 15, plot.bottom() + 2, 30, 14), Qt.AlignCenter, str(epoch))
        p.setPen(QPen(text_color, 1))
        p.drawRect(plot)
        if self.best_epoch is not None:
            p.setPen(QPen(QColor(0, 150, 0, 140), 1, Qt.DashLine))
            bx = to_point(self.best_epoch, lo).x()
            p.drawLine(QPointF(bx, plot.top()), QPointF(bx, plot.bottom()))
        for points, color in ((train, TRAIN_COLOR), (val, VAL_COLOR)):
            if not points:
                continue
            path = QPainterPath(to_point(*points[0]))
            for e, v in points[1:]:
                path.lineTo(to_point(e, v))
            p.setPen(QPen(color, 2))
            p.setBrush(Qt.NoBrush)
            p.drawPath(path)
            p.setBrush(color)
            for e, v in points:
                p.drawEllipse(to_point(e, v), 2.5, 2.5)
            p.setBrush(Qt.NoBrush)
