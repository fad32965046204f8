"""QGIS raster layers as :class:`RasterSource`: pixel data providers and render-only services.

Both readers open their own copy of the layer (a new ``QgsRasterLayer`` from
the source URI and provider key) in their own QThread and use it only
there: the layer in the project belongs to the GUI thread and is never
touched by the task. The engine's reader thread just waits for the blocks.

:class:`ProviderSource`
    Providers with pixel values and a native grid (GDAL sources that are not
    plain files: /vsimem/, /vsicurl/, a VRT QGIS opens; virtual rasters,
    PostGIS rasters, WCS...). Reads ``provider.block()`` per band at the
    native resolution (or at twice the output size when reducing more than
    that), then resamples like :class:`~roof_detector.core.raster_source.RasterioSource`
    (bilinear, widened when reducing); bands, nodata, alpha, palettes and the
    percentile stretch follow the same rules.

:class:`RenderedSource`
    Services that only hand out images (WMS, WMTS, ArcGIS MapServer: their
    provider's data type is ARGB32). The grid is the area of interest at the
    model's ground sample distance in the layer CRS; it is requested in
    chunks of :data:`CHUNK_PX` pixels with ``provider.block()`` (QGIS picks
    the WMTS zoom level closest to that resolution and resamples). QGIS does
    not report failed tiles to the caller, so a chunk that comes back with
    no opaque pixel is taken as failed and requested again with back-off; if
    the very first chunks never return anything the service is reported as
    unreachable. A chunk that stays empty after the first data arrived is
    taken as a gap in the coverage (nodata).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before Python 3.11
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from affine import Affine

from ..core.errors import Cancelled, InputRasterError
from ..core.raster_source import (
    STRETCH_SAMPLE_PX,
    PixelWindow,
    RasterSource,
    RenderedRgbGrid,
    band_layout,
    percentile_stretch,
    scale_to_unit,
)
from .resample import paste, read_span, resample, resample_rgba
from .workers import DEFAULT_RETRY, CancelFn, QtWorkers, RetryPolicy, ServiceError, sleep_unless_cancelled

CHUNK_PX = 1024  # one request to a render-only service: CHUNK_PX x CHUNK_PX pixels
CHUNK_CACHE = 24  # chunks kept in memory (4 MiB each)


def _numpy_dtype(data_type: int) -> Optional[np.dtype]:
    from qgis.core import Qgis

    table = {
        Qgis.Byte: np.uint8,
        Qgis.UInt16: np.uint16,
        Qgis.Int16: np.int16,
        Qgis.UInt32: np.uint32,
        Qgis.Int32: np.int32,
        Qgis.Float32: np.float32,
        Qgis.Float64: np.float64,
    }
    int8 = getattr(Qgis, "Int8", None)  # QGIS >= 3.30
    if int8 is not None:
        table[int8] = np.int8
    found = table.get(data_type)
    return np.dtype(found) if found is not None else None


def _open_layer(uri: str, provider: str, name: str, crs: str = ""):
    """A new QgsRasterLayer for ``uri``; raise :class:`InputRasterError` if QGIS cannot open it."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer

    options = QgsRasterLayer.LayerOptions(False)  # no default style: only pixels are read
    layer = QgsRasterLayer(uri, name, provider, options)
    if not layer.isValid():
        raise InputRasterError(
            f"QGIS cannot open layer '{name}' ({provider} provider) in the background task: "
            f"{layer.error().summary() or 'invalid source'}"
        )
    if crs:
        # The project layer's CRS wins when the user overrode the provider's.
        wanted = QgsCoordinateReferenceSystem(crs)
        if wanted.isValid() and wanted != layer.crs():
            layer.setCrs(wanted)
    if not layer.crs().isValid():
        raise InputRasterError(f"Layer '{name}' has no coordinate reference system; set one in its properties")
    return layer


def _crs_wkt(layer) -> str:
    from qgis.core import QgsCoordinateReferenceSystem

    return layer.crs().toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)


def _block_array(block, dtype: np.dtype, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """(values, nodata mask) of a QgsRasterBlock."""
    values = np.frombuffer(bytes(block.data()), dtype=dtype)[: height * width].reshape(height, width)
    nodata = np.zeros((height, width), dtype=bool)
    if values.dtype.kind == "f":
        nodata |= ~np.isfinite(values)
    if block.hasNoDataValue():
        nd = block.noDataValue()
        if isinstance(nd, float) and math.isnan(nd):
            nodata |= np.isnan(values) if values.dtype.kind == "f" else False
        else:
            nodata |= values == np.asarray(nd).astype(values.dtype)
    elif block.hasNoData():  # a nodata bitmap without a value (user ranges, outside the extent): rare, slow path
        flat = nodata.reshape(-1)
        for i in range(flat.size):
            flat[i] = block.isNoData(i)
    return values, nodata


class _QtLayerSource(RasterSource):
    """Common part: the layer lives in one QThread; ``_call`` runs a function there and waits."""

    def __init__(self, uri: str, provider: str, name: str, crs: str, is_cancelled: Optional[CancelFn]):
        self._uri, self._provider, self._name, self._crs = uri, provider, name, crs
        self.is_cancelled = is_cancelled
        self._workers = QtWorkers(1, "roof-layer")
        try:
            self._info = self._call(self._open)
        except BaseException:
            self._workers.close(self._cleanup)
            raise

    def _open(self, state: Dict[str, Any]) -> Dict[str, Any]:
        state["layer"] = _open_layer(self._uri, self._provider, self._name, self._crs)
        return self._describe(state["layer"])

    def _describe(self, layer) -> Dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def _cleanup(state: Dict[str, Any]) -> None:
        state.pop("layer", None)  # deleted in the thread that made it

    def _call(self, fn, on_cancel=None) -> Any:
        future: Future = self._workers.submit(fn)
        while True:
            try:
                return future.result(timeout=0.05)
            except FutureTimeout:
                if self.is_cancelled is not None and self.is_cancelled():
                    if on_cancel is not None:
                        on_cancel()
                    future.cancel()
                    try:
                        future.result()
                    except BaseException:  # noqa: BLE001 - cancelled anyway
                        pass
                    raise Cancelled() from None

    @property
    def name(self) -> str:
        return self._name

    @property
    def warnings(self) -> List[str]:
        """Things the user should know about the read (shown with the result)."""
        return []

    def close(self) -> None:
        self._workers.close(self._cleanup)


class ProviderSource(_QtLayerSource):
    """A raster layer whose provider has pixel values and a native grid, read through ``block()``."""

    def __init__(self, uri: str, provider: str, name: str, crs: str = "", is_cancelled: Optional[CancelFn] = None):
        super().__init__(uri, provider, name, crs, is_cancelled)
        info = self._info
        self._layout = band_layout(info["bands"], info["alpha"], name)
        self._bands = sorted(set(self._layout.rgb_bands) | ({info["alpha"]} if info["alpha"] else set()))
        self._lut: Optional[np.ndarray] = info["lut"]
        self._stretch: Optional[np.ndarray] = None
        if np.dtype(info["dtype"]) != np.uint8 and self._lut is None:
            self._stretch = self._call(self._compute_stretch)

    def _describe(self, layer) -> Dict[str, Any]:
        from qgis.core import QgsRaster, QgsRasterDataProvider

        p = layer.dataProvider()
        name = self._name
        if not p.capabilities() & QgsRasterDataProvider.Size or p.xSize() <= 0 or p.ySize() <= 0:
            raise InputRasterError(f"Layer '{name}' has no pixel grid of its own; it is read as rendered images")
        dtypes = {p.dataType(b) for b in range(1, p.bandCount() + 1)}
        if len(dtypes) != 1:
            raise InputRasterError(
                f"Layer '{name}' mixes band data types; convert it to one type "
                "(Raster > Conversion > Translate, e.g. to Byte or UInt16)"
            )
        dtype = _numpy_dtype(dtypes.pop())
        if dtype is None:
            raise InputRasterError(
                f"Layer '{name}' holds complex or colour values the detector cannot read; "
                "save it as an RGB GeoTIFF first"
            )
        alpha = next((b for b in range(1, p.bandCount() + 1) if p.colorInterpretation(b) == QgsRaster.AlphaBand), None)
        lut = None
        if p.bandCount() == 1 and p.colorInterpretation(1) == QgsRaster.PaletteIndex:
            items = p.colorTable(1)
            if items:
                size = max(256, int(max(i.value for i in items)) + 1)
                lut = np.zeros((size, 3), dtype=np.float32)
                for item in items:
                    if 0 <= int(item.value) < size:
                        c = item.color
                        lut[int(item.value)] = (c.red() / 255.0, c.green() / 255.0, c.blue() / 255.0)
        if p.providerCapabilities() & QgsRasterDataProvider.ProviderHintCanPerformProviderResampling:
            p.enableProviderResampling(True)
            p.setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
            p.setZoomedOutResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Average)
        ext = p.extent()
        transform = Affine(ext.width() / p.xSize(), 0.0, ext.xMinimum(), 0.0, -ext.height() / p.ySize(), ext.yMaximum())
        return dict(
            crs_wkt=_crs_wkt(layer),
            transform=transform,
            width=p.xSize(),
            height=p.ySize(),
            bands=p.bandCount(),
            dtype=dtype.name,
            alpha=alpha,
            lut=lut,
        )

    # -- reading (in the layer's thread) ---------------------------------------------------
    def _read_block(
        self, state: Dict[str, Any], c0: int, r0: int, c1: int, r1: int, bw: int, bh: int
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Bands (raw values, ``len(bands) x bh x bw``) and validity of source pixels [c0,c1) x [r0,r1)."""
        from qgis.core import QgsRasterBlockFeedback, QgsRectangle

        p = state["layer"].dataProvider()
        t = self.transform
        extent = QgsRectangle(t.c + c0 * t.a, t.f + r1 * t.e, t.c + c1 * t.a, t.f + r0 * t.e)
        dtype = np.dtype(self._info["dtype"])
        valid = np.ones((bh, bw), dtype=bool)
        values = {}
        feedback = QgsRasterBlockFeedback()
        for band in self._bands:
            block = p.block(band, extent, bw, bh, feedback)
            if block is None or not block.isValid() or block.width() != bw or block.height() != bh:
                raise InputRasterError(
                    f"Layer '{self._name}': QGIS could not read band {band} of pixels {c0}-{c1} x {r0}-{r1}"
                )
            data, nodata = _block_array(block, dtype, bh, bw)
            values[band] = data
            valid &= ~nodata
        alpha = self._info["alpha"]
        if alpha:
            valid &= values[alpha] > 0
        return np.stack([values[b] for b in self._layout.rgb_bands]), valid

    def _compute_stretch(self, state: Dict[str, Any]) -> np.ndarray:
        factor = max(1.0, max(self.width, self.height) / STRETCH_SAMPLE_PX)
        bw, bh = max(1, int(round(self.width / factor))), max(1, int(round(self.height / factor)))
        sample, valid = self._read_block(state, 0, 0, self.width, self.height, bw, bh)
        return percentile_stretch(sample, valid)

    def read(self, window: PixelWindow, out_shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        rows, cols = int(out_shape[0]), int(out_shape[1])
        c0, r0, c1, r1 = read_span(
            window.col_off, window.row_off, window.width, window.height, out_shape, (0, 0, self.width, self.height)
        )
        # Reducing more than twice: let the provider average down to about twice the output first.
        fx = max(1.0, (window.width / cols) / 2.0)
        fy = max(1.0, (window.height / rows) / 2.0)
        bw, bh = max(1, int(round((c1 - c0) / fx))), max(1, int(round((r1 - r0) / fy)))
        sx, sy = bw / (c1 - c0), bh / (r1 - r0)
        raw, valid = self._call(lambda state: self._read_block(state, c0, r0, c1, r1, bw, bh))
        if self._lut is not None:
            idx = np.clip(raw[0].astype(np.int64), 0, self._lut.shape[0] - 1)
            rgb = np.moveaxis(self._lut[idx], -1, 0)
        else:
            rgb = scale_to_unit(raw, self._info["dtype"], self._stretch)
        return resample(
            rgb,
            valid,
            (window.col_off - c0) * sx,
            (window.row_off - r0) * sy,
            window.width * sx,
            window.height * sy,
            (rows, cols),
        )

    # -- RasterSource ------------------------------------------------------------------------
    @property
    def crs_wkt(self) -> str:
        return self._info["crs_wkt"]

    @property
    def transform(self) -> Affine:
        return self._info["transform"]

    @property
    def width(self) -> int:
        return self._info["width"]

    @property
    def height(self) -> int:
        return self._info["height"]

    @property
    def band_count(self) -> int:
        return self._info["bands"]

    @property
    def dtype(self) -> str:
        return self._info["dtype"]


@dataclass(frozen=True)
class RenderGrid:
    """The pixel grid a render-only layer is requested on: the area at the model's GSD."""

    transform: Affine
    width: int
    height: int

    @property
    def chunks(self) -> Tuple[int, int]:
        return (math.ceil(self.width / CHUNK_PX), math.ceil(self.height / CHUNK_PX))


def render_grid(bounds: Tuple[float, float, float, float], crs_wkt: str, gsd_m: float) -> RenderGrid:
    """A north-up grid over ``bounds`` (layer CRS) whose pixels measure ``gsd_m`` on the ground."""
    from .xyz import ground_m_per_unit

    minx, miny, maxx, maxy = bounds
    if not (maxx > minx and maxy > miny):
        raise InputRasterError("The area of interest is empty")
    mx, my = ground_m_per_unit(bounds, crs_wkt)
    rx, ry = gsd_m / mx, gsd_m / my
    width = max(1, int(math.ceil((maxx - minx) / rx - 1e-6)))
    height = max(1, int(math.ceil((maxy - miny) / ry - 1e-6)))
    return RenderGrid(Affine(rx, 0.0, minx, 0.0, -ry, maxy), width, height)


class RenderedSource(RenderedRgbGrid, _QtLayerSource):
    """A render-only layer (WMS, WMTS...) requested in chunks over an area at the model's GSD."""

    def __init__(
        self,
        uri: str,
        provider: str,
        name: str,
        bounds: Tuple[float, float, float, float],
        gsd_m: float,
        crs: str = "",
        is_cancelled: Optional[CancelFn] = None,
        retry: Optional[RetryPolicy] = None,
    ):
        self._bounds, self._gsd_m = bounds, gsd_m
        self.retry = retry or DEFAULT_RETRY
        super().__init__(uri, provider, name, crs, is_cancelled)
        self.grid: RenderGrid = self._info["grid"]
        self._cache: "OrderedDict[Tuple[int, int], np.ndarray]" = OrderedDict()
        self._had_data = False
        self.requests = 0
        self.empty_chunks = 0

    def _describe(self, layer) -> Dict[str, Any]:
        crs_wkt = _crs_wkt(layer)
        return dict(crs_wkt=crs_wkt, grid=render_grid(self._bounds, crs_wkt, self._gsd_m))

    def _render_chunk(self, state: Dict[str, Any], cx: int, cy: int) -> np.ndarray:
        """RGBA uint8 of chunk (cx, cy) from one ``provider.block()`` call (in the layer's thread)."""
        from qgis.core import Qgis, QgsRasterBlockFeedback, QgsRectangle

        g = self.grid
        c0, r0 = cx * CHUNK_PX, cy * CHUNK_PX
        w, h = min(CHUNK_PX, g.width - c0), min(CHUNK_PX, g.height - r0)
        t = g.transform
        extent = QgsRectangle(t.c + c0 * t.a, t.f + (r0 + h) * t.e, t.c + (c0 + w) * t.a, t.f + r0 * t.e)
        p = state["layer"].dataProvider()
        feedback = QgsRasterBlockFeedback()
        state["feedback"] = feedback
        try:
            block = p.block(1, extent, w, h, feedback)
        finally:
            state.pop("feedback", None)
        if feedback.isCanceled():
            raise Cancelled()
        if block is None or not block.isValid() or block.width() != w or block.height() != h:
            return np.zeros((h, w, 4), dtype=np.uint8)
        argb = np.frombuffer(bytes(block.data()), dtype="<u4")[: w * h].reshape(h, w)
        rgba = np.empty((h, w, 4), dtype=np.uint8)
        rgba[..., 0] = (argb >> 16) & 0xFF
        rgba[..., 1] = (argb >> 8) & 0xFF
        rgba[..., 2] = argb & 0xFF
        rgba[..., 3] = argb >> 24
        if block.dataType() == Qgis.ARGB32_Premultiplied:
            a = rgba[..., 3:4].astype(np.float32)
            rgb = np.where(a > 0, rgba[..., :3] * (255.0 / np.maximum(a, 1.0)), 0.0)
            rgba[..., :3] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return rgba

    def _cancel_running(self) -> None:
        feedback = self._workers.state(0).get("feedback")
        if feedback is not None:
            feedback.cancel()

    def _chunk(self, cx: int, cy: int) -> np.ndarray:
        key = (cx, cy)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rgba = None
        for attempt in range(1, self.retry.attempts + 1):
            if self.is_cancelled is not None and self.is_cancelled():
                raise Cancelled()
            self.requests += 1
            rgba = self._call(lambda state: self._render_chunk(state, cx, cy), on_cancel=self._cancel_running)
            if rgba[..., 3].any():
                self._had_data = True
                break
            if attempt < self.retry.attempts:
                sleep_unless_cancelled(self.retry.delay(attempt), self.is_cancelled)
        else:
            if not self._had_data:
                raise ServiceError(
                    f"Layer '{self._name}' returned no image for the area after {self.retry.attempts} attempts: "
                    "the service may be down or unreachable, or have no imagery here. Check that the layer "
                    "shows on the map at this place; nothing was written."
                )
            self.empty_chunks += 1
        self._cache[key] = rgba
        while len(self._cache) > CHUNK_CACHE:
            self._cache.popitem(last=False)
        return rgba

    def read(self, window: PixelWindow, out_shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        g = self.grid
        c0, r0, c1, r1 = read_span(
            window.col_off, window.row_off, window.width, window.height, out_shape, (0, 0, g.width, g.height)
        )
        rgba = np.zeros((r1 - r0, c1 - c0, 4), dtype=np.uint8)
        for cy in range(r0 // CHUNK_PX, (r1 - 1) // CHUNK_PX + 1):
            for cx in range(c0 // CHUNK_PX, (c1 - 1) // CHUNK_PX + 1):
                paste(rgba, c0, r0, self._chunk(cx, cy), cx * CHUNK_PX, cy * CHUNK_PX)
        return resample_rgba(rgba, window.col_off - c0, window.row_off - r0, window.width, window.height, out_shape)

    @property
    def warnings(self) -> List[str]:
        if not self.empty_chunks:
            return []
        return [
            f"{self.empty_chunks} of {self.requests} image requests to layer '{self._name}' came back "
            "empty; those parts count as no imagery."
        ]

    def close(self) -> None:
        super().close()
        self._cache.clear()

    # -- RasterSource ------------------------------------------------------------------------
    @property
    def crs_wkt(self) -> str:
        return self._info["crs_wkt"]
