"""Reading any QGIS raster layer for the engine: files, providers, XYZ/WMS/WMTS services.

Imports qgis, so it never lives in :mod:`roof_detector.core`; imports
neither torch nor the engine's model code at module level. Entry points:

* :func:`~.layers.layer_input` (GUI thread): a layer as plain values and the reader it gets;
* :func:`~.layers.open_layer_source` (task thread): the engine input for it;
* :func:`~.layers.plan_area`: requests, model tiles and time of a run, for the dialog;
* :func:`~.layers.source_for_layer`: both steps at once, for Processing.
"""

from .layers import (
    MAX_WEB_REQUESTS,
    READER_FILE,
    READER_PROVIDER,
    READER_RENDER,
    READER_XYZ,
    WEB_READERS,
    AreaPlan,
    LayerInput,
    layer_input,
    model_gsd_m,
    open_layer_source,
    plan_area,
    source_for_layer,
)

__all__ = [
    "MAX_WEB_REQUESTS",
    "READER_FILE",
    "READER_PROVIDER",
    "READER_RENDER",
    "READER_XYZ",
    "WEB_READERS",
    "AreaPlan",
    "LayerInput",
    "layer_input",
    "model_gsd_m",
    "open_layer_source",
    "plan_area",
    "source_for_layer",
]
