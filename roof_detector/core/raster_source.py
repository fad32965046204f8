"""Reading imagery for the detector: the :class:`RasterSource` interface.

The tiling, inference and stitching code only talk to :class:`RasterSource`,
so imagery can come from a file (:class:`RasterioSource`, here) or from any
other reader (a QGIS data provider for WMS/XYZ/VRT layers, later) that can
answer the same few questions: CRS, affine transform, size, and "give me this
window resampled to that many pixels as RGB in [0, 1] with a validity mask".

Band handling (shared by every source through :func:`band_layout`):

* 1 band: grey, replicated to R, G and B (a colour table is applied); a
  panchromatic uint16 image works this way.
* 2 bands: grey + alpha when band 2 is flagged alpha; two data bands
  (e.g. red + NIR) are refused.
* 3 bands: RGB.
* 4 bands: RGBA when band 4 is flagged alpha (alpha becomes validity), else
  RGB + NIR (the first three bands are used).
* anything else (5 bands and more) is refused with a message saying how to
  make an RGB file.

Values: uint8 is divided by 255; every other type (uint16, int16, int32,
float32, float64...) is stretched per band between its 2nd and 98th
percentiles, computed once on a decimated read of the whole raster (the
same stretch for every tile, so tiles match).

Pixels flagged by a nodata value, an internal/external GDAL mask band or an
alpha band are invalid, and so are NaN/infinite values of real rasters:
their RGB is set to 0 and they never become buildings.
"""

from __future__ import annotations

import abc
import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Optional, Tuple

import numpy as np
from affine import Affine

from .errors import InputRasterError

# Long side of the decimated read used for the percentile stretch; large
# enough for stable percentiles, small enough to read in well under a second.
STRETCH_SAMPLE_PX = 1024
STRETCH_PERCENTILES = (2.0, 98.0)


class PixelWindow(NamedTuple):
    """A window in source pixel coordinates; offsets and sizes may be fractional."""

    col_off: float
    row_off: float
    width: float
    height: float


@dataclass(frozen=True)
class BandLayout:
    """Which source bands feed R, G, B, and how the fourth band is used."""

    rgb_bands: Tuple[int, int, int]  # 1-based band indexes
    description: str  # e.g. "grey", "RGB", "RGBA", "RGB+NIR"


def band_layout(band_count: int, alpha_band: Optional[int] = None, name: str = "raster") -> BandLayout:
    """Map a band count to RGB band indexes; raise :class:`InputRasterError` if unsupported.

    ``alpha_band`` is the 1-based index of a band flagged as alpha, if any.
    """
    if band_count == 1:
        return BandLayout((1, 1, 1), "grey")
    if band_count == 2 and alpha_band == 2:
        return BandLayout((1, 1, 1), "grey+alpha")
    if band_count == 3:
        return BandLayout((1, 2, 3), "RGB")
    if band_count == 4:
        return BandLayout((1, 2, 3), "RGBA" if alpha_band == 4 else "RGB+NIR")
    raise InputRasterError(
        f"{name} has {band_count} bands{' (none flagged alpha)' if band_count == 2 else ''}; the detector "
        "needs 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA or RGB+NIR) bands. Make an RGB copy first, "
        "e.g. `gdal_translate -b 3 -b 2 -b 1 in.tif rgb.tif` with the band numbers of red, green and blue"
    )


def check_north_up(transform: Affine, name: str = "raster") -> None:
    """Refuse rotated, sheared or south-up geotransforms (the tiling assumes north-up)."""
    if transform.b != 0 or transform.d != 0:
        raise InputRasterError(
            f"{name} has a rotated or sheared geotransform; the detector needs a north-up raster. "
            "Warp it first, e.g. `gdalwarp in.tif northup.tif`"
        )
    if not (transform.a > 0 and transform.e < 0):
        raise InputRasterError(
            f"{name} is not north-up (pixel size {transform.a}, {transform.e}); "
            "warp it first, e.g. `gdalwarp in.tif northup.tif`"
        )


def percentile_stretch(
    sample: np.ndarray, valid: np.ndarray, percentiles: Tuple[float, float] = STRETCH_PERCENTILES
) -> np.ndarray:
    """Per-band ``(low, high)`` of a ``bands x H x W`` sample over its valid pixels.

    Returns an array of shape ``bands x 2``. A flat band (high <= low) falls
    back to its min/max, then to ``low + 1`` so the division stays defined.
    """
    out = np.zeros((sample.shape[0], 2), dtype=np.float64)
    for i, band in enumerate(sample):
        vals = band[valid & np.isfinite(band)].astype(np.float64)
        if vals.size == 0:
            out[i] = (0.0, 1.0)
            continue
        lo, hi = np.percentile(vals, percentiles)
        if hi <= lo:
            lo, hi = float(vals.min()), float(vals.max())
        if hi <= lo:
            hi = lo + 1.0
        out[i] = (lo, hi)
    return out


def scale_to_unit(data: np.ndarray, dtype: np.dtype, stretch: Optional[np.ndarray]) -> np.ndarray:
    """Scale raw band values (bands x H x W) to float32 [0, 1]: /255 for uint8, else ``stretch``."""
    if np.dtype(dtype) == np.uint8 or stretch is None:
        return np.multiply(data, np.float32(1.0 / 255.0), dtype=np.float32)  # one pass, no int->float copy
    lo = stretch[:, 0].astype(np.float32)[:, None, None]
    hi = stretch[:, 1].astype(np.float32)[:, None, None]
    out = (data.astype(np.float32) - lo) / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    out[~np.isfinite(out)] = 0.0
    return out


class RasterSource(abc.ABC):
    """Imagery the detector can read: georeferencing plus resampled RGB windows.

    Implementations must be north-up (``transform.b == transform.d == 0``) and
    report their CRS as WKT. :meth:`read` is called from one worker thread at
    a time (the inference prefetcher), never concurrently.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A label for messages (file path, layer name)."""

    @property
    @abc.abstractmethod
    def crs_wkt(self) -> str:
        """The CRS of the pixel grid, as WKT."""

    @property
    @abc.abstractmethod
    def transform(self) -> Affine:
        """Affine transform from (col, row) pixel corners to CRS coordinates."""

    @property
    @abc.abstractmethod
    def width(self) -> int:
        """Number of pixel columns."""

    @property
    @abc.abstractmethod
    def height(self) -> int:
        """Number of pixel rows."""

    @property
    @abc.abstractmethod
    def band_count(self) -> int:
        """Number of bands of the underlying data."""

    @property
    @abc.abstractmethod
    def dtype(self) -> str:
        """Numpy name of the underlying data type, e.g. ``"uint8"``."""

    @abc.abstractmethod
    def read(self, window: PixelWindow, out_shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """Read ``window`` resampled (bilinear) to ``out_shape`` = (rows, cols).

        Returns ``(rgb, valid)``: float32 ``3 x rows x cols`` in [0, 1] (0 where
        invalid) and a bool ``rows x cols`` validity mask. The window must lie
        inside the raster.
        """

    def close(self) -> None:
        """Release the underlying data set (no-op by default)."""

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RenderedRgbGrid:
    """Mixin for sources that render 8-bit RGB onto a pixel grid they plan themselves
    (map layers drawn by QGIS, XYZ tile services): the grid gives the georeferencing.

    The class using it provides ``grid``, any object with ``transform``, ``width``
    and ``height``; list the mixin before the RasterSource base so its properties win.
    """

    grid: Any

    @property
    def transform(self) -> Affine:
        return self.grid.transform

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def band_count(self) -> int:
        return 3

    @property
    def dtype(self) -> str:
        return "uint8"


#: Paths GDAL would fetch or unpack itself: refused with a plain word rather than "file not found".
REMOTE_OR_ARCHIVE_PREFIXES = ("/vsi", "http://", "https://", "ftp://", "s3://", "gs://", "zip://", "tar://")


class RasterioSource(RasterSource):
    """A raster file read with rasterio (anything GDAL opens: GeoTIFF, VRT, JPEG2000...)."""

    def __init__(self, path: str | os.PathLike, stretch: Optional[np.ndarray] = None, allow_remote: bool = False):
        """``stretch`` (bands x 2, as :attr:`stretch` gives it) replaces the raster's own percentile
        stretch of non-uint8 data: the tiles of one mosaic must share one stretch.

        ``allow_remote``: a ``/vsicurl/http(s)://`` path is read too (by GDAL, with HTTP Range
        requests); only for callers that decided the URL may be read (the REST service's allow-list).
        """
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self._path = str(path)
        remote = allow_remote and self._path.startswith(("/vsicurl/http://", "/vsicurl/https://"))
        if not remote and self._path.lower().startswith(REMOTE_OR_ARCHIVE_PREFIXES):
            raise InputRasterError(
                f"{self._path}: remote and archive paths (/vsicurl/, http(s)://, /vsizip/...) "
                "are not supported; download or unzip the raster to a local file first "
                "(e.g. gdal_translate SOURCE local.tif), or add it to QGIS as a layer"
            )
        if not remote and not os.path.exists(self._path):
            raise InputRasterError(f"Raster file not found: {self._path}")
        if not remote and os.path.isdir(self._path):
            raise InputRasterError(f"{self._path} is a directory, not a raster file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self._path)
        except RasterioIOError as exc:
            detail = str(exc).splitlines()[0]
            if remote:  # an HTTP error, a timeout or not an image: the cause in brackets says which
                raise InputRasterError(
                    f"{self._path} cannot be read as a raster ({detail}); check that the URL answers "
                    "and names an image such as a GeoTIFF"
                ) from None
            raise InputRasterError(
                f"{self._path} is not a raster GDAL can read ({detail}); check the file is an image such as a GeoTIFF"
            ) from None
        try:
            self._init_checks(stretch)
        except BaseException:
            self._ds.close()
            raise

    def _init_checks(self, stretch: Optional[np.ndarray] = None) -> None:
        from rasterio.enums import ColorInterp

        ds = self._ds
        name = self._path
        if ds.crs is None:
            hint = (
                (" It is georeferenced by ground control points only: warp it first (`gdalwarp in.tif out.tif`).")
                if ds.gcps[0]
                else ""
            )
            raise InputRasterError(
                f"{name} has no coordinate reference system (CRS).{hint} Assign one, e.g. "
                "`gdal_edit.py -a_srs EPSG:XXXX file.tif`, or in QGIS with Raster > Projections > Assign Projection"
            )
        if ds.transform == Affine.identity():
            raise InputRasterError(
                f"{name} has a CRS but no geotransform (pixel positions are unknown); "
                "georeference it in QGIS (Georeferencer) or with gdal_translate -a_ullr"
            )
        check_north_up(ds.transform, name)
        dtypes = set(ds.dtypes)
        if len(dtypes) != 1:
            raise InputRasterError(
                f"{name} mixes band data types {sorted(dtypes)}; convert it to one type "
                "(gdal_translate -ot Byte or UInt16)"
            )
        self._dtype = ds.dtypes[0]
        if np.dtype(self._dtype).kind not in "uif":
            raise InputRasterError(f"{name} holds {self._dtype} pixels; only integer or real values are supported")
        alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
        self._layout = band_layout(ds.count, alpha[0] if alpha else None, name)
        self._lut: Optional[np.ndarray] = None
        if ds.count == 1:
            try:
                cmap = ds.colormap(1)
            except ValueError:  # no colour table
                cmap = None
            if cmap:
                # A paletted raster: indexes are not brightness, map them to RGB.
                lut = np.zeros((max(256, max(cmap) + 1), 3), dtype=np.float32)
                for idx, rgba in cmap.items():
                    lut[idx] = np.asarray(rgba[:3], dtype=np.float32) / 255.0
                self._lut = lut
        from rasterio.enums import MaskFlags

        # No nodata, alpha or mask band: every pixel is valid and the mask need not be read
        # (reading it cost 0.5 ms per 256 px tile, a quarter of the read time).
        self._all_valid = all(list(flags) == [MaskFlags.all_valid] for flags in ds.mask_flag_enums)
        self._stretch: Optional[np.ndarray] = None
        if np.dtype(self._dtype) != np.uint8 and self._lut is None:
            self._stretch = np.asarray(stretch, dtype=np.float64) if stretch is not None else self._compute_stretch()

    def _compute_stretch(self) -> np.ndarray:
        """Percentile stretch of the distinct bands, on one decimated read of the whole raster."""
        from rasterio.enums import Resampling

        ds = self._ds
        factor = max(1.0, max(ds.width, ds.height) / STRETCH_SAMPLE_PX)
        shape = (max(1, int(round(ds.height / factor))), max(1, int(round(ds.width / factor))))
        bands = sorted(set(self._layout.rgb_bands))
        with read_errors_named(self._path, None):
            sample = ds.read(bands, out_shape=(len(bands),) + shape, resampling=Resampling.nearest)
            valid = ds.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
        if np.dtype(self._dtype).kind == "f":
            valid &= np.isfinite(sample).all(axis=0)
        per_band = percentile_stretch(sample, valid)
        return np.stack([per_band[bands.index(b)] for b in self._layout.rgb_bands])

    # -- RasterSource -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._path

    @property
    def crs_wkt(self) -> str:
        return self._ds.crs.to_wkt()

    @property
    def transform(self) -> Affine:
        return self._ds.transform

    @property
    def width(self) -> int:
        return self._ds.width

    @property
    def height(self) -> int:
        return self._ds.height

    @property
    def band_count(self) -> int:
        return self._ds.count

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def layout(self) -> BandLayout:
        """How the bands were interpreted (grey, RGB, RGBA, RGB+NIR)."""
        return self._layout

    @property
    def stretch(self) -> Optional[np.ndarray]:
        """Per-band (low, high) used for non-uint8 data, ``None`` for uint8 / paletted."""
        return self._stretch

    def read(self, window: PixelWindow, out_shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        rows, cols = int(out_shape[0]), int(out_shape[1])
        win = Window(*_clamp_window(window, self.width, self.height))
        # Palette indexes must not be interpolated; everything else is read bilinear
        # (GDAL widens the kernel when downsampling, so it does not alias).
        resampling = Resampling.nearest if self._lut is not None else Resampling.bilinear
        bands = sorted(set(self._layout.rgb_bands))
        with read_errors_named(self._path, win):
            raw = self._ds.read(bands, window=win, out_shape=(len(bands), rows, cols), resampling=resampling)
            if self._all_valid:
                valid = np.ones((rows, cols), dtype=bool)
            else:
                valid = self._ds.dataset_mask(window=win, out_shape=(rows, cols), resampling=Resampling.nearest) > 0
        if np.dtype(self._dtype).kind == "f":  # NaN without a declared nodata is still no data
            valid &= np.isfinite(raw).all(axis=0)
        if self._lut is not None:
            idx = np.clip(raw[0].astype(np.int64), 0, self._lut.shape[0] - 1)
            rgb = np.moveaxis(self._lut[idx], -1, 0)
        else:
            raw = raw[[bands.index(b) for b in self._layout.rgb_bands]]
            rgb = scale_to_unit(raw, self._dtype, self._stretch)
        rgb = np.ascontiguousarray(rgb, dtype=np.float32)
        if not self._all_valid or not valid.all():
            rgb[:, ~valid] = 0.0
        return rgb, valid

    def close(self) -> None:
        self._ds.close()


@contextlib.contextmanager
def read_errors_named(path: str, window) -> Iterator[None]:
    """Turn GDAL's read failure (a damaged file, a VRT whose source is gone) into one line naming both.

    ``window`` is a rasterio/pixel window (None: a decimated read of the whole raster).
    """
    from rasterio.errors import RasterioIOError

    try:
        yield
    except RasterioIOError as exc:
        cause = exc.__cause__ or exc.__context__
        detail = " ".join(str(cause or exc).split())
        where = (
            "the whole raster (decimated)"
            if window is None
            else (
                f"window col {int(window.col_off)}, row {int(window.row_off)}, "
                f"{int(round(window.width))} x {int(round(window.height))} px"
            )
        )
        raise InputRasterError(
            f"{path} is damaged or incomplete: reading {where} failed ({detail}). Nothing was "
            "written; re-export or repair the file (e.g. gdal_translate), or for a VRT check "
            "that every source file it lists is there"
        ) from None


def _clamp_window(window: PixelWindow, width: int, height: int) -> PixelWindow:
    """Trim float rounding spill (a window built from grid maths may exceed the edge by 1e-9)."""
    c0 = min(max(window.col_off, 0.0), float(width))
    r0 = min(max(window.row_off, 0.0), float(height))
    c1 = min(max(window.col_off + window.width, 0.0), float(width))
    r1 = min(max(window.row_off + window.height, 0.0), float(height))
    return PixelWindow(c0, r0, max(c1 - c0, 1e-6), max(r1 - r0, 1e-6))


def open_source(source: "RasterSource | str | os.PathLike") -> Tuple[RasterSource, bool]:
    """Return ``(source, owned)``: a path is opened with rasterio (owned, caller closes it)."""
    if isinstance(source, RasterSource):
        return source, False
    return RasterioSource(source), True


__all__ = (
    "PixelWindow",
    "BandLayout",
    "RasterSource",
    "RasterioSource",
    "band_layout",
    "check_north_up",
    "percentile_stretch",
    "scale_to_unit",
    "open_source",
)
