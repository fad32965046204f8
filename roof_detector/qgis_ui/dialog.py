"""The "Detect Buildings" dialog: choices in, a :class:`DetectRequest` out.

Built in code (no .ui file) so it stays testable and translatable. Non-modal:
the map stays usable while it is open. Its parts live beside it: the
orthophoto and area rows (:mod:`.area_rows`), the output group
(:mod:`.output_box`), the outline and solar group (:mod:`.solar_box`). Bad
choices are refused in the dialog's own message bar (whole text,
:mod:`.message_bar`); the last choices are remembered through :mod:`.settings`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.core import Qgis, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMessageBar
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from ..core.params import DETECT, ParameterError
from ..qgis_adapter.paths import library_models, model_library_dir
from ..qgis_adapter.request import DetectRequest, RequestError, plan_run, raster_file_path, raster_input
from . import settings, tr
from .widget_settings import load_widgets, save_widgets
from .area_rows import AREA_MODES, AreaRows
from .message_bar import push
from .output_box import OutputBox
from .param_widgets import declared_spin
from .pickers import (
    add_model_choices,
    chosen_model_path,
    choice_combo,
    device_combo,
    model_summary,
    restore_device,
    select_data,
)
from .solar_box import WIDGETS as SOLAR_WIDGETS, SolarBox

__all__ = ["AREA_MODES", "DetectDialog", "open_help"]
RUN_ON = (("local", "This computer"), ("server", "Roof Detector server"))
AREA_WIDGETS = ("raster_combo", "browse_button", "area_combo", "extent_widget", "aoi_layer_combo")
OUTPUT_WIDGETS = ("memory_radio", "gpkg_radio", "gpkg_file", "gpkg_layer_edit")


class DetectDialog(QDialog):
    """Dialog collecting the detection choices; ``request`` is set when accepted.

    Non-modal: the map stays usable (pan to the area, draw an extent); the plugin
    keeps one and starts the task when it is accepted (its ``finished`` signal).
    """

    def __init__(self, iface: Any = None, parent: Optional[QWidget] = None, local_problem: Optional[str] = None):
        super().__init__(parent)
        self.iface = iface
        self.local_problem = local_problem  # why this computer cannot detect (missing packages), if it cannot
        self.request: Optional[DetectRequest] = None
        self.setWindowTitle(tr("Detect Buildings"))
        self.setMinimumWidth(520)
        self.setModal(False)
        self._build()
        self._load_settings()
        self._update_enabled()

    # -- construction ------------------------------------------------------
    def _build(self) -> None:
        self.bar = QgsMessageBar(self)
        form = QFormLayout()
        self._build_run_on(form)
        self.area = AreaRows(self, self._canvas())
        self.area.add_rows(form)
        self.estimate_label = QLabel(self)
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setObjectName("roofDetectorEstimate")
        form.addRow(tr("Work"), self.estimate_label)
        self._build_model_rows(form)
        self._build_detection_rows(form)
        self.output_box = OutputBox(self)
        self.solar_box = SolarBox(self)
        for box, names in (
            (self.area, AREA_WIDGETS),
            (self.output_box, OUTPUT_WIDGETS),
            (self.solar_box, SOLAR_WIDGETS),
        ):
            for name in names:  # the widgets, as attributes of the dialog too (tests, screenshots)
                setattr(self, name, getattr(box, name))
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel | QDialogButtonBox.Help, self)
        self.buttons.button(QDialogButtonBox.Ok).setText(tr("Detect"))
        self.buttons.helpRequested.connect(open_help)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for part in (self.bar, form, self.solar_box, self.output_box, self.buttons):
            (layout.addLayout if isinstance(part, QFormLayout) else layout.addWidget)(part)
        self._connect_signals()

    def _canvas(self) -> Any:
        return self.iface.mapCanvas() if self.iface is not None and hasattr(self.iface, "mapCanvas") else None

    def _build_model_rows(self, form: QFormLayout) -> None:
        self.model_combo = QComboBox(self)
        self.model_file = QgsFileWidget(self)
        self.model_file.setFilter(tr("TorchScript model (*.pt)"))
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)
        self._fill_models()
        form.addRow(tr("Model"), self.model_combo)
        form.addRow(tr("Model file"), self.model_file)
        form.addRow("", self.model_info)

    def _build_detection_rows(self, form: QFormLayout) -> None:
        """Threshold, minimum area, touching roofs and device: ranges from core.params."""
        self.threshold_check = QCheckBox(tr("Custom threshold"), self)
        self.threshold_spin = declared_spin(self, "detect", "threshold")
        row = QHBoxLayout()
        row.addWidget(self.threshold_check)
        row.addWidget(self.threshold_spin)
        form.addRow(tr("Threshold"), row)
        self.min_area_spin = declared_spin(self, "detect", "min_area_m2")
        form.addRow(tr("Minimum building area"), self.min_area_spin)
        self.separate_check = QCheckBox(tr("Separate touching buildings"), self)
        self.separate_check.setToolTip(
            tr(
                "Split roofs that touch along the probability valley between their "
                "confident cores (or, with a model that has border and contact "
                "outputs, along the seam it marks): one polygon per roof, not per block"
            )
        )
        form.addRow("", self.separate_check)
        self.tta_check = QCheckBox(tr("Test-time augmentation (slower)"), self)
        tta_help = DETECT["tta"].help
        self.tta_check.setToolTip(tr(tta_help[:1].upper() + tta_help[1:]))
        form.addRow("", self.tta_check)

        self.device_combo, devices = device_combo(self)
        self.device_info = QLabel(self)
        self.device_info.setText(devices["text"])
        self.device_info.setWordWrap(True)
        form.addRow(tr("Device"), self.device_combo)
        form.addRow("", self.device_info)

    def _connect_signals(self) -> None:
        for signal in (
            self.model_combo.currentIndexChanged,
            self.threshold_check.toggled,
            self.device_combo.currentIndexChanged,
        ):
            signal.connect(self._update_enabled)
        self.model_file.fileChanged.connect(self._update_enabled)
        # The estimate follows the layer, the area (the map while its extent is chosen) and the model.
        self._selection_layer = None
        self.area.changed.connect(self.update_estimate)
        self.raster_combo.layerChanged.connect(self.output_box.set_raster)
        self.aoi_layer_combo.layerChanged.connect(self._watch_selection)
        self.browse_button.clicked.connect(self._browse_raster)

    def _build_run_on(self, form: QFormLayout) -> None:
        """Run on: this computer, or a Roof Detector server (its URL, and a token kept in QGIS's auth database)."""
        self.run_on_combo = choice_combo(self, RUN_ON)
        self.run_on_combo.setObjectName("roofDetectorRunOn")
        if self.local_problem:
            item = self.run_on_combo.model().item(0)
            item.setEnabled(False)
            item.setToolTip(self.local_problem)
        self.server_url_edit = QLineEdit(self)
        self.server_url_edit.setPlaceholderText("http://127.0.0.1:8000")
        self.server_url_edit.setToolTip(tr("Address of a Roof Detector server (python -m roof_detector serve)"))
        self.server_token_edit = QLineEdit(self)
        self.server_token_edit.setEchoMode(QLineEdit.Password)
        self.server_token_edit.setToolTip(
            tr(
                "Bearer token of the server, if it asks for one; kept in QGIS's "
                "authentication database, not in the settings"
            )
        )
        form.addRow(tr("Run on"), self.run_on_combo)
        form.addRow(tr("Server URL"), self.server_url_edit)
        form.addRow(tr("Server token"), self.server_token_edit)
        self.run_on_combo.currentIndexChanged.connect(self._update_enabled)

    def _fill_models(self) -> None:
        add_model_choices(self.model_combo, library_models(), model_library_dir())
        self.model_combo.addItem(tr("Model file..."), "file")

    # -- settings ------------------------------------------------------------
    def _load_settings(self) -> None:
        select_data(self.run_on_combo, "server" if self.local_problem else settings.get("run_on"))
        self.server_url_edit.setText(settings.get("server_url"))
        if settings.get("server_authcfg"):
            self.server_token_edit.setPlaceholderText(tr("(stored in QGIS's authentication database)"))
        self.set_raster_layer(self.iface.activeLayer() if self.iface is not None else None)
        raster = self.raster_combo.currentLayer()
        self.area.set_raster(raster)
        select_data(self.area_combo, settings.get("area_mode"))
        aoi = QgsProject.instance().mapLayer(settings.get("aoi_layer_id"))
        if aoi is not None:
            self.aoi_layer_combo.setLayer(aoi)
        self.area.update_enabled()
        load_widgets(self._bindings())
        restore_device(self.device_combo, settings.get("device"))
        self.output_box.load(raster)
        self.solar_box.load()

    def _bindings(self):
        """The widgets saved as they are (the model file before the choice that may need it)."""
        return [
            ("model_file", self.model_file),
            ("model_choice", self.model_combo),
            ("threshold_override", self.threshold_check),
            ("threshold", self.threshold_spin),
            ("min_area_m2", self.min_area_spin),
            ("separate_touching", self.separate_check),
            ("tta", self.tta_check),
        ]

    def _save_settings(self) -> None:
        settings.set("run_on", self.run_on_combo.currentData())
        settings.set("server_url", self.server_url_edit.text().strip())
        settings.set("area_mode", self.area_combo.currentData())
        layer = self.aoi_layer_combo.currentLayer()
        settings.set("aoi_layer_id", layer.id() if layer is not None else "")
        save_widgets(self._bindings())
        settings.set("device", self.device_combo.currentData())
        self.output_box.save(self.raster_combo.currentLayer())
        self.solar_box.save()

    def set_raster_layer(self, layer: Any) -> None:
        """Pre-select ``layer`` if it is a raster layer (the active layer when opened)."""
        if isinstance(layer, QgsRasterLayer):
            self.raster_combo.setLayer(layer)

    # -- behaviour -----------------------------------------------------------
    def selected_model_path(self) -> Optional[str]:
        """Path of the chosen model file (None if the bundled model is missing)."""
        choice = self.model_combo.currentData()
        if choice == "file":
            return self.model_file.filePath() or None
        return chosen_model_path(choice)

    def _watch_selection(self, *_: Any) -> None:
        """Re-estimate when the selection of the chosen polygon layer changes."""
        if self._selection_layer is not None:
            try:
                self._selection_layer.selectionChanged.disconnect(self.update_estimate)
            except (TypeError, RuntimeError):  # already gone
                pass
        layer = self.aoi_layer_combo.currentLayer()
        self._selection_layer = layer
        if layer is not None and hasattr(layer, "selectionChanged"):
            layer.selectionChanged.connect(self.update_estimate)
        self.update_estimate()

    def _area_wkt(self, raster: QgsRasterLayer) -> Optional[str]:
        """The chosen area as WKT in the raster CRS (None: whole layer); raises RequestError."""
        return self.area.area_wkt(raster)

    def _browse_raster(self, *_: Any) -> None:
        """The file button beside the orthophoto: a file not in the project is added to it and chosen."""
        try:
            self.area.choose_raster_file()
        except RequestError as exc:
            push(self.bar, tr("Cannot open"), str(exc), Qgis.Warning)

    def update_estimate(self, *_: Any) -> None:
        """Show how many requests / model tiles the current choices take, and roughly how long."""
        try:
            raster = self.raster_combo.currentLayer()
            inp = raster_input(raster)
            aoi = self._area_wkt(raster)
            meta = model_summary(self.selected_model_path())["meta"]
            device = (
                "cuda"
                if self.device_combo.currentData() == "cuda"
                or (self.device_combo.currentData() == "auto" and self.device_combo.model().item(2).isEnabled())
                else "cpu"
            )
            plan = plan_run(inp, aoi, meta, device)
            text = plan.describe()
            if inp.is_web:
                text += " " + tr("(read over the chosen area at the model's resolution)")
        except RequestError as exc:
            text = str(exc)
        except Exception as exc:  # noqa: BLE001 - an estimate must never break the dialog
            text = tr("No estimate: {error}").format(error=exc)
        self.estimate_label.setText(text)

    @property
    def on_server(self) -> bool:
        """True when the detection is to run on a Roof Detector server."""
        return self.run_on_combo.currentData() == "server"

    def _update_enabled(self, *_: Any) -> None:
        server = self.on_server
        for widget in (self.server_url_edit, self.server_token_edit):
            widget.setEnabled(server)
        for widget in (self.model_combo, self.model_file, self.device_combo):  # the server's own
            widget.setEnabled(not server)
        self.model_file.setEnabled(not server and self.model_combo.currentData() == "file")
        info = model_summary(self.selected_model_path())
        self.model_info.setText(info["text"])
        custom = self.threshold_check.isChecked()
        self.threshold_spin.setEnabled(custom)
        if not custom and info["threshold"] is not None:
            self.threshold_spin.setValue(info["threshold"])
        if hasattr(self, "estimate_label"):
            self.update_estimate()

    def build_request(self) -> DetectRequest:
        """The request for the current choices; raises :class:`RequestError` for bad ones."""
        if self.on_server:
            return self._server_request()
        if self.local_problem:
            raise RequestError(self.local_problem)
        raster = self.raster_combo.currentLayer()
        inp = raster_input(raster)
        aoi = self._area_wkt(raster)
        model = self.selected_model_path()
        if not model:
            raise RequestError(
                tr("The bundled model is not installed; choose a model file.")
                if self.model_combo.currentData() == "bundled"
                else tr("Choose a model file (*.pt).")
            )
        info = model_summary(model)
        if not info["ok"]:
            raise RequestError(info["text"])
        if inp.is_web:
            plan_run(inp, aoi, info["meta"])
        try:
            request = DetectRequest.for_layer(
                inp,
                options=dict(
                    model_path=model, device=self.device_combo.currentData(), aoi_wkt=aoi, **self.detection_kwargs()
                ),
                solar=self.solar_kwargs(),
            )
        except ParameterError as exc:  # cannot happen through the spin boxes: they share the ranges
            raise RequestError(str(exc)) from None
        self.output_box.fill(request, self.confirm_replace)
        if inp.reader == "file" and inp.path:
            self._check_size(request, inp.path)
        return request

    def _server_request(self) -> DetectRequest:
        """A request to run on the server: a file-based raster, the area, the options; the model is the server's."""
        url = self.server_url_edit.text().strip()
        if not url.lower().startswith(("http://", "https://")):
            raise RequestError(tr("Enter the Roof Detector server's URL, e.g. http://127.0.0.1:8000"))
        raster = self.raster_combo.currentLayer()
        path = raster_file_path(raster)  # QGIS only: no rasterio needed on this computer
        aoi = self._area_wkt(raster)
        authcfg = settings.get("server_authcfg")
        token = self.server_token_edit.text().strip()
        if token:
            from ..qgis_adapter.remote import ServerError, store_token

            try:
                authcfg = store_token(token, authcfg)
            except ServerError as exc:
                raise RequestError(str(exc)) from None
            settings.set("server_authcfg", authcfg)
        try:
            request = DetectRequest(
                raster_path=path,
                raster_name=raster.name(),
                crs=raster.crs().authid() or raster.crs().toWkt(),
                options=dict(aoi_wkt=aoi, **self.detection_kwargs()),
                solar=self.solar_kwargs(),
                server_url=url,
                server_authcfg=authcfg,
            )
        except ParameterError as exc:  # cannot happen through the spin boxes: they share the ranges
            raise RequestError(str(exc)) from None
        self.output_box.fill(request, self.confirm_replace)
        return request

    def detection_kwargs(self) -> Dict[str, Any]:
        """Threshold, minimum area, touching roofs, TTA and outlines as ``DetectOptions`` keyword arguments."""
        return dict(
            threshold=self.threshold_spin.value() if self.threshold_check.isChecked() else None,
            min_area_m2=self.min_area_spin.value(),
            separate_touching=self.separate_check.isChecked(),
            tta=self.tta_check.isChecked(),
            **self.solar_box.outline_kwargs(),
        )

    def _check_size(self, request: DetectRequest, path: str) -> None:
        """Ask before a very large run (the engine refuses it otherwise); refuse one that cannot fit."""
        from ..core.errors import LargeRunError
        from ..core.pipeline import check_detection_size

        try:
            check_detection_size(path, request.detect_options())
        except LargeRunError as exc:
            if not exc.confirmable or not self.confirm_large(str(exc)):
                raise RequestError(str(exc)) from None
            request.options["confirm_large_run"] = True

    def confirm_large(self, message: str) -> bool:
        """Ask whether a very large run may start."""
        answer = QMessageBox.question(
            self,
            tr("Very large run"),
            message + "\n\n" + tr("Run it anyway?"),
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def solar_kwargs(self) -> Dict[str, Any]:
        """The solar parameters as keyword arguments of ``core.solar.SolarParams``."""
        return self.solar_box.solar_kwargs()

    def confirm_replace(self, path: str, layer: str) -> bool:
        """Ask whether an existing GeoPackage layer may be replaced."""
        answer = QMessageBox.question(
            self,
            tr("Replace layer?"),
            tr(
                "{path} already contains a layer '{layer}'. Replace that layer with the new buildings? "
                "The file's other layers are kept."
            ).format(path=path, layer=layer),
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def accept(self) -> None:
        """Validate; on success remember the choices and close with ``self.request`` set."""
        self.bar.clearWidgets()
        try:
            self.request = self.build_request()
        except RequestError as exc:
            self.request = None
            push(self.bar, tr("Cannot start"), str(exc), Qgis.Warning)
            return
        self._save_settings()
        super().accept()


HELP_URL = "https://github.com/roof-detector/roof-detector#readme"


def open_help() -> None:
    """The Help button: the README on the repository page (the plugin zip carries no README)."""
    from qgis.PyQt.QtCore import QUrl
    from qgis.PyQt.QtGui import QDesktopServices

    QDesktopServices.openUrl(QUrl(HELP_URL))
