"""Damaged rasters found only while reading (issue 21): real corrupt, truncated and dangling files.

Release 0.2.0 ended these with a ``RasterioIOError: Read failed`` traceback
(CLI) or "Unexpected error: Read failed" (QGIS). Now: one line naming the
file, the window read and that the file is damaged; nothing written.
"""

import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from roof_detector.core.errors import InputRasterError
from roof_detector.core.pipeline import DetectOptions, detect_buildings

from .synthetic_rasters import UTM, UTM_ORIGIN

SIZE = 512


def _tiff(path, **creation):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8)  # noise: compresses badly, many bytes
    profile = dict(
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=3,
        dtype="uint8",
        crs=UTM,
        transform=from_origin(UTM_ORIGIN[0], UTM_ORIGIN[1], 0.5, 0.5),
        **creation,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return str(path)


def corrupt_compressed_tile(tmp_path):
    path = _tiff(tmp_path / "corrupt.tif", compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path) as ds:  # garble the middle of the last tile's compressed bytes
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=3))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=3))
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 3)
        fh.write(os.urandom(size // 3))
    return path


def truncated_after_header(tmp_path):
    path = _tiff(tmp_path / "truncated.tif")
    os.truncate(path, os.path.getsize(path) // 2)
    return path


def vrt_without_source(tmp_path):
    src = _tiff(tmp_path / "gone.tif")
    vrt = str(tmp_path / "mosaic.vrt")
    from osgeo import gdal

    gdal.BuildVRT(vrt, [src]).FlushCache()
    os.unlink(src)
    return vrt


@pytest.mark.parametrize("make", [corrupt_compressed_tile, truncated_after_header, vrt_without_source])
def test_a_damaged_raster_is_named_with_its_window(tmp_path, model, make):
    path = make(tmp_path)
    with pytest.raises(InputRasterError) as info:
        detect_buildings(path, DetectOptions(), model=model)
    message = str(info.value)
    assert path in message and "window" in message and "damaged" in message
    assert "\n" not in message


def test_the_cli_prints_one_line_and_writes_nothing(tmp_path, model_path, capsys):
    from roof_detector.cli import main

    path = truncated_after_header(tmp_path)
    out = tmp_path / "out.gpkg"
    assert main(["detect", path, "-o", str(out), "--model", model_path, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err and err.endswith(errors[0] + "\n")
    assert "truncated.tif is damaged" in errors[0] and "window col" in errors[0] and not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["truncated.tif"]


def test_fine_tuning_on_a_damaged_raster_names_it(tmp_path):
    from roof_detector.core.training.scenes import scene_from_raster

    path = corrupt_compressed_tile(tmp_path)
    with pytest.raises(InputRasterError, match="corrupt.tif is damaged or incomplete: reading window"):
        scene_from_raster(path, None)


def test_a_metre_raster_labelled_epsg_4326_is_named_and_explained(tmp_path, model):
    """0.2.0: "Cannot measure the ground pixel size (got nan, nan m)", no file name."""
    path = str(tmp_path / "metres_as_degrees.tif")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_origin(UTM_ORIGIN[0], UTM_ORIGIN[1], 0.5, 0.5),
    ) as ds:
        ds.write(np.full((3, 64, 64), 30, np.uint8))
    with pytest.raises(InputRasterError, match="metres_as_degrees.tif.*not degrees.*gdal_edit"):
        detect_buildings(path, DetectOptions(), model=model)


LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1]]'


def test_an_engineering_crs_raster_is_named_and_explained(tmp_path, model):
    """Issue 21 sweep rerun: a LOCAL_CS raster gave a pyproj ProjError traceback before any work."""
    path = str(tmp_path / "site_grid.tif")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs=LOCAL_CS,
        transform=from_origin(0, 64, 0.5, 0.5),
    ) as ds:
        ds.write(np.full((3, 64, 64), 30, np.uint8))
    with pytest.raises(InputRasterError, match="site_grid.tif.*'site grid' cannot be placed on the Earth.*gdal_edit"):
        detect_buildings(path, DetectOptions(), model=model)


@pytest.mark.parametrize("command", ["solar", "evaluate"])
def test_an_engineering_crs_layer_gets_one_line(tmp_path, capsys, command):
    from osgeo import ogr, osr

    from roof_detector import cli

    srs = osr.SpatialReference()
    srs.SetFromUserInput(LOCAL_CS)
    layer = str(tmp_path / "local.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(layer)
    lyr = ds.CreateLayer("roofs", srs, ogr.wkbPolygon)
    feat = ogr.Feature(lyr.GetLayerDefn())
    feat.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,10 0,10 10,0 10,0 0))"))
    lyr.CreateFeature(feat)
    feat = lyr = ds = None
    args = {
        "solar": ["solar", layer, "-o", str(tmp_path / "out.gpkg")],
        "evaluate": ["evaluate", "--reference", layer, "--predicted", layer, "--extent", "0", "0", "20", "20"]
        + ["--pixel-size", "1"],
    }[command]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'site grid' cannot be placed on the Earth" in err[0]
    assert not (tmp_path / "out.gpkg").exists()
