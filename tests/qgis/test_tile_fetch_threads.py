"""Web tiles: decoding every image layout without Qt, and parallel fetching without a deadlock.

The tile workers are QThreads. Until 0.2.x they decoded with
``QImage.fromData`` and requested with a ``QgsBlockingNetworkRequest`` made
from Python; together those deadlocked about one run in three of the web
tests (one thread held the GIL and waited for a Qt mutex, the other held
the mutex and waited for the GIL), which froze the whole process within 10
to 60 rounds of the load in ``fetch_load.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.qgis.tile_server import png_bytes

pytestmark = pytest.mark.qgis


def _encode(driver: str, bands: np.ndarray, **profile) -> bytes:
    """``bands`` (count x rows x cols) as a file of ``driver``, written by GDAL."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    colormap = profile.pop("colormap", None)
    count, rows, cols = bands.shape
    with MemoryFile() as memory, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # test images are not georeferenced
        with memory.open(driver=driver, width=cols, height=rows, count=count, dtype=bands.dtype.name, **profile) as dst:
            dst.write(bands)
            if colormap is not None:
                dst.write_colormap(1, colormap)
        return memory.read()


def _qimage_rgba(content: bytes) -> np.ndarray:
    """What the previous decoder (Qt) made of ``content``: the reference on the main thread."""
    from qgis.PyQt.QtGui import QImage

    image = QImage.fromData(content).convertToFormat(QImage.Format_RGBA8888)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    rows = np.frombuffer(ptr, dtype=np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 4].reshape(image.height(), image.width(), 4).copy()


def _smooth_rgb() -> np.ndarray:
    """A gradient: what JPEG is for (on noise, decoders' chroma upsampling differs by tens of levels)."""
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    return np.stack(
        [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.full((256, 256), 90.0)]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def rgba() -> np.ndarray:
    rng = np.random.default_rng(7)
    out = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
    out[..., 3] = np.where(rng.random((256, 256)) < 0.2, 0, 255)
    return out


def test_rgba_rgb_grey_and_jpeg_match_what_qt_decoded(qgis_app, rgba):
    from roof_detector.qgis_io.tile_decode import decode_tile

    cases = {
        "rgba png": png_bytes(rgba),
        "rgb png": _encode("PNG", np.moveaxis(rgba[..., :3], -1, 0).copy()),
        "grey png": _encode("PNG", rgba[None, ..., 0].copy()),
        "grey+alpha png": _encode("PNG", np.stack([rgba[..., 0], rgba[..., 3]])),
        "jpeg": _encode("JPEG", _smooth_rgb(), QUALITY=90),
    }
    for name, content in cases.items():
        got = decode_tile(content, 256)
        assert got is not None and got.shape == (256, 256, 4) and got.dtype == np.uint8, name
        expected = _qimage_rgba(content)
        if name == "jpeg":  # two JPEG decoders may round (and upsample chroma) a little differently
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 3, name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_palette_with_transparency_and_sixteen_bit(rgba):
    from roof_detector.qgis_io.tile_decode import decode_tile

    index = (rgba[..., 0] % 4).astype(np.uint8)
    colours = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (10, 20, 30, 255)}
    got = decode_tile(_encode("PNG", index[None], colormap=colours), 256)
    lut = np.array([colours[i] for i in range(4)], dtype=np.uint8)
    np.testing.assert_array_equal(got, lut[index])

    wide = np.moveaxis(rgba[..., :3], -1, 0).astype(np.uint16) * 257  # 8-bit values spread over 16 bits
    got = decode_tile(_encode("PNG", wide), 256)
    np.testing.assert_array_equal(got[..., :3], rgba[..., :3])
    assert (got[..., 3] == 255).all()


def test_webp_and_another_tile_size(rgba):
    from roof_detector.qgis_io.tile_decode import decode_tile

    flat = np.zeros((512, 512, 3), dtype=np.uint8)
    flat[:, :256] = (200, 100, 50)  # left half one colour, right half black
    content = _encode("WEBP", np.moveaxis(flat, -1, 0).copy(), QUALITY=100, LOSSLESS=True)
    got = decode_tile(content, 256)  # a 512 px "retina" tile where 256 px tiles are expected
    assert got.shape == (256, 256, 4) and (got[..., 3] == 255).all()
    assert (got[:, :127, :3] == (200, 100, 50)).all() and (got[:, 129:, :3] == 0).all()


def test_no_warning_per_tile(rgba):
    """Tiles are not georeferenced; rasterio's warning about it is silenced once, at import."""
    import importlib
    import warnings

    from roof_detector.qgis_io import tile_decode

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pytest resets filters per test: install the module's again
        importlib.reload(tile_decode)
        assert tile_decode.decode_tile(png_bytes(rgba), 256) is not None
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "content",
    [b"", b"<html><body>Busy, try later</body></html>", b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
    ids=["empty", "html", "truncated png"],
)
def test_what_is_not_an_image_is_none(content):
    from roof_detector.qgis_io.tile_decode import decode_tile

    assert decode_tile(content, 256) is None


def test_parallel_fetches_never_deadlock():
    """150 rounds of 16 tiles with every third request failing, 4 workers; about 10 s."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.qgis.fetch_load", "150"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the tile workers froze (a deadlock holds the GIL, so the whole process stops)")
    assert done.returncode == 0 and "ok 150 rounds" in done.stdout, done.stdout + done.stderr[-2000:]


def test_an_error_with_a_success_status_is_tried_again(monkeypatch):
    """CI once saw a 503's "server replied: Busy" carrying status 200; that is no answer to trust."""
    from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

    from roof_detector.qgis_io import workers

    class Reply:
        def __init__(self, error, status):
            self._error, self._status = error, status

        def attribute(self, key):
            return self._status if key == QNetworkRequest.HttpStatusCodeAttribute else None

        def content(self):
            return b""

        def rawHeader(self, name):  # noqa: N802 - Qt API
            return b""

        def error(self):
            return self._error

        def errorString(self):  # noqa: N802 - Qt API
            if self._error == QNetworkReply.NoError:
                return "Unknown error"  # what Qt says then
            return "Error transferring http://t/1/2/3.png - server replied: Busy"

    for error, status, transient in [
        (QNetworkReply.ServiceUnavailableError, 200, True),
        (QNetworkReply.ServiceUnavailableError, 503, True),
        (QNetworkReply.ContentAccessDenied, 403, False),
        (QNetworkReply.NoError, 200, False),
    ]:
        fake = type("Nam", (), {"blockingGet": staticmethod(lambda *a, r=Reply(error, status): r)})
        monkeypatch.setattr(workers, "QgsNetworkAccessManager", fake)
        result = workers.http_get("http://t/1/2/3.png")
        assert bool(result.error) == (error != QNetworkReply.NoError)
        assert (bool(result.error) and workers.is_transient(result)) == transient, (error, status)
    # a status outside 2xx without a Qt error is named by its status, not by Qt's "Unknown error"
    fake = type("Nam", (), {"blockingGet": staticmethod(lambda *a: Reply(QNetworkReply.NoError, 304))})
    monkeypatch.setattr(workers, "QgsNetworkAccessManager", fake)
    assert workers.http_get("http://t/1/2/3.png").error == "HTTP 304"
