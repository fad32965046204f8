"""RasterioSource: band layouts, scaling, validity masks and the refusals' messages."""

import numpy as np
import pytest
import rasterio
from affine import Affine

from roof_detector.core.errors import InputRasterError
from roof_detector.core.raster_source import PixelWindow, RasterioSource, percentile_stretch

from .synthetic_rasters import NORTH_UP, UTM, UTM_ORIGIN, rect_scene, write_raster


def _read_all(src):
    return src.read(PixelWindow(0, 0, src.width, src.height), (src.height, src.width))


def test_rgb_uint8_is_divided_by_255(tmp_path):
    data = np.zeros((3, 4, 5), np.uint8)
    data[0], data[1], data[2] = 0, 51, 255
    with RasterioSource(write_raster(tmp_path / "rgb.tif", data, UTM, NORTH_UP)) as src:
        rgb, valid = _read_all(src)
    assert rgb.dtype == np.float32 and rgb.shape == (3, 4, 5)
    assert np.allclose(rgb[0], 0) and np.allclose(rgb[1], 0.2) and np.allclose(rgb[2], 1.0)
    assert valid.all()


def test_grey_uint16_is_stretched_and_replicated(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 1100, size=(1, 60, 60)).astype(np.uint16)
    data[0, 10:40, 10:40] = 5000  # 25 % bright
    with RasterioSource(write_raster(tmp_path / "grey16.tif", data, UTM, NORTH_UP)) as src:
        assert src.layout.description == "grey"
        lo, hi = src.stretch[0]
        assert 1000 <= lo < 1010 and hi == 5000
        rgb, valid = _read_all(src)
    assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2])
    assert np.allclose(rgb[0, 20, 20], 1.0)
    assert rgb[0, 0, 0] < 0.05
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_stretch_ignores_nodata_and_survives_flat_bands():
    sample = np.array([[[0, 0, 10, 20, 30]], [[7, 7, 7, 7, 7]]], dtype=np.float32)
    valid = np.array([[False, False, True, True, True]])
    out = percentile_stretch(sample, valid)
    assert out[0, 0] >= 10 and out[0, 1] <= 30 and out[0, 1] > out[0, 0]
    assert out[1, 0] == 7 and out[1, 1] == 8  # flat: high = low + 1, no division by zero


def test_nodata_value_marks_pixels_invalid(tmp_path):
    data = np.full((3, 10, 10), 100, np.uint8)
    data[:, :, :3] = 255
    with RasterioSource(write_raster(tmp_path / "nd.tif", data, UTM, NORTH_UP, nodata=255)) as src:
        rgb, valid = _read_all(src)
    assert not valid[:, :3].any() and valid[:, 3:].all()
    assert np.all(rgb[:, :, :3] == 0)  # invalid pixels are blanked, not passed to the model bright


def test_internal_mask_band_marks_pixels_invalid(tmp_path):
    data = np.full((3, 10, 10), 200, np.uint8)
    mask = np.ones((10, 10), bool)
    mask[5:, :] = False
    with RasterioSource(write_raster(tmp_path / "m.tif", data, UTM, NORTH_UP, mask=mask)) as src:
        rgb, valid = _read_all(src)
    assert np.array_equal(valid, mask)
    assert np.all(rgb[:, 5:, :] == 0)


def test_rgba_alpha_is_validity(tmp_path):
    data = np.full((4, 10, 10), 200, np.uint8)
    data[3] = 255
    data[3, :, 6:] = 0
    with RasterioSource(write_raster(tmp_path / "rgba.tif", data, UTM, NORTH_UP, alpha=True)) as src:
        assert src.layout.description == "RGBA"
        rgb, valid = _read_all(src)
    assert valid[:, :6].all() and not valid[:, 6:].any()


def test_four_bands_without_alpha_are_rgb_plus_nir(tmp_path):
    data = np.zeros((4, 8, 8), np.uint8)
    data[3] = 255  # bright NIR must not leak into RGB
    path = write_raster(tmp_path / "rgbn.tif", data, UTM, NORTH_UP, colorinterp=["red", "green", "blue", "undefined"])
    with RasterioSource(path) as src:
        assert src.layout.description == "RGB+NIR"
        rgb, valid = _read_all(src)
    assert rgb.max() == 0 and valid.all()


def test_palette_raster_maps_indexes_to_colours(tmp_path):
    data = np.zeros((1, 6, 6), np.uint8)
    data[0, :, 3:] = 1
    cmap = {0: (0, 0, 0, 255), 1: (255, 128, 0, 255)}
    with RasterioSource(write_raster(tmp_path / "pal.tif", data, UTM, NORTH_UP, colormap=cmap)) as src:
        rgb, _ = _read_all(src)
    assert np.allclose(rgb[:, 0, 5], [1.0, 128 / 255, 0.0])
    assert np.allclose(rgb[:, 0, 0], 0)


def test_resampled_window_read(tmp_path):
    path = rect_scene(tmp_path / "r.tif", [(0, 0, 100, 50)], shape=(100, 100))
    with RasterioSource(path) as src:
        rgb, valid = src.read(PixelWindow(0, 0, 100, 100), (50, 50))
        assert rgb.shape == (3, 50, 50) and valid.shape == (50, 50)
        assert rgb[0, 25, 10] == pytest.approx(220 / 255, abs=1e-3)
        assert rgb[0, 25, 40] == pytest.approx(30 / 255, abs=1e-3)
        # fractional windows are honoured (not rounded to whole pixels)
        rgb, _ = src.read(PixelWindow(49.5, 0, 1, 1), (1, 1))
        assert 30 / 255 < rgb[0, 0, 0] < 220 / 255


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "not found"),
        ("text", "not a raster GDAL can read"),
        ("directory", "is a directory"),
        ("no_crs", "no coordinate reference system"),
        ("rotated", "rotated or sheared"),
        ("south_up", "not north-up"),
        ("two_bands", "has 2 bands"),
        ("five_bands", "has 5 bands"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(tmp_path, case, expected):
    path = tmp_path / f"{case}.tif"
    img = np.zeros((3, 8, 8), np.uint8)
    if case == "text":
        path.write_text("this is not an image\n")
    elif case == "directory":
        path.mkdir()
    elif case == "no_crs":
        write_raster(path, img, None, NORTH_UP)
    elif case == "rotated":
        write_raster(path, img, UTM, Affine(0.5, 0.1, UTM_ORIGIN[0], 0.1, -0.5, UTM_ORIGIN[1]))
    elif case == "south_up":
        write_raster(path, img, UTM, Affine(0.5, 0, UTM_ORIGIN[0], 0, 0.5, UTM_ORIGIN[1]))
    elif case == "two_bands":
        write_raster(path, np.zeros((2, 8, 8), np.uint8), UTM, NORTH_UP)
    elif case == "five_bands":
        write_raster(path, np.zeros((5, 8, 8), np.uint8), UTM, NORTH_UP)
    with pytest.raises(InputRasterError, match=expected) as info:
        RasterioSource(path)
    assert str(path) in str(info.value)


def test_refusal_says_what_to_do(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 8, 8), np.uint8), None, NORTH_UP)
    with pytest.raises(InputRasterError, match="Assign Projection|a_srs"):
        RasterioSource(path)


def test_source_closes_dataset(tmp_path):
    path = rect_scene(tmp_path / "c.tif", [])
    src = RasterioSource(path)
    src.close()
    with rasterio.open(path) as ds:  # still readable: we closed our handle only
        assert ds.count == 3
