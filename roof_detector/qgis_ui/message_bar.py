"""Message bar items whose whole text is visible.

QGIS's own title + text item shows its text in a box one line high (a
``max-height: 1.75em`` text browser): a second line (the solar totals after
a detection, most error messages in a 520 px dialog) is cut and only reachable
through tiny scroll arrows. These items carry the same short bold title, the
text in a word-wrapped, selectable label (so a pip command can be copied) and
the caller's buttons; a text longer than :data:`MAX_SHOWN_CHARS` shows its
first part and a *Details* button opening the whole text in QGIS's message
viewer, as QGIS's own "Show more" does.
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Optional

from qgis.gui import QgsMessageBar, QgsMessageBarItem
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from . import tr

MAX_SHOWN_CHARS = 1000  # longer texts (a traceback, a pip log) get a Details button
TEXT_NAME = "roofDetectorMessageText"  # object name of the label holding the text
TITLE_PROPERTY, TEXT_PROPERTY = "roofDetectorTitle", "roofDetectorText"  # the whole title and text


def shown_text(text: str) -> str:
    """What the label shows: all of ``text``, or its first part (cut at a line or word) and an ellipsis."""
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    cut = text[:MAX_SHOWN_CHARS]
    at = max(cut.rfind("\n"), cut.rfind(" "))
    return cut[: at if at > MAX_SHOWN_CHARS // 2 else MAX_SHOWN_CHARS].rstrip() + " …"


def _text_label(text: str) -> QLabel:
    label = QLabel(shown_text(text))
    label.setObjectName(TEXT_NAME)
    label.setTextFormat(Qt.PlainText)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    label.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
    return label


def _details_button(title: str, text: str) -> QPushButton:
    button = QPushButton(tr("Details"))
    button.setObjectName("roofDetectorMessageDetails")

    def show() -> None:
        from qgis.gui import QgsMessageViewer

        viewer = QgsMessageViewer(button.window())
        viewer.setWindowTitle(title)
        viewer.setMessageAsPlainText(text)
        viewer.exec_()

    button.clicked.connect(lambda *_: show())
    return button


def message_item(
    title: str, text: str, level: int, duration: int = 0, buttons: Iterable[QWidget] = ()
) -> QgsMessageBarItem:
    """A message bar item: bold ``title``, the whole ``text`` wrapped, then ``buttons`` (0 = stays until closed)."""
    widget = QWidget()
    widget.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)  # the text takes the bar's width
    row = QHBoxLayout(widget)
    row.setContentsMargins(0, 0, 0, 0)
    heading = QLabel(f"<b>{html.escape(title)}:</b>" if title else "")
    heading.setAlignment(Qt.AlignLeft | Qt.AlignTop)
    row.addWidget(heading)
    row.addWidget(_text_label(text), 1)
    extra = list(buttons)
    if len(text) > MAX_SHOWN_CHARS:
        extra.insert(0, _details_button(title, text))
    for button in extra:
        row.addWidget(button, 0, Qt.AlignTop)
    item = QgsMessageBarItem(widget, level, duration)
    sip.transferto(widget, item)  # the item (Qt) owns it now: Python must not delete it when this returns
    item.setProperty(TITLE_PROPERTY, title)
    item.setProperty(TEXT_PROPERTY, text)
    return item


def push(
    bar: QgsMessageBar, title: str, text: str, level: int, duration: int = 0, buttons: Iterable[QWidget] = ()
) -> QgsMessageBarItem:
    """Show ``text`` in ``bar`` as a :func:`message_item`; return the item."""
    item = message_item(title, text, level, duration, buttons)
    bar.pushItem(item)
    fit_dialog_height(bar.window())
    return item


def fit_dialog_height(window: QWidget) -> None:
    """Grow ``window``, when it is a dialog, to the height its contents need at its width.

    A window's minimum size ignores word-wrapped labels (Qt's layouts leave height-for-width
    out of it), so a dialog's own wrapped notes get squeezed until they overlap their
    neighbours: when it opens, or when a message is pushed into its bar. QGIS's main window
    is left as it is.
    """
    layout = window.layout() if isinstance(window, QDialog) else None
    if layout is None:
        return
    layout.activate()
    need = layout.totalHeightForWidth(window.width()) if layout.hasHeightForWidth() else -1
    need = max(need, layout.totalMinimumSize().height())
    if need > window.height():
        window.resize(window.width(), need)


def item_text(item: Optional[Any]) -> str:
    """'title: text' of a bar item (ours or QGIS's own), '' for None."""
    if item is None:
        return ""
    title, text = item.property(TITLE_PROPERTY), item.property(TEXT_PROPERTY)
    if text is None:  # one of QGIS's own items
        title, text = item.title(), item.text()
    return f"{title}: {text}" if title else str(text)
