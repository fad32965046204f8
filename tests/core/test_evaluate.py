"""Evaluation with known answers: pixel metrics on a grid, one-to-one object matching."""

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import CRS

from roof_detector.core.errors import InputRasterError, LabelError
from roof_detector.core.evaluate import (
    evaluate,
    evaluate_files,
    grid_from_extent,
    grid_from_raster,
    match_objects,
    polygon_iou,
)

from .geom_helpers import WGS84, transform_geom, utm_wkt

UTM = CRS.from_epsg(32737).to_wkt()  # Zanzibar / Nairobi zone


def write_gpkg(path, geoms, crs_wkt, layer="buildings"):
    from osgeo import ogr, osr

    ogr.UseExceptions()
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    lyr = ds.CreateLayer(layer, srs, ogr.wkbMultiPolygon)
    for g in geoms:
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(shapely.MultiPolygon([g]))))
        lyr.CreateFeature(f)
    ds = None
    return str(path)


def write_raster(path, transform, shape, crs_wkt, valid=None):
    h, w = shape
    data = np.full((3, h, w), 128, dtype=np.uint8)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=3,
            dtype="uint8",
            crs=CRS.from_wkt(crs_wkt).to_wkt(),
            transform=transform,
        ) as ds:
            ds.write(data)
            if valid is not None:
                ds.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    return str(path)


GRID = grid_from_extent((0, 0, 20, 10), 1.0, UTM)
B = shapely.box


def test_identical_layers_score_one():
    geoms = [B(1, 1, 5, 5), B(10, 2, 18, 8)]
    r = evaluate(geoms, geoms, GRID)
    d = r.as_dict()
    assert d["pixel"]["iou"] == 1 and d["pixel"]["precision"] == 1 and d["pixel"]["recall"] == 1
    assert d["pixel"]["f1"] == 1 and d["pixel"]["accuracy"] == 1
    assert d["object"] == {
        **d["object"],
        "predicted": 2,
        "reference": 2,
        "matched": 2,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }


def test_disjoint_layers_score_zero():
    r = evaluate([B(0, 0, 5, 5)], [B(10, 0, 15, 5)], GRID)
    assert r.pixel.iou() == 0 and r.pixel.precision() == 0 and r.pixel.recall() == 0 and r.pixel.f1() == 0
    assert r.pixel.accuracy() == pytest.approx(150 / 200)
    assert r.n_matched == 0 and r.object_precision() == 0 and r.object_recall() == 0 and r.object_f1() == 0


def test_half_overlap_gives_the_computed_values():
    # reference 10x10 at x 0-10, prediction shifted by 5 m: tp 50, fp 50, fn 50, tn 50
    r = evaluate([B(5, 0, 15, 10)], [B(0, 0, 10, 10)], GRID)
    assert (r.pixel.tp, r.pixel.fp, r.pixel.fn, r.pixel.tn) == (50, 50, 50, 50)
    assert r.pixel.iou() == pytest.approx(1 / 3)
    assert r.pixel.accuracy() == pytest.approx(0.5)
    assert r.pixel.precision() == pytest.approx(0.5) and r.pixel.recall() == pytest.approx(0.5)
    assert r.pixel.f1() == pytest.approx(0.5)
    assert r.n_matched == 0  # object IoU 1/3 < 0.5


def test_object_matching_counts():
    refs = [B(0, 0, 10, 10), B(20, 0, 30, 10), B(40, 0, 50, 10)]
    preds = [
        B(0, 0, 10, 10),  # exact
        B(22, 0, 32, 10),  # IoU 8/12 = 0.667: match
        B(45, 0, 55, 10),  # IoU 1/3: no match
        B(60, 0, 65, 5),
    ]  # false positive
    grid = grid_from_extent((0, 0, 70, 10), 0.5, UTM)
    r = evaluate(preds, refs, grid)
    assert (r.n_predicted, r.n_reference, r.n_matched) == (4, 3, 2)
    assert r.object_precision() == pytest.approx(0.5)
    assert r.object_recall() == pytest.approx(2 / 3)
    assert r.object_f1() == pytest.approx(2 * 2 / 7)
    assert sorted(round(m.iou, 3) for m in r.matches) == [0.667, 1.0]


def test_matching_is_one_to_one_and_greedy_by_iou():
    ref = [B(0, 0, 10, 10)]
    preds = [B(1, 0, 11, 10), B(0, 0, 10, 10)]  # both IoU >= 0.5; the exact one wins
    m = match_objects(preds, ref)
    assert len(m) == 1 and m[0].predicted == 1 and m[0].iou == 1.0
    assert polygon_iou(preds[0], ref[0]) == pytest.approx(9 / 11)


def test_empty_layers_have_no_score_not_a_perfect_one():
    """Release 0.2.0 reported IoU, F1, precision and recall 1.0 for two empty layers (issue 21)."""
    r = evaluate([], [], GRID)
    d = r.as_dict()
    assert r.object_precision() is None and r.object_recall() is None and r.object_f1() is None
    assert all(d["pixel"][k] is None for k in ("iou", "precision", "recall", "f1"))
    assert d["pixel"]["accuracy"] == 1.0 and d["pixel"]["valid_pixels"] == 200  # every pixel truly negative
    r = evaluate([B(0, 0, 5, 5)], [], GRID)
    assert r.object_precision() == 0.0 and r.pixel.iou() == 0.0 and r.as_dict()["pixel"]["iou"] == 0.0


def test_a_grid_without_valid_pixels_is_refused(tmp_path):
    transform = Affine(1.0, 0, 500000.0, 0, -1.0, 9300010.0)
    raster = write_raster(tmp_path / "r.tif", transform, (10, 20), UTM, np.zeros((10, 20), dtype=bool))
    ref = [B(500001, 9300001, 500005, 9300005)]
    with pytest.raises(LabelError, match="no valid pixel"):
        evaluate(ref, ref, grid_from_raster(raster))


def test_a_metre_extent_declared_in_degrees_is_refused(tmp_path):
    """0.2.0: every reference fell off the 4326 grid and IoU/F1/accuracy were 1.0."""
    from roof_detector.core.evaluate import evaluate_files

    path = write_gpkg(tmp_path / "ref.gpkg", [B(500001, 9300001, 500005, 9300005)], UTM)
    with pytest.raises(LabelError, match="not in degrees.*geographic"):
        evaluate_files(path, path, extent=(500000, 9300000, 500020, 9300010), pixel_size=1.0, crs="EPSG:4326")


def test_objects_outside_the_grid_do_not_count():
    r = evaluate([B(1, 1, 5, 5)], [B(1, 1, 5, 5), B(100, 100, 110, 110)], GRID)
    assert (r.n_predicted, r.n_reference, r.n_matched) == (1, 1, 1)


def test_nodata_pixels_are_excluded(tmp_path):
    transform = Affine(1.0, 0, 500000.0, 0, -1.0, 9300010.0)
    valid = np.ones((10, 20), dtype=bool)
    valid[:, 10:] = False  # the east half is nodata
    raster = write_raster(tmp_path / "r.tif", transform, (10, 20), UTM, valid)
    ref = [B(500001, 9300001, 500005, 9300005)]
    preds = ref + [B(500012, 9300001, 500018, 9300008)]  # a false positive in nodata
    grid = grid_from_raster(raster)
    r = evaluate(preds, ref, grid)
    assert r.pixel.total == 100
    assert r.pixel.iou() == 1.0 and r.pixel.fp == 0
    assert (r.n_predicted, r.n_reference, r.n_matched) == (1, 1, 1)


def test_blocks_give_the_same_answer_as_one_pass(monkeypatch):
    import roof_detector.core.evaluate as ev

    preds = [B(3.3, 1.1, 17.2, 8.9), B(0.2, 0.2, 2.7, 9.6)]
    refs = [B(3, 1, 17, 9), B(18, 0, 19.6, 3)]
    grid = grid_from_extent((0, 0, 20, 10), 0.1, UTM)
    whole = evaluate(preds, refs, grid).pixel
    monkeypatch.setattr(ev, "BLOCK_ROWS", 7)
    blocked = evaluate(preds, refs, grid).pixel
    assert whole == blocked


def test_files_in_other_crs_are_reprojected(tmp_path):
    lon, lat = 39.2434, -6.0549
    utm = utm_wkt(lon, lat)
    x0, y0 = transform_geom(shapely.Point(lon, lat), WGS84, utm).coords[0]
    x0, y0 = round(x0), round(y0)
    buildings = [B(x0 + 2, y0 + 2, x0 + 14, y0 + 9), B(x0 + 20, y0 + 3, x0 + 27, y0 + 12)]
    ref = write_gpkg(tmp_path / "ref.gpkg", buildings, utm)
    pred = write_gpkg(tmp_path / "pred.gpkg", [transform_geom(g, utm, WGS84) for g in buildings], WGS84)
    raster = write_raster(tmp_path / "r.tif", Affine(0.25, 0, x0, 0, -0.25, y0 + 16), (64, 128), utm)
    r = evaluate_files(pred, ref, raster_path=raster)
    assert r.pixel.iou() > 0.99
    assert (r.n_predicted, r.n_reference, r.n_matched) == (2, 2, 2)
    r2 = evaluate_files(pred, ref, extent=(x0, y0, x0 + 32, y0 + 16), pixel_size=0.25)
    assert r2.pixel.iou() == pytest.approx(r.pixel.iou(), abs=1e-9)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(InputRasterError):
        grid_from_raster(str(tmp_path / "missing.tif"))
    ref = write_gpkg(tmp_path / "ref.gpkg", [B(0, 0, 1, 1)], UTM)
    with pytest.raises(LabelError):
        evaluate_files(ref, ref)
    with pytest.raises(LabelError):
        evaluate_files(ref, ref, extent=(0, 0, 1, 1), pixel_size=0)


def test_the_result_holds_the_polygons_measured_which_its_matches_index():
    """Polygons whose representative point lies off the grid are not measured; ``matches`` index the
    ones that are (``predicted_kept`` / ``reference_kept``), as a diagnosis of unmatched buildings needs."""
    inside, outside = B(0, 0, 5, 5), B(10_000, 0, 10_005, 5)
    r = evaluate([outside, inside], [inside], GRID)
    assert r.predicted_kept == [inside] and r.reference_kept == [inside]
    assert [(m.predicted, m.reference) for m in r.matches] == [(0, 0)]
