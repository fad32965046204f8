"""What the dialog hands to the task: plain data, no layer or widget references.

Also the checks that turn QGIS objects (a raster layer, the map extent, the
selected polygons of a layer) into that data, each refusing bad input with
a :class:`RequestError` whose message tells the user what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

# The declarations are pure Python (no torch): the dialog checks with them before torch is installed.
from ..core.params import ParameterError
from . import tr


class RequestError(ValueError):
    """A choice in the dialog cannot be used; the message says why and what to do."""


@dataclass
class DetectRequest:
    """Everything a detection task needs, as plain values (safe to use in a worker thread).

    ``options`` are keyword arguments of the engine's ``DetectOptions`` (the
    parameters declared in :mod:`roof_detector.core.params` are checked here,
    at once); ``solar`` those of ``SolarParams`` ({}: its defaults; None: no
    solar fields). The engine's classes are built only in the task, so that
    the dialog works before torch is installed.
    """

    raster_path: str  # the local file ("" when the layer is read through QGIS)
    raster_name: str
    crs: str  # authority id (EPSG:32631) or WKT of the raster CRS
    options: Dict[str, Any] = field(default_factory=dict)
    solar: Optional[Dict[str, Any]] = field(default_factory=dict)
    output_mode: str = "memory"  # memory | gpkg
    gpkg_path: str = ""
    gpkg_layer: str = ""
    replace_layer: bool = False
    # How the task reads the layer (see roof_detector.qgis_io): "file" reads raster_path with
    # rasterio; "provider", "xyz" and "render" open layer_uri with the QGIS provider again.
    reader: str = "file"
    layer_uri: str = ""
    provider: str = ""
    layer_extent: Optional[Tuple[float, float, float, float]] = None
    layer_params: Dict[str, Any] = field(default_factory=dict)  # decoded URI of a web layer
    # Where detection runs: "" = this computer, else the URL of a Roof Detector server
    # (``python -m roof_detector serve``) and the id of its token in QGIS's authentication database.
    server_url: str = ""
    server_authcfg: str = ""

    def __post_init__(self) -> None:
        from ..core.params import DETECT, OUTLINES, SOLAR

        for group in (DETECT, OUTLINES):
            for name, p in group.items():
                if name in self.options:
                    self.options[name] = p.check(self.options[name])
        for name, value in (self.solar or {}).items():
            if name not in SOLAR:
                raise ParameterError(f"Unknown solar sizing parameter: {name}")
            self.solar[name] = SOLAR[name].check(value)

    @property
    def model_path(self) -> Optional[str]:
        """The model file (None: the bundled model)."""
        return self.options.get("model_path")

    @property
    def aoi_wkt(self) -> Optional[str]:
        """The area of interest in the raster CRS (None: the whole layer)."""
        return self.options.get("aoi_wkt")

    @property
    def layer_name(self) -> str:
        """Display name of the result layer, e.g. 'Buildings (ortho_2023)'."""
        return tr("Buildings ({name})").format(name=self.raster_name)

    @classmethod
    def for_layer(cls, inp: Any, **kwargs: Any) -> "DetectRequest":
        """A request reading the layer described by ``inp`` (a ``qgis_io.LayerInput``)."""
        return cls(
            raster_path=inp.path,
            raster_name=inp.name,
            crs=inp.crs,
            reader=inp.reader,
            layer_uri=inp.uri,
            provider=inp.provider,
            layer_extent=inp.extent,
            layer_params=dict(inp.params),
            **kwargs,
        )

    def layer_input(self) -> Any:
        """The layer as :class:`roof_detector.qgis_io.LayerInput` (for reading it in the task)."""
        from ..qgis_io import LayerInput

        return LayerInput(
            self.reader,
            self.layer_uri,
            self.provider,
            self.raster_name,
            self.crs,
            self.raster_path,
            self.layer_extent,
            dict(self.layer_params),
        )

    def detect_options(self) -> Any:
        """The engine's ``DetectOptions`` (an unknown option is an error, never dropped)."""
        from ..core.pipeline import DetectOptions

        try:
            return DetectOptions(**self.options, solar=self.solar_params())
        except TypeError as exc:
            raise ParameterError(f"Unknown detection option ({exc})") from None

    def solar_params(self) -> Any:
        """The engine's ``SolarParams`` for this request (None: no solar sizing)."""
        if self.solar is None:
            return None
        from ..core.solar import SolarParams

        return SolarParams(**self.solar)

    def report_params(self) -> Dict[str, Any]:
        """The sizing and outline choices as the Rooftop Report lists them."""
        from ..core.params import OUTLINES, SOLAR

        # From the declarations, not SolarParams: a server run's desktop may lack the engine's packages.
        params = {name: self.solar.get(name, p.default) for name, p in SOLAR.items()} if self.solar is not None else {}
        regularize = self.options.get("regularize", OUTLINES["regularize"].default)
        tolerance = self.options.get("regularize_tolerance_m", OUTLINES["regularize_tolerance_m"].default)
        params["regularize"] = tr("yes, tolerance {tol:g} m").format(tol=tolerance) if regularize else tr("no")
        return params


def is_polygon_layer(layer: Any) -> bool:
    """True for a valid polygon vector layer (labels, areas, buildings to report on)."""
    return isinstance(layer, QgsVectorLayer) and layer.isValid() and layer.geometryType() == QgsWkbTypes.PolygonGeometry


def _check_valid_raster(layer: Optional[QgsMapLayer]) -> None:
    """Raise :class:`RequestError` unless ``layer`` is a valid raster layer."""
    if layer is None:
        raise RequestError(
            tr(
                "No raster layer chosen. Open an orthophoto (Layer > Add Layer > "
                "Add Raster Layer) and choose it in the dialog."
            )
        )
    if not isinstance(layer, QgsRasterLayer):
        raise RequestError(tr("Layer '{name}' is not a raster layer; choose an orthophoto.").format(name=layer.name()))
    if not layer.isValid():
        raise RequestError(tr("Layer '{name}' is not valid (its source cannot be read).").format(name=layer.name()))


def _check_crs(layer: QgsMapLayer) -> None:
    """Raise :class:`RequestError` when ``layer`` has no valid CRS."""
    if not layer.crs().isValid():
        raise RequestError(
            tr(
                "Layer '{name}' has no coordinate reference system. Set it in Layer "
                "Properties > Source; building areas need a projected CRS in metres."
            ).format(name=layer.name())
        )


def raster_file_path(layer: Optional[QgsMapLayer]) -> str:
    """The local file behind a raster layer, or raise :class:`RequestError` saying why not."""
    _check_valid_raster(layer)
    if layer.providerType() != "gdal":
        raise RequestError(
            tr(
                "Layer '{name}' comes from the '{provider}' provider. This version "
                "detects buildings only in file-based rasters (GeoTIFF, JPEG 2000, VRT...). "
                "Save it to a file first (right click > Export > Save As...)."
            ).format(name=layer.name(), provider=layer.providerType())
        )
    _check_crs(layer)
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or layer.source()
    if not os.path.isfile(path):
        raise RequestError(
            tr("The source of layer '{name}' is not a local file ({source}); save it to a GeoTIFF first.").format(
                name=layer.name(), source=path
            )
        )
    return path


def raster_input(layer: Optional[QgsMapLayer]) -> Any:
    """How the task will read ``layer`` (any valid raster layer with a CRS: file, provider or web service).

    Returns a :class:`roof_detector.qgis_io.LayerInput`, or raises :class:`RequestError` saying why not.
    """
    _check_valid_raster(layer)
    _check_crs(layer)
    from ..qgis_io import layer_input

    return layer_input(layer)


def plan_run(inp: Any, aoi_wkt: Optional[str], model_meta: Optional[Dict[str, Any]], device: str = "cpu") -> Any:
    """The :class:`roof_detector.qgis_io.AreaPlan` of a run; raise :class:`RequestError` if it must not start.

    A web layer is read over the chosen area only: the whole of a world-wide
    service (or any area needing more than ``MAX_WEB_REQUESTS`` requests) is refused.
    """
    from ..qgis_io import plan_area

    from ..core.params import BUNDLED_MODEL_GRID

    meta = dict(BUNDLED_MODEL_GRID, **(model_meta or {}))  # no model chosen yet: the bundled model's grid
    plan = plan_area(
        inp, float(meta["gsd_m"]), int(meta["tile_size_px"]), int(meta["overlap_px"]), aoi_wkt=aoi_wkt, device=device
    )
    refusal = plan.refusal(inp.name, whole_layer=not aoi_wkt)
    if refusal:
        raise RequestError(refusal)
    return plan


def _to_raster_crs(
    geometry: QgsGeometry, source_crs: QgsCoordinateReferenceSystem, raster: QgsRasterLayer
) -> QgsGeometry:
    geometry = QgsGeometry(geometry)
    if source_crs.isValid() and source_crs != raster.crs():
        transform = QgsCoordinateTransform(source_crs, raster.crs(), QgsProject.instance())
        geometry.transform(transform)
    return geometry


def _checked_aoi(geometry: QgsGeometry, raster: QgsRasterLayer) -> str:
    if geometry.isNull() or geometry.isEmpty():
        raise RequestError(tr("The area of interest is empty."))
    if not geometry.intersects(QgsGeometry.fromRect(raster.extent())):
        raise RequestError(
            tr(
                "The area of interest does not overlap layer '{name}'. Pan the map "
                "over the orthophoto or choose other polygons."
            ).format(name=raster.name())
        )
    return geometry.asWkt()


def extent_aoi_wkt(extent: QgsRectangle, extent_crs: QgsCoordinateReferenceSystem, raster: QgsRasterLayer) -> str:
    """The map extent (in ``extent_crs``) as a polygon WKT in the raster's CRS."""
    polygon = QgsGeometry.fromRect(extent).densifyByCount(16)
    return _checked_aoi(_to_raster_crs(polygon, extent_crs, raster), raster)


def selection_aoi_wkt(layer: Optional[QgsMapLayer], raster: QgsRasterLayer) -> str:
    """The union of the selected polygons of ``layer`` as WKT in the raster's CRS."""
    if not is_polygon_layer(layer):
        raise RequestError(tr("Choose a polygon layer for the area of interest."))
    features = layer.selectedFeatures()
    if not features:
        raise RequestError(
            tr(
                "No polygons are selected in layer '{name}'. Select the areas to "
                "search (Select Features tool) or choose another area option."
            ).format(name=layer.name())
        )
    geometries = [f.geometry() for f in features if f.hasGeometry()]
    union = QgsGeometry.unaryUnion(geometries) if geometries else QgsGeometry()
    return _checked_aoi(_to_raster_crs(union, layer.crs(), raster), raster)
