"""Widgets bound to saved settings (qgis_ui/widget_settings): one load and one save for every dialog.

The ``clean_settings`` fixture (tests/qgis/conftest.py) clears the stored choices around each test.
"""

import pytest

pytestmark = pytest.mark.qgis


def test_each_kind_of_widget_keeps_its_value(qgis_app):
    from qgis.gui import QgsFileWidget
    from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QLineEdit, QSpinBox, QWidget

    from roof_detector.qgis_ui.widget_settings import load_widgets, save_widgets

    def widgets():
        combo = QComboBox()
        for data in ("labels", "layer", "selection"):
            combo.addItem(data, data)
        spin = QSpinBox()
        spin.setRange(1, 500)
        return [
            ("ft_epochs", spin),
            ("threshold_override", QCheckBox()),
            ("gpkg_layer", QLineEdit()),
            ("ft_area_mode", combo),
            ("model_file", QgsFileWidget()),
        ]

    saved = widgets()
    saved[0][1].setValue(7)
    saved[1][1].setChecked(True)
    saved[2][1].setText("roofs")
    saved[3][1].setCurrentIndex(2)
    saved[4][1].setFilePath("/tmp/model.pt")
    save_widgets(saved)
    loaded = widgets()
    load_widgets(loaded)
    assert loaded[0][1].value() == 7
    assert loaded[1][1].isChecked()
    assert loaded[2][1].text() == "roofs"
    assert loaded[3][1].currentData() == "selection"
    assert loaded[4][1].filePath() == "/tmp/model.pt"
    with pytest.raises(TypeError, match="QWidget"):
        save_widgets([("gpkg_layer", QWidget())])


def test_the_fine_tune_training_choices_come_back_in_the_next_dialog(qgis_iface, tmp_path):
    from roof_detector.qgis_ui.finetune_dialog import FinetuneDialog

    first = FinetuneDialog(qgis_iface, library_dir=str(tmp_path))
    box = first.training
    box.epochs_spin.setValue(12)
    box.lr_spin.setValue(0.003)
    box.val_spin.setValue(30)
    box.samples_spin.setValue(0)  # "Automatic"
    box.device_combo.setCurrentIndex(box.device_combo.findData("cpu"))
    box.save_settings()
    again = FinetuneDialog(qgis_iface, library_dir=str(tmp_path))
    options = again.training.options()
    assert options == box.options()
    assert options["epochs"] == 12 and options["lr"] == pytest.approx(0.003)
    assert options["val_fraction"] == pytest.approx(0.3)
    assert options["samples_per_epoch"] is None and options["device"] == "cpu"
