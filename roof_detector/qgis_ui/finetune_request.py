"""The Fine-tune dialog's choices checked and turned into a :class:`FinetuneRequest`.

Every check raises :class:`~roof_detector.qgis_adapter.request.RequestError` with the line
the dialog shows; layers the engine cannot read from a file are exported last, once every
check has passed.
"""

from __future__ import annotations

import shutil
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import QgsRasterLayer, QgsVectorLayer

from ..qgis_adapter.finetune_task import FinetuneRequest, area_wkt, label_source, labels_in_raster, make_temp_dir
from ..qgis_adapter.request import RequestError, is_polygon_layer, raster_file_path
from . import tr
from .pickers import model_summary


def checked_labels(labels: Any, selected_only: bool, raster: QgsRasterLayer) -> List[str]:
    """Notes about the label layer (reprojection); raises :class:`RequestError` when it cannot be used."""
    if not is_polygon_layer(labels):
        raise RequestError(tr("Choose the polygon layer with the buildings (labels)."))
    if selected_only and labels.selectedFeatureCount() == 0:
        raise RequestError(
            tr(
                "No features are selected in layer '{name}'. Select the buildings to learn "
                "from, or untick 'Selected features only'."
            ).format(name=labels.name())
        )
    if not labels.crs().isValid():
        raise RequestError(
            tr("Layer '{name}' has no coordinate reference system. Set it in Layer Properties > Source.").format(
                name=labels.name()
            )
        )
    notes = []
    if labels.crs() != raster.crs():
        notes.append(
            tr("The labels ({labels_crs}) are reprojected to the raster's CRS ({raster_crs}).").format(
                labels_crs=labels.crs().authid() or labels.crs().description(),
                raster_crs=raster.crs().authid() or raster.crs().description(),
            )
        )
    if labels_in_raster(labels, selected_only, raster) is False:
        raise RequestError(
            tr(
                "No polygon of layer '{labels}' lies inside raster '{raster}'. Check that the "
                "buildings cover the orthophoto."
            ).format(labels=labels.name(), raster=raster.name())
        )
    return notes


def checked_output(library_dir: str, model: Optional[str], name: str) -> str:
    """The new model's file in the library; raises :class:`RequestError` for a missing base model or name."""
    from ..core.model_library import ModelLibraryError, new_model_path

    if not model:
        raise RequestError(tr("The bundled model is not installed; choose a model from the library."))
    info = model_summary(model)
    if not info["ok"]:
        raise RequestError(info["text"])
    if not name:
        raise RequestError(tr("Enter a name for the new model."))
    try:
        return new_model_path(library_dir, name)
    except ModelLibraryError as exc:
        raise RequestError(str(exc)) from None


def finetune_request(
    raster: Any,
    labels: Tuple[Any, bool],
    area: Tuple[str, Any],
    model: Optional[str],
    name: str,
    library_dir: str,
    training: Dict[str, Any],
) -> FinetuneRequest:
    """Check the choices and build the request.

    ``labels`` is (layer, selected features only), ``area`` (mode, area layer),
    ``training`` the training parameters as engine keywords.
    """
    raster_path = raster_file_path(raster)
    label_layer, selected_only = labels
    notes = checked_labels(label_layer, selected_only, raster)
    mode, area_layer = area
    area_geometry = area_wkt(area_layer, mode == "selection", raster) if mode in ("layer", "selection") else None
    output = checked_output(library_dir, model, name)
    options = dict(
        raster_path=raster_path,
        labels_path="",
        output_path=output,
        name=name,
        base_model_path=model,
        area_wkt=area_geometry,
        **training,
    )
    request = FinetuneRequest(raster.name(), options, notes=notes)
    _export_labels(request, label_layer, selected_only)
    return request


def _export_labels(request: FinetuneRequest, labels: QgsVectorLayer, selected_only: bool) -> None:
    """Point the request at a file of the labels (exported to its temporary folder when needed)."""

    def temp_dir() -> str:
        if request.temp_dir is None:
            request.temp_dir = make_temp_dir()
        return request.temp_dir

    try:
        request.options["labels_path"], request.options["labels_layer"], _ = label_source(
            labels, selected_only, temp_dir
        )
    except Exception:
        if request.temp_dir:
            shutil.rmtree(request.temp_dir, ignore_errors=True)
        raise
