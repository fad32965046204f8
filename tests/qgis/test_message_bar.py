"""Message bar texts are shown whole: the success message's solar line, errors, refusals in the dialog (issue 17).

QGIS's own title + text item shows one line (its text box is 1.75em high); the plugin's items put the
text in a word-wrapped label, which these tests lay out at a realistic width and measure.
"""

import contextlib

import pytest

from tests.qgis.conftest import make_request, wait_for

pytestmark = pytest.mark.qgis


def _label(item):
    from qgis.PyQt.QtWidgets import QLabel

    from roof_detector.qgis_ui.message_bar import TEXT_NAME

    return item.findChild(QLabel, TEXT_NAME)


@contextlib.contextmanager
def laid_out(bar, width):
    """``bar`` above a stretching "map" in a ``width`` px window, as QGIS lays out its message bar."""
    from qgis.PyQt.QtWidgets import QApplication, QVBoxLayout, QWidget

    window = QWidget()
    layout = QVBoxLayout(window)
    layout.addWidget(bar)
    layout.addWidget(QWidget(), 1)
    window.resize(width, 900)
    window.show()
    try:
        for _ in range(5):
            QApplication.processEvents()
        yield window
    finally:
        window.hide()
        layout.removeWidget(bar)
        bar.setParent(None)  # back to pytest-qgis, which owns the iface's bar
        window.deleteLater()


def _fully_visible(label):
    """Every line of the label fits: it has the height its wrapped text needs, and no text is elided."""
    return label.isVisible() and label.wordWrap() and label.height() >= label.heightForWidth(label.width())


def test_the_success_message_shows_its_solar_line(plugin, project, ortho_path, model_path, qgis_app, tmp_path):
    target = str(tmp_path / "out.gpkg")
    task = plugin.start(make_request(ortho_path, model_path, output_mode="gpkg", gpkg_path=target, gpkg_layer="b"))
    wait_for(task, qgis_app)
    bar = plugin.iface.messageBar()
    item = bar.currentItem()
    label = _label(item)
    lines = label.text().split("\n")
    assert lines[0].startswith("4 buildings, total roof area") and lines[0].endswith(" s.")
    assert lines[1].startswith("Rooftop solar: ") and "kWp" in lines[1] and lines[1].endswith("kWh/yr.")
    assert lines[2] == f"Saved to {target}."
    with laid_out(bar, 900):
        assert _fully_visible(label) and label.height() >= 3 * label.fontMetrics().lineSpacing()
    assert any("kWh/yr" in m for m in bar.get_messages(3))  # the same whole text, as recorded


def test_a_long_error_is_shown_whole_and_a_very_long_one_behind_details(qgis_iface):
    from unittest import mock

    from qgis.core import Qgis
    from qgis.PyQt.QtWidgets import QPushButton

    from roof_detector.qgis_adapter import deps
    from roof_detector.qgis_ui.message_bar import MAX_SHOWN_CHARS, item_text
    from roof_detector.qgis_ui.present import notify

    bar = qgis_iface.messageBar()
    with mock.patch.object(deps, "missing_modules", return_value=["onnxruntime", "rasterio"]):
        problem = deps.dependency_problem("detect")  # several lines with a pip command
    notify(qgis_iface, problem, Qgis.Critical)
    item = bar.currentItem()
    assert _label(item).text() == problem and item_text(item) == "Roof Detector: " + problem
    assert not [b for b in item.findChildren(QPushButton) if b.text() == "Details"]
    with laid_out(bar, 700):
        label = _label(item)
        assert _fully_visible(label) and label.height() > 4 * label.fontMetrics().lineSpacing()

    log = "pip failed:\n" + "\n".join(f"  line {n}: could not build wheel for shapely" for n in range(60))
    notify(qgis_iface, log, Qgis.Critical)
    item = bar.currentItem()
    shown = _label(item).text()
    assert shown.endswith("…") and len(shown) <= MAX_SHOWN_CHARS + 2 and log.startswith(shown[:-2])
    details = [b for b in item.findChildren(QPushButton) if b.text() == "Details"]
    assert len(details) == 1
    with mock.patch("qgis.gui.QgsMessageViewer.exec_") as viewer_shown:
        details[0].click()
    assert viewer_shown.called
    assert item_text(item).endswith("line 59: could not build wheel for shapely")  # the whole text is kept


def test_a_refusal_in_the_dialog_is_shown_whole(qgis_iface, project, model_path):
    from roof_detector.qgis_ui.dialog import DetectDialog

    dialog = DetectDialog(qgis_iface)
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("file"))
    dialog.model_file.setFilePath(model_path)
    dialog.resize(560, dialog.sizeHint().height())
    dialog.show()
    dialog.accept()  # no raster layer: a two-sentence refusal, wider than the dialog
    label = _label(dialog.bar.currentItem())
    assert label.text().startswith("No raster layer chosen.") and label.text().endswith("choose it in the dialog.")
    from qgis.PyQt.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()
    assert label.fontMetrics().horizontalAdvance(label.text()) > label.width()  # it needs more than one line
    assert _fully_visible(label)


def test_the_fine_tune_dialogs_messages_are_shown_whole(qgis_iface):
    from qgis.core import Qgis
    from qgis.PyQt.QtWidgets import QApplication

    from roof_detector.qgis_ui.finetune_dialog import FinetuneDialog

    dialog = FinetuneDialog(qgis_iface)
    dialog.resize(520, dialog.sizeHint().height())
    dialog.show()
    text = (
        "Fine-tuning stopped: the labelled area holds only 3 model tiles of buildings, too few to keep "
        "two blocks for validation. Draw labels over a larger part of the raster, or choose a raster "
        "with more buildings under the labels."
    )
    dialog.message(text, Qgis.Warning, "Fine-tuning")
    label = _label(dialog.bar.currentItem())
    assert label is not None and label.text() == text
    for _ in range(3):
        QApplication.processEvents()
    assert label.fontMetrics().horizontalAdvance(text) > label.width()  # more than one line at this width
    assert _fully_visible(label)
    # the dialog grew for the message: its own wrapped notes are not squeezed into their neighbours
    from qgis.PyQt.QtWidgets import QLabel

    notes = [w for w in dialog.findChildren(QLabel) if w.wordWrap() and w.isVisible() and w.text()]
    assert len(notes) >= 3
    squeezed = [n.text()[:40] for n in notes if not _fully_visible(n)]
    assert squeezed == []
    dialog.close()
