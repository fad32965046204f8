"""Which reader a QGIS raster layer gets, opening it in a task, and what a run will cost.

Readers:

``file``      a local file rasterio opens (GeoTIFF, JPEG 2000, a VRT...): the
              engine's own :class:`~roof_detector.core.raster_source.RasterioSource`.
``provider``  other layers with pixel values and a grid: :class:`.ProviderSource`
              (GDAL sources that are not plain files, in-memory /vsimem/, virtual
              rasters, PostGIS rasters, WCS, formats only QGIS's GDAL has).
``xyz``       XYZ tile services: :class:`.XyzTileSource`.
``render``    other services that only render (WMS, WMTS, ArcGIS MapServer):
              :class:`.RenderedSource`.

The last two are web layers: they are read over an area (map extent or
polygons) at the model's ground sample distance, never as a whole world.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from ..core.errors import InputRasterError
from ..core.raster_source import RasterSource
from .workers import CancelFn, RetryPolicy

READER_FILE, READER_PROVIDER, READER_XYZ, READER_RENDER = "file", "provider", "xyz", "render"
WEB_READERS = (READER_XYZ, READER_RENDER)

#: More web requests than this for one run are refused (the area is too large, or the whole world).
MAX_WEB_REQUESTS = 20000
#: Rough costs for the estimate shown before a run.
SECONDS_PER_TILE_REQUEST = 0.25  # one XYZ tile, with MAX_IN_FLIGHT of them in parallel
SECONDS_PER_RENDER_REQUEST = 2.0  # one CHUNK_PX x CHUNK_PX image from a WMS/WMTS
SECONDS_PER_MEGAPIXEL = {"cpu": 4.0, "cuda": 0.15}
#: Where the rate measured in the last detection on a device is kept (QgsSettings), per device.
MEASURED_RATE_KEY = "RoofDetector/measured_seconds_per_megapixel/{device}"


def measured_seconds_per_megapixel(device: str) -> Optional[float]:
    """Seconds per model megapixel measured in the last local-file detection on ``device`` (None if never)."""
    from qgis.core import QgsSettings

    try:
        value = float(QgsSettings().value(MEASURED_RATE_KEY.format(device=device), 0.0))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def record_measured_rate(device: str, tiles: int, tile_size_px: int, seconds: float) -> None:
    """Keep the whole-run rate of a finished detection for the next estimate.

    Runs under 1 model megapixel are ignored: their time is mostly start-up, not speed.
    """
    from qgis.core import QgsSettings

    megapixels = tiles * tile_size_px**2 / 1e6
    if megapixels >= 1.0 and seconds > 0:
        QgsSettings().setValue(MEASURED_RATE_KEY.format(device=device), seconds / megapixels)


Bounds = Tuple[float, float, float, float]


@dataclass(frozen=True)
class LayerInput:
    """A raster layer as plain values: enough to open it again in another thread."""

    reader: str
    uri: str
    provider: str
    name: str
    crs: str = ""  # authid or WKT of the layer's CRS
    path: str = ""  # the local file, for the ``file`` reader
    extent: Optional[Bounds] = None  # layer extent in its CRS
    params: Dict[str, Any] = field(default_factory=dict, compare=False)  # decoded URI of web layers

    @property
    def is_web(self) -> bool:
        return self.reader in WEB_READERS


def rasterio_opens(path: str) -> bool:
    """True when rasterio (the engine's reader) opens ``path`` as a georeferenced raster."""
    try:
        import warnings

        import rasterio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                return ds.crs is not None and ds.count > 0
    except Exception:  # noqa: BLE001 - RasterioIOError, driver missing...: QGIS reads it then
        return False


def layer_input(layer) -> LayerInput:
    """Classify a valid ``QgsRasterLayer`` (GUI thread: only getters are used)."""
    from qgis.core import Qgis, QgsProviderRegistry, QgsRasterDataProvider

    provider = layer.providerType()
    uri = layer.source()
    crs = layer.crs().authid() or layer.crs().toWkt()
    ext = layer.extent()
    extent = (ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum())
    common = dict(uri=uri, provider=provider, name=layer.name(), crs=crs, extent=extent)
    registry = QgsProviderRegistry.instance()
    if provider == "wms":
        params = dict(registry.decodeUri("wms", uri))
        if params.get("type") == "xyz":
            return LayerInput(READER_XYZ, params=params, **common)
    if provider == "gdal":
        parts = registry.decodeUri("gdal", uri)
        path = parts.get("path") or ""
        plain = not parts.get("layerName") and not parts.get("openOptions") and not parts.get("vsiPrefix")
        if plain and path and os.path.isfile(path) and rasterio_opens(path):
            return LayerInput(READER_FILE, path=path, **common)
    dp = layer.dataProvider()
    if dp.dataType(1) in (Qgis.ARGB32, Qgis.ARGB32_Premultiplied) or not dp.capabilities() & QgsRasterDataProvider.Size:
        return LayerInput(READER_RENDER, **common)
    return LayerInput(READER_PROVIDER, **common)


def _wkt_bounds(wkt: str) -> Bounds:
    import shapely

    return tuple(shapely.from_wkt(wkt).bounds)  # type: ignore[return-value]


def area_bounds(inp: LayerInput, aoi_wkt: Optional[str]) -> Bounds:
    """The area read for a web layer: the AOI's bounding box, else the layer extent."""
    if aoi_wkt:
        return _wkt_bounds(aoi_wkt)
    if inp.extent is None:
        raise InputRasterError(f"Layer '{inp.name}' has no extent; give an area to search")
    return inp.extent


def _layer_crs_wkt(inp: LayerInput) -> str:
    if inp.reader == READER_XYZ:
        from .xyz import web_mercator_wkt

        return web_mercator_wkt()
    from qgis.core import QgsCoordinateReferenceSystem

    return QgsCoordinateReferenceSystem(inp.crs).toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)


def open_layer_source(
    inp: LayerInput,
    gsd_m: float,
    aoi_wkt: Optional[str] = None,
    is_cancelled: Optional[CancelFn] = None,
    retry: Optional[RetryPolicy] = None,
) -> Union[str, RasterSource]:
    """What ``detect_buildings`` reads for ``inp``: a file path, or a :class:`RasterSource` (close it after).

    Call it from the task's thread: every QGIS object it makes lives in the
    source's own threads. Web layers are read over ``aoi_wkt`` (layer CRS)
    at ``gsd_m`` metres per pixel; more than :data:`MAX_WEB_REQUESTS` requests
    are refused.
    """
    if inp.reader == READER_FILE:
        return inp.path
    if inp.reader == READER_PROVIDER:
        from .provider_source import ProviderSource

        return ProviderSource(inp.uri, inp.provider, inp.name, inp.crs, is_cancelled)
    plan = plan_area(inp, gsd_m, aoi_wkt=aoi_wkt)
    refusal = plan.refusal(inp.name, whole_layer=not aoi_wkt)
    if refusal:
        raise InputRasterError(refusal)
    bounds = area_bounds(inp, aoi_wkt)
    if inp.reader == READER_XYZ:
        from .xyz import XyzTemplate, XyzTileSource

        return XyzTileSource(XyzTemplate.from_params(inp.params), bounds, gsd_m, inp.name, is_cancelled, retry=retry)
    from .provider_source import RenderedSource

    return RenderedSource(inp.uri, inp.provider, inp.name, bounds, gsd_m, inp.crs, is_cancelled, retry)


@dataclass(frozen=True)
class AreaPlan:
    """What a run over an area costs: web requests, model tiles, an estimated time."""

    reader: str
    requests: int
    model_tiles: int
    seconds: float
    zoom: Optional[int] = None
    measured: bool = False  # the time is based on the rate measured in the last run here

    def refusal(self, layer_name: str, whole_layer: bool) -> str:
        """Why this run must not start ('' when it may)."""
        if self.reader not in WEB_READERS or self.requests <= MAX_WEB_REQUESTS:
            return ""
        if whole_layer:
            return (
                f"Layer '{layer_name}' is a web service covering the whole world (or a very large area): "
                f"reading all of it at the model's resolution would take {self.requests:,} requests. "
                "Choose a smaller area: an extent (the map's, a layer's or one drawn on the map) "
                "or the selected polygons of a layer."
            )
        return (
            f"The area needs {self.requests:,} requests to layer '{layer_name}' (at most "
            f"{MAX_WEB_REQUESTS:,} are allowed in one run). Zoom in, or select smaller polygons."
        )

    def describe(self) -> str:
        """One line for the dialog, e.g. '36 tile requests (zoom 18), 121 model tiles: about 2 min'."""
        parts = []
        if self.reader == READER_XYZ:
            parts.append(f"{self.requests:,} tile requests (zoom {self.zoom})")
        elif self.reader == READER_RENDER:
            parts.append(f"{self.requests:,} image requests")
        parts.append(f"{self.model_tiles:,} model tiles")
        basis = " (at the speed of your last run)" if self.measured else ""
        return ", ".join(parts) + ": " + format_duration(self.seconds) + basis


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    if seconds < 90 * 60:
        return f"about {int(round(seconds / 60.0))} min"
    return f"about {seconds / 3600.0:.1f} h"


def _model_tiles(width_m: float, height_m: float, gsd_m: float, tile_size_px: int, overlap_px: int) -> int:
    from ..core.tiling import tile_origins

    w = max(1, int(round(width_m / gsd_m)))
    h = max(1, int(round(height_m / gsd_m)))
    if w * h > 1e13:  # the whole world at 0.5 m: count without listing the origins
        stride = tile_size_px - overlap_px
        return int(math.ceil(w / stride) * math.ceil(h / stride))
    return len(tile_origins(w, tile_size_px, overlap_px)) * len(tile_origins(h, tile_size_px, overlap_px))


def plan_area(
    inp: LayerInput,
    gsd_m: float,
    tile_size_px: int = 512,
    overlap_px: int = 64,
    aoi_wkt: Optional[str] = None,
    device: str = "cpu",
) -> AreaPlan:
    """Requests and model tiles for reading ``inp`` over ``aoi_wkt`` (or its extent), and the time it may take."""
    from .xyz import MAX_IN_FLIGHT, ground_m_per_unit

    bounds = area_bounds(inp, aoi_wkt)
    if aoi_wkt and inp.extent is not None and inp.reader != READER_XYZ:
        e = inp.extent
        bounds = (max(bounds[0], e[0]), max(bounds[1], e[1]), min(bounds[2], e[2]), min(bounds[3], e[3]))
        if not (bounds[2] > bounds[0] and bounds[3] > bounds[1]):
            return AreaPlan(inp.reader, 0, 0, 0.0)
    crs_wkt = _layer_crs_wkt(inp)
    try:
        mx, my = ground_m_per_unit(bounds, crs_wkt)
    except InputRasterError:
        mx = my = 1.0
    width_m, height_m = (bounds[2] - bounds[0]) * mx, (bounds[3] - bounds[1]) * my
    tiles = _model_tiles(width_m, height_m, gsd_m, tile_size_px, overlap_px)
    measured = measured_seconds_per_megapixel(device)
    rate = measured or SECONDS_PER_MEGAPIXEL.get(device, SECONDS_PER_MEGAPIXEL["cpu"])
    seconds = tiles * (tile_size_px**2) / 1e6 * rate
    requests, zoom = 0, None
    if inp.reader == READER_XYZ:
        from .xyz import XyzTemplate, plan_xyz

        plan = plan_xyz(bounds, XyzTemplate.from_params(inp.params), gsd_m)
        requests, zoom = plan.tile_count, plan.zoom
        seconds += requests * SECONDS_PER_TILE_REQUEST / MAX_IN_FLIGHT
    elif inp.reader == READER_RENDER:
        from .provider_source import CHUNK_PX

        px = (width_m / gsd_m, height_m / gsd_m)
        requests = int(math.ceil(px[0] / CHUNK_PX) * math.ceil(px[1] / CHUNK_PX))
        seconds += requests * SECONDS_PER_RENDER_REQUEST
    return AreaPlan(inp.reader, requests, tiles, seconds, zoom, measured=measured is not None)


def source_for_layer(
    layer, model_path: Optional[str] = None, aoi_wkt: Optional[str] = None, is_cancelled: Optional[CancelFn] = None
) -> Union[str, RasterSource]:
    """For front ends holding a ``QgsRasterLayer`` (Processing): the engine input for it.

    ``model_path`` (None: the bundled model) gives the ground sample distance
    web layers are read at; ``aoi_wkt`` is in the layer's CRS. A returned
    :class:`RasterSource` must be closed by the caller; a path is opened by
    the engine itself.
    """
    inp = layer_input(layer)
    if inp.reader in (READER_FILE, READER_PROVIDER):
        return open_layer_source(inp, 0.0, aoi_wkt, is_cancelled)
    return open_layer_source(inp, model_gsd_m(model_path), aoi_wkt, is_cancelled)


def model_gsd_m(model_path: Optional[str]) -> float:
    """The ground sample distance (m/pixel) a model was trained for, from its metadata."""
    from ..core.model_io import BUNDLED_MODEL_PATH, read_metadata

    return float(read_metadata(model_path or BUNDLED_MODEL_PATH)["gsd_m"])
