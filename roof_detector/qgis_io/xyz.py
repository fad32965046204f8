"""XYZ tile services (OpenStreetMap-style ``{z}/{x}/{y}`` URLs) as a :class:`RasterSource`.

QGIS's own XYZ provider fetches tiles silently: a tile that fails comes back
transparent with no error anybody can see (checked on 3.22), so a detection
on it would quietly miss buildings. This reader therefore fetches the tiles
itself, still through QGIS's network stack (proxy, authentication, SSL and
the QGIS network cache), and keeps control of what matters here:

* the zoom level is the one whose pixel size is closest to the model's
  ground sample distance at the area's latitude; the engine then resamples
  from it like from any raster;
* at most ``max_in_flight`` requests run at once (QThreads, see
  :mod:`.workers`);
* failed requests (no answer, 408/425/429, 5xx, not an image) are retried
  with exponential back-off; what still fails stops the run with a message
  naming the service, and no partial result is made;
* 404/204 tiles mean "no imagery here" (normal at a service's edge) and
  count as nodata;
* cancel is checked before every request and while backing off.

The pixel grid is the tile grid of the chosen zoom level (EPSG:3857),
restricted to the area of interest: the whole world is never a raster here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np
from affine import Affine

from ..core.errors import Cancelled
from ..core.raster_source import PixelWindow, RasterSource, RenderedRgbGrid
from .resample import paste, read_span, resample_rgba
from .tile_decode import decode_tile
from .workers import (
    DEFAULT_RETRY,
    CancelFn,
    HttpResult,
    QtWorkers,
    RetryPolicy,
    ServiceError,
    http_get,
    is_transient,
    with_retries,
)

WEB_MERCATOR_HALF = 20037508.342789244  # metres from the origin to the edge of EPSG:3857
BASE_TILE_PX = 256
DEFAULT_ZMIN, DEFAULT_ZMAX = 0, 18  # QGIS's defaults for an XYZ layer without zmin/zmax
MAX_IN_FLIGHT = 4  # requests running at once (browsers use about 6 per host)
TILE_CACHE_BYTES = 128 * 1024 * 1024  # decoded tiles kept in memory (about two rows of a 40 km area)
EMPTY_STATUSES = (204, 404)  # "no tile here": nodata, not a failure

TileKey = Tuple[int, int, int]  # z, x, y


@dataclass(frozen=True)
class XyzTemplate:
    """What an XYZ layer's source says: URL template, zoom range, tile size and headers."""

    url: str
    zmin: int = DEFAULT_ZMIN
    zmax: int = DEFAULT_ZMAX
    pixel_ratio: float = 1.0  # tilePixelRatio: 2 for 512 px "retina" tiles
    headers: Tuple[Tuple[str, str], ...] = ()
    authcfg: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc or self.url

    @property
    def tile_px(self) -> int:
        return int(round(BASE_TILE_PX * self.pixel_ratio))

    def tile_url(self, z: int, x: int, y: int) -> str:
        url = self.url.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))
        url = url.replace("{-y}", str((1 << z) - 1 - y))
        if "{q}" in url:
            url = url.replace("{q}", quadkey(z, x, y))
        return url

    @classmethod
    def from_params(cls, params: Dict[str, str]) -> "XyzTemplate":
        """From the decoded source of a QGIS XYZ layer (``type=xyz&url=...&zmin=..&zmax=..``)."""
        url = params.get("url", "")
        xyz = "{x}" in url and ("{y}" in url or "{-y}" in url) and "{z}" in url
        if not (xyz or "{q}" in url):
            raise ServiceError(
                f"The XYZ layer's URL '{url}' has no {{x}}/{{y}}/{{z}} placeholders; "
                "check the connection in the Browser panel (XYZ Tiles)"
            )

        def as_int(key: str, default: int) -> int:
            try:
                return int(float(params.get(key, default)))
            except (TypeError, ValueError):
                return default

        zmin, zmax = as_int("zmin", DEFAULT_ZMIN), as_int("zmax", DEFAULT_ZMAX)
        try:
            ratio = float(params.get("tilePixelRatio", 1) or 1)
        except ValueError:
            ratio = 1.0
        headers = [(k[len("http-header:") :], str(v)) for k, v in params.items() if k.startswith("http-header:")]
        if params.get("referer") and not any(k.lower() == "referer" for k, _ in headers):
            headers.append(("Referer", str(params["referer"])))
        return cls(
            url,
            max(0, min(zmin, zmax)),
            max(zmin, zmax),
            ratio if ratio > 0 else 1.0,
            tuple(headers),
            str(params.get("authcfg", "")),
        )


def quadkey(z: int, x: int, y: int) -> str:
    """Bing-style quadkey of a tile."""
    digits = []
    for i in range(z, 0, -1):
        mask = 1 << (i - 1)
        digits.append(str((1 if x & mask else 0) + (2 if y & mask else 0)))
    return "".join(digits)


def zoom_resolution(z: int, pixel_ratio: float = 1.0) -> float:
    """Size of a tile pixel at zoom ``z``, in EPSG:3857 units."""
    return 2.0 * WEB_MERCATOR_HALF / (BASE_TILE_PX * pixel_ratio * (1 << z))


def choose_zoom(resolution: float, zmin: int, zmax: int, pixel_ratio: float = 1.0) -> int:
    """The zoom level in ``[zmin, zmax]`` whose pixel size (EPSG:3857 units) is closest to ``resolution``."""
    return min(range(zmin, zmax + 1), key=lambda z: (abs(zoom_resolution(z, pixel_ratio) - resolution), -z))


def web_mercator_wkt() -> str:
    from pyproj import CRS

    return CRS.from_epsg(3857).to_wkt()


def ground_m_per_unit(bounds: Tuple[float, float, float, float], crs_wkt: str) -> Tuple[float, float]:
    """Ground metres of one CRS unit (x, y) at the centre of ``bounds``."""
    from ..core.geo import pixel_size_m

    cx, cy = (bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0
    scale = 1e-6 if abs(bounds[2] - bounds[0]) < 10 else 1.0  # degrees: measure a small step
    mx, my = pixel_size_m(crs_wkt, Affine(scale, 0, cx - scale / 2, 0, -scale, cy + scale / 2), 1, 1)
    return mx / scale, my / scale


@dataclass(frozen=True)
class XyzPlan:
    """The tile requests for one area: zoom, pixel grid, tile ranges."""

    zoom: int
    resolution: float  # EPSG:3857 units per tile pixel
    col0: int  # pixel grid origin in global tile pixels
    row0: int
    width: int
    height: int
    tile_px: int
    ground_px_m: float  # ground size of a tile pixel at the area's centre

    @property
    def transform(self) -> Affine:
        r = self.resolution
        return Affine(r, 0.0, -WEB_MERCATOR_HALF + self.col0 * r, 0.0, -r, WEB_MERCATOR_HALF - self.row0 * r)

    @property
    def tile_range(self) -> Tuple[int, int, int, int]:
        """(x0, y0, x1, y1) inclusive tile indexes covering the grid."""
        t = self.tile_px
        return (self.col0 // t, self.row0 // t, (self.col0 + self.width - 1) // t, (self.row0 + self.height - 1) // t)

    @property
    def tile_count(self) -> int:
        x0, y0, x1, y1 = self.tile_range
        return (x1 - x0 + 1) * (y1 - y0 + 1)


def plan_xyz(bounds: Tuple[float, float, float, float], template: XyzTemplate, gsd_m: float) -> XyzPlan:
    """Zoom and pixel grid for ``bounds`` (EPSG:3857) at the model's ``gsd_m`` metres per pixel."""
    minx, miny, maxx, maxy = (
        max(-WEB_MERCATOR_HALF, bounds[0]),
        max(-WEB_MERCATOR_HALF, bounds[1]),
        min(WEB_MERCATOR_HALF, bounds[2]),
        min(WEB_MERCATOR_HALF, bounds[3]),
    )
    if not (maxx > minx and maxy > miny):
        raise ServiceError("The area lies outside the Web Mercator world of the XYZ layer")
    m_per_unit = ground_m_per_unit((minx, miny, maxx, maxy), web_mercator_wkt())[0]
    zoom = choose_zoom(gsd_m / m_per_unit, template.zmin, template.zmax, template.pixel_ratio)
    r = zoom_resolution(zoom, template.pixel_ratio)
    world_px = template.tile_px * (1 << zoom)
    col0 = max(0, int(math.floor((minx + WEB_MERCATOR_HALF) / r + 1e-6)))
    row0 = max(0, int(math.floor((WEB_MERCATOR_HALF - maxy) / r + 1e-6)))
    col1 = min(world_px, int(math.ceil((maxx + WEB_MERCATOR_HALF) / r - 1e-6)))
    row1 = min(world_px, int(math.ceil((WEB_MERCATOR_HALF - miny) / r - 1e-6)))
    return XyzPlan(zoom, r, col0, row0, max(1, col1 - col0), max(1, row1 - row0), template.tile_px, r * m_per_unit)


@dataclass
class FetchStats:
    """Counters for the log and the tests."""

    requests: int = 0
    retries: int = 0
    tiles: int = 0
    empty_tiles: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TileFetcher:
    """Fetches tiles of one template with bounded parallelism, retries and cancel."""

    def __init__(
        self,
        template: XyzTemplate,
        is_cancelled: Optional[CancelFn] = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        retry: Optional[RetryPolicy] = None,
    ):
        self.template = template
        self.is_cancelled = is_cancelled
        self.retry = retry or DEFAULT_RETRY
        self.stats = FetchStats()
        self._workers = QtWorkers(max_in_flight, "roof-xyz")

    def close(self) -> None:
        self._workers.close()

    def _fetch_one(self, key: TileKey, stop: threading.Event) -> Optional[np.ndarray]:
        z, x, y = key
        url = self.template.tile_url(z, x, y)
        headers = dict(self.template.headers)
        stats = self.stats

        def attempt():
            with stats.lock:
                stats.requests += 1
            result: HttpResult = http_get(url, headers, self.template.authcfg)
            if not result.error:
                image = decode_tile(result.content, self.template.tile_px)
                if image is not None:
                    return True, image, None
                return False, HttpResult(result.status, b"", "the answer is not an image", False), None
            if result.status in EMPTY_STATUSES:
                return True, None, None
            if not is_transient(result):
                raise ServiceError(
                    f"The tile service {self.template.host} refused tile {z}/{x}/{y} "
                    f"(HTTP {result.status}: {result.error}). Check the layer's URL and authentication "
                    "(Browser panel > XYZ Tiles > Edit Connection); nothing was written."
                )
            return False, result, result.retry_after

        done, value, attempts = with_retries(attempt, self.retry, self.is_cancelled, stop)
        with stats.lock:
            stats.retries += attempts - 1
            stats.tiles += 1
            stats.empty_tiles += int(done and value is None)
        if not done:
            reason = value.error if isinstance(value, HttpResult) else "unknown error"
            raise ServiceError(
                f"The tile service {self.template.host} did not deliver tile {z}/{x}/{y} after {attempts} "
                f"attempts ({reason}). It may be down or unreachable: check the network connection, or try "
                "again later; nothing was written."
            )
        return value

    def fetch(self, keys: Sequence[TileKey]) -> Dict[TileKey, Optional[np.ndarray]]:
        """Fetch ``keys`` (at most ``max_in_flight`` at once); raise on failure or cancel."""
        if not keys:
            return {}
        if self.is_cancelled is not None and self.is_cancelled():
            raise Cancelled()
        t0 = time.perf_counter()
        stop = threading.Event()
        futures: Dict[Future, TileKey] = {
            self._workers.submit(lambda _state, k=k: self._fetch_one(k, stop)): k for k in keys
        }
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.05, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()
                if pending and self.is_cancelled is not None and self.is_cancelled():
                    raise Cancelled()
            return {futures[f]: f.result() for f in futures}
        finally:
            stop.set()  # a failure or cancel: requests not started yet are not made
            for future in futures:
                future.cancel()
            wait(list(futures))
            self.stats.seconds += time.perf_counter() - t0


class XyzTileSource(RenderedRgbGrid, RasterSource):
    """An XYZ tile service over an area, at the zoom level closest to the model's GSD."""

    def __init__(
        self,
        template: XyzTemplate,
        bounds: Tuple[float, float, float, float],
        gsd_m: float,
        name: str = "XYZ layer",
        is_cancelled: Optional[CancelFn] = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        retry: Optional[RetryPolicy] = None,
    ):
        self.template = template
        self.plan = plan_xyz(bounds, template, gsd_m)
        self._name = name
        self._crs_wkt = web_mercator_wkt()
        self._fetcher = TileFetcher(template, is_cancelled, max_in_flight, retry)
        self._cache: "OrderedDict[TileKey, Optional[np.ndarray]]" = OrderedDict()
        t = template.tile_px
        self._cache_tiles = max(16, TILE_CACHE_BYTES // (t * t * 4))

    # -- RasterSource ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def crs_wkt(self) -> str:
        return self._crs_wkt

    @property
    def grid(self) -> XyzPlan:
        return self.plan

    @property
    def stats(self) -> FetchStats:
        return self._fetcher.stats

    @property
    def warnings(self) -> List[str]:
        s = self.stats
        if s.tiles and s.empty_tiles:
            return [
                f"{s.empty_tiles} of {s.tiles} tiles of {self.template.host} do not exist (HTTP 404/204); "
                "they count as no imagery."
            ]
        return []

    def read(self, window: PixelWindow, out_shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        plan = self.plan
        win = window
        gc0, gr0 = plan.col0 + win.col_off, plan.row0 + win.row_off
        # Only tiles of the planned grid are requested (what the dialog counted); the filter
        # treats pixels past its edge as missing, as GDAL does at a file's edge.
        c0, r0, c1, r1 = read_span(
            gc0,
            gr0,
            win.width,
            win.height,
            out_shape,
            (plan.col0, plan.row0, plan.col0 + plan.width, plan.row0 + plan.height),
        )
        t = plan.tile_px
        keys = [
            (plan.zoom, tx, ty) for ty in range(r0 // t, (r1 - 1) // t + 1) for tx in range(c0 // t, (c1 - 1) // t + 1)
        ]
        tiles = self._tiles(keys)
        rgba = np.zeros((r1 - r0, c1 - c0, 4), dtype=np.uint8)
        for (_, tx, ty), tile in tiles.items():
            if tile is not None:  # decode_tile makes every tile t x t
                paste(rgba, c0, r0, tile, tx * t, ty * t)
        return resample_rgba(rgba, gc0 - c0, gr0 - r0, win.width, win.height, out_shape)

    def _tiles(self, keys: List[TileKey]) -> Dict[TileKey, Optional[np.ndarray]]:
        missing = [k for k in keys if k not in self._cache]
        fetched = self._fetcher.fetch(missing)
        out: Dict[TileKey, Optional[np.ndarray]] = {}
        for key in keys:
            if key in fetched:
                value = fetched[key]
                self._cache[key] = value
            else:
                value = self._cache[key]
                self._cache.move_to_end(key)
            out[key] = value
        while len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)
        return out

    def close(self) -> None:
        self._fetcher.close()
        self._cache.clear()
