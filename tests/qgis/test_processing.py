"""The "Roof Detector" Processing provider: registration and every algorithm through processing.run.

Data: the conftest orthophoto (four bright rectangles, EPSG:32631, 0.5 m) and
the brightness test model, so detections are known exactly; evaluation runs
on hand-made squares whose pixel and object figures are worked out below.
"""

import json
import sys
import types
from pathlib import Path

import pytest

from .conftest import EXPECTED_AREAS, GSD, ORIGIN, RECTANGLES

pytestmark = pytest.mark.qgis

PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"
ALGORITHM_IDS = {
    "roofdetector:detectbuildings",
    "roofdetector:finetunemodel",
    "roofdetector:rooftopsolar",
    "roofdetector:evaluatedetection",
    "roofdetector:detectbuildingsmany",
}
X0, Y0 = ORIGIN


@pytest.fixture(scope="module")
def processing_ready(qgis_app):
    """The QGIS Processing framework (native + model providers), initialised once."""
    if PROCESSING_PLUGINS not in sys.path:
        sys.path.append(PROCESSING_PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    return True


@pytest.fixture
def run(processing_ready, plugin):
    """``processing.run`` with the plugin (and so its provider) loaded.

    Each run gets its own context, whose temporary layers (inputs given as paths) are
    released as soon as the run ends. QGIS 3.22's bindings never release the Python
    exception a Python algorithm raises: its traceback keeps every frame of the run
    alive, processing.run's context among them, and PyQt destroys such leftovers
    only at interpreter exit, after QgsApplication.exitQgis(); a raster layer
    destroyed then segfaults (the test process exited with status 139 after this file).
    """
    import processing
    from processing.tools import dataobjects

    def run_algorithm(algorithm, parameters, feedback=None, context=None):
        context = context if context is not None else dataobjects.createContext(feedback)
        try:
            return processing.run(algorithm, parameters, feedback=feedback, context=context)
        finally:
            context.temporaryLayerStore().removeAllMapLayers()

    return run_algorithm


def polygon_layer(polygons, crs="EPSG:32631", fields=(), name="polygons"):
    """A memory polygon layer; ``polygons`` are WKT strings or (WKT, {field: value}) pairs."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    spec = "".join(f"&field={f}" for f in fields)
    layer = QgsVectorLayer(f"Polygon?crs={crs}{spec}", name, "memory")
    features = []
    for item in polygons:
        wkt, attrs = (item, {}) if isinstance(item, str) else item
        feature = QgsFeature(layer.fields())
        if wkt:
            feature.setGeometry(QgsGeometry.fromWkt(wkt))
        for key, value in attrs.items():
            feature[key] = value
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def box(x0, y0, x1, y1, dx=X0, dy=Y0 - 100):
    """WKT of a rectangle, offset to a spot in UTM zone 31N."""
    return f"POLYGON(({x0 + dx} {y0 + dy},{x1 + dx} {y0 + dy},{x1 + dx} {y1 + dy},{x0 + dx} {y1 + dy},{x0 + dx} {y0 + dy}))"


def rectangle_wkts():
    """The orthophoto's rectangles as WKT in EPSG:32631."""
    out = []
    for row, col, rows, cols in RECTANGLES:
        x0, y1 = X0 + col * GSD, Y0 - row * GSD
        out.append(box(x0, y1 - rows * GSD, x0 + cols * GSD, y1, dx=0, dy=0))
    return out


# --------------------------------------------------------------------------- provider


def test_provider_registers_and_unregisters_with_the_plugin(qgis_iface, processing_ready):
    from qgis.core import QgsApplication

    from roof_detector.plugin import RoofDetectorPlugin

    registry = QgsApplication.processingRegistry()
    plugin = RoofDetectorPlugin(qgis_iface)
    plugin.initGui()
    try:
        provider = registry.providerById("roofdetector")
        assert provider is not None and provider.name() == "Roof Detector" and not provider.icon().isNull()
        assert {a.id() for a in provider.algorithms()} == ALGORITHM_IDS
        assert registry.algorithmById("roofdetector:detectbuildings") is not None
    finally:
        plugin.unload()
    assert registry.providerById("roofdetector") is None
    assert registry.algorithmById("roofdetector:detectbuildings") is None


def test_init_processing_alone_as_qgis_process_does(processing_ready):
    """qgis_process calls classFactory(None).initProcessing() only; twice must not register twice."""
    from qgis.core import QgsApplication

    import roof_detector

    plugin = roof_detector.classFactory(None)
    plugin.initProcessing()
    plugin.initProcessing()
    try:
        ids = [p.id() for p in QgsApplication.processingRegistry().providers()]
        assert ids.count("roofdetector") == 1
    finally:
        plugin.unload()
    assert QgsApplication.processingRegistry().providerById("roofdetector") is None


def test_algorithms_follow_the_processing_conventions(run):
    from qgis.core import QgsApplication

    for alg_id in ALGORITHM_IDS:
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        assert alg.displayName() and alg.group() and len(alg.shortHelpString()) > 200
        assert not alg.icon().isNull()
        names = [p.name() for p in alg.parameterDefinitions()] + [o.name() for o in alg.outputDefinitions()]
        assert all(n == n.upper() for n in names), names
        assert alg.create().id() == alg_id  # createInstance() works, as batch mode and models need


# --------------------------------------------------------------------------- detect


def test_detect_buildings_gives_the_bright_rectangles(run, ortho_path, model_path, tmp_path):
    from qgis.core import QgsVectorLayer

    out = str(tmp_path / "buildings.gpkg")
    result = run(
        "roofdetector:detectbuildings",
        {"INPUT": ortho_path, "MODEL": model_path, "MIN_AREA": 5.0, "DEVICE": 1, "OUTPUT": out},
    )
    layer = QgsVectorLayer(result["OUTPUT"], "b")
    assert layer.isValid() and layer.featureCount() == 4 and result["BUILDINGS"] == 4
    assert {"area_m2", "perimeter_m", "confidence"} <= set(layer.fields().names())
    assert layer.crs().authid() == "EPSG:32631"
    areas = sorted(f["area_m2"] for f in layer.getFeatures())
    assert areas == pytest.approx(EXPECTED_AREAS, rel=0.005)
    assert result["TOTAL_AREA_M2"] == pytest.approx(sum(areas), abs=0.005 * len(areas))  # fields: 0.01 m²
    assert all(f["confidence"] > 0.9 for f in layer.getFeatures())


def test_detect_buildings_separates_touching_roofs_by_default(run, model_path, tmp_path):
    from tests.core.synthetic_rasters import touching_pair_scene

    pair, _ = touching_pair_scene(tmp_path / "pair.tif")
    counts = [
        run(
            "roofdetector:detectbuildings",
            dict({"INPUT": pair, "MODEL": model_path, "DEVICE": 1, "OUTPUT": "memory:"}, **extra),
        )["BUILDINGS"]
        for extra in ({}, {"SEPARATE_TOUCHING": False})
    ]
    assert counts == [2, 1]


def test_detect_buildings_tta_parameter_reaches_the_engine(run, ortho_path, model_path):
    from unittest import mock

    from qgis.core import QgsApplication

    from roof_detector.core import pipeline

    alg = QgsApplication.processingRegistry().algorithmById("roofdetector:detectbuildings")
    assert alg.parameterDefinition("TTA").defaultValue() is False
    seen = []
    real = pipeline.detect_buildings

    def spy(source, options=None, **kw):
        seen.append(options.tta)
        return real(source, options, **kw)

    with mock.patch.object(pipeline, "detect_buildings", spy):
        counts = [
            run(
                "roofdetector:detectbuildings",
                dict(
                    {"INPUT": ortho_path, "MODEL": model_path, "DEVICE": 1, "MIN_AREA": 5.0, "OUTPUT": "memory:"},
                    **extra,
                ),
            )["BUILDINGS"]
            for extra in ({}, {"TTA": True})
        ]
    assert seen == [False, True] and counts == [4, 4]  # the per-pixel test model gives the same roofs


def test_detect_buildings_in_an_extent_given_in_another_crs(run, ortho_layer, model_path):
    from pyproj import Transformer

    # Around the first rectangle only (x 500005-500020, y 4999985-4999995), as lon/lat.
    to_lonlat = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    corners = [to_lonlat.transform(x, y) for x in (X0, X0 + 30) for y in (Y0 - 20, Y0)]
    lons, lats = [c[0] for c in corners], [c[1] for c in corners]
    extent = f"{min(lons)},{max(lons)},{min(lats)},{max(lats)} [EPSG:4326]"
    result = run(
        "roofdetector:detectbuildings",
        {
            "INPUT": ortho_layer,
            "MODEL": model_path,
            "MIN_AREA": 5.0,
            "DEVICE": 1,
            "EXTENT": extent,
            "OUTPUT": "memory:",
        },
    )
    layer = result["OUTPUT"]
    assert layer.featureCount() == 1
    assert next(layer.getFeatures())["area_m2"] == pytest.approx(150.0, rel=0.005)


def test_detect_buildings_reports_engine_errors(run, ortho_path, tmp_path):
    from qgis.core import QgsProcessingException

    bad = tmp_path / "not_a_model.pt"
    bad.write_text("nope")
    with pytest.raises(QgsProcessingException) as info:
        run("roofdetector:detectbuildings", {"INPUT": ortho_path, "MODEL": str(bad), "DEVICE": 1, "OUTPUT": "memory:"})
    assert "not_a_model.pt" in str(info.value) and "Traceback" not in str(info.value)


def test_detect_buildings_stops_when_cancelled(run, ortho_path, model_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.cancel()  # the engine polls feedback.isCanceled() before the first batch
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run(
            "roofdetector:detectbuildings",
            {"INPUT": ortho_path, "MODEL": model_path, "DEVICE": 1, "OUTPUT": "memory:"},
            feedback=feedback,
        )


# --------------------------------------------------------------------------- solar


def test_rooftop_solar_sizes_any_polygon_layer(run, tmp_path):
    layer = polygon_layer(
        [
            (box(0, 0, 10, 20), {"name": "A", "area_m2": 1.0}),
            (box(30, 0, 34, 4), {"name": "B", "area_m2": 2.0}),
            ("", {"name": "no geometry"}),
        ],
        fields=("name:string", "area_m2:double"),
    )
    result = run(
        "roofdetector:rooftopsolar",
        {
            "INPUT": layer,
            "SETBACK": 0.5,
            "USABLE_FRACTION": 0.6,
            "PANEL_AREA": 1.96,
            "PANEL_WP": 400,
            "SPECIFIC_YIELD": 1000,
            "OUTPUT": "memory:",
            "REPORT": str(tmp_path / "report"),
        },
    )
    out = result["OUTPUT"]
    names = out.fields().names()
    assert names[:2] == ["name", "src_area_m2"]  # input kept, the clash renamed as in the CLI
    assert names[2:] == [
        "area_m2",
        "perimeter_m",
        "usable_area_m2",
        "panels",
        "kwp",
        "specific_yield",
        "annual_kwh",
        "orientation_deg",
    ]
    rows = {f["name"]: f for f in out.getFeatures()}
    assert set(rows) == {"A", "B"}  # the feature without geometry is skipped
    a = rows["A"]
    assert a["src_area_m2"] == 1.0
    assert a["area_m2"] == pytest.approx(200.0, rel=0.002) and a["perimeter_m"] == pytest.approx(60.0, rel=0.002)
    assert a["usable_area_m2"] == pytest.approx(9 * 19 * 0.6, rel=0.002)
    assert a["panels"] == 52 and a["kwp"] == pytest.approx(20.8) and a["annual_kwh"] == pytest.approx(20800)
    assert min(a["orientation_deg"], 180 - a["orientation_deg"]) < 1.0  # long axis north-south
    assert rows["B"]["panels"] == 2  # (3 x 3) x 0.6 = 5.4 m² -> 2 panels
    assert result["BUILDINGS"] == 2 and result["TOTAL_PANELS"] == 54
    assert result["TOTAL_KWP"] == pytest.approx(21.6) and result["TOTAL_ANNUAL_KWH"] == pytest.approx(21600)
    assert (tmp_path / "report" / "summary.html").is_file() and result["REPORT_HTML"].endswith("summary.html")


def test_rooftop_solar_estimates_yield_and_regularizes(run):
    from roof_detector.core.solar import estimate_specific_yield

    # A 12 x 8 m building with a 0.25 m pixel staircase on one side.
    stair = "POLYGON((0 0,12 0,12 4,12.25 4,12.25 8,0 8,0 0))"
    from shapely import affinity, wkt

    layer = polygon_layer([affinity.translate(wkt.loads(stair), X0, Y0 - 100).wkt])
    result = run(
        "roofdetector:rooftopsolar",
        {
            "INPUT": layer,
            "REGULARIZE": True,  # no SPECIFIC_YIELD: latitude
            "TOLERANCE": 1.0,
            "OUTPUT": "memory:",
        },
    )
    feature = next(result["OUTPUT"].getFeatures())
    assert feature["specific_yield"] == pytest.approx(round(estimate_specific_yield(45.14), 1), abs=1.0)
    # written rounded to 1 kWh/yr (kWp to 0.01)
    assert feature["annual_kwh"] == pytest.approx(feature["kwp"] * feature["specific_yield"], abs=0.5)
    assert feature["annual_kwh"] == round(feature["annual_kwh"]) and feature["kwp"] == round(feature["kwp"], 2)
    ring = feature.geometry().constGet().exteriorRing()
    assert ring.numPoints() == 5  # squared into a rectangle
    assert feature["shape"] == "rectilinear"  # the class of the squared outline, as the CLI writes it
    assert feature["area_m2"] == pytest.approx(97.0, rel=0.02)


# --------------------------------------------------------------------------- evaluate


def evaluate(run, predicted, reference, **extra):
    """Run the evaluation on a 20 x 10 m grid of 1 m pixels; return the results and the table row."""
    params = {
        "PREDICTED": polygon_layer(predicted, name="pred"),
        "REFERENCE": polygon_layer(reference, name="ref"),
        "EXTENT": f"{X0},{X0 + 20},{Y0 - 100},{Y0 - 90} [EPSG:32631]",
        "PIXEL_SIZE": 1.0,
        "OUTPUT": "memory:",
    }
    params.update(extra)
    result = run("roofdetector:evaluatedetection", params)
    table = result["OUTPUT"]
    assert table.featureCount() == 1 and not table.isSpatial()
    row = next(table.getFeatures())
    return result, {name: row[name] for name in table.fields().names()}


def test_identical_layers_score_one(run, tmp_path):
    squares = [box(2, 2, 6, 6), box(10, 2, 14, 6)]
    out_json = str(tmp_path / "metrics.json")
    result, row = evaluate(run, squares, squares, OUTPUT_JSON=out_json)
    for key in (
        "PIXEL_IOU",
        "PIXEL_ACCURACY",
        "PIXEL_PRECISION",
        "PIXEL_RECALL",
        "PIXEL_F1",
        "OBJECT_PRECISION",
        "OBJECT_RECALL",
        "OBJECT_F1",
    ):
        assert result[key] == 1.0, key
    assert (result["PREDICTED_COUNT"], result["REFERENCE_COUNT"], result["MATCHED_COUNT"]) == (2, 2, 2)
    assert result["VALID_PIXELS_COUNT"] == 200 and row["tp"] == 32 and row["pixel_iou"] == 1.0
    assert json.load(open(out_json))["pixel"]["iou"] == 1.0


def test_disjoint_layers_score_zero(run):
    result, row = evaluate(run, [box(2, 2, 6, 6)], [box(10, 2, 14, 6)])
    assert result["PIXEL_IOU"] == 0.0 and result["PIXEL_PRECISION"] == 0.0 and result["PIXEL_RECALL"] == 0.0
    assert result["PIXEL_ACCURACY"] == pytest.approx((200 - 32) / 200)
    assert result["OBJECT_F1"] == 0.0 and result["MATCHED_COUNT"] == 0
    assert (row["fp"], row["fn"]) == (16, 16)


def test_half_overlap_gives_the_computed_iou(run):
    # 4 x 4 squares shifted by 2 m: 8 shared pixels of 24 -> IoU 1/3, precision = recall = F1 = 1/2.
    result, row = evaluate(run, [box(0, 0, 4, 4)], [box(2, 0, 6, 4)])
    assert result["PIXEL_IOU"] == pytest.approx(1 / 3)
    assert result["PIXEL_PRECISION"] == pytest.approx(0.5) and result["PIXEL_RECALL"] == pytest.approx(0.5)
    assert result["PIXEL_F1"] == pytest.approx(0.5) and result["PIXEL_ACCURACY"] == pytest.approx(184 / 200)
    assert result["MATCHED_COUNT"] == 0  # object IoU 1/3 < 0.5
    assert row["pixel_iou"] == pytest.approx(1 / 3)


def test_object_counts(run):
    # predicted: a good match (IoU 0.8), a poor one (IoU 1/3) and a false alarm; reference: two buildings.
    predicted = [box(10, 0, 14, 4), box(0, 0, 4, 4), box(16, 6, 18, 8)]
    reference = [box(10, 0, 14, 5), box(2, 0, 6, 4)]
    result, _ = evaluate(run, predicted, reference)
    assert (result["PREDICTED_COUNT"], result["REFERENCE_COUNT"], result["MATCHED_COUNT"]) == (3, 2, 1)
    assert result["OBJECT_PRECISION"] == pytest.approx(1 / 3) and result["OBJECT_RECALL"] == pytest.approx(0.5)
    assert result["OBJECT_F1"] == pytest.approx(2 * 1 / 5)
    result, _ = evaluate(run, predicted, reference, IOU_THRESHOLD=0.3)
    assert result["MATCHED_COUNT"] == 2


def test_shape_figures_are_outputs_and_columns(run):
    # predicted: a square (regular) and a hexagon (not), matched to nothing; reference: a rectangle
    dx, dy = X0, Y0 - 100
    hexagon = (
        "POLYGON(("
        + ",".join(f"{x + dx} {y + dy}" for x, y in ((14, 5), (15, 3), (17, 3), (18, 5), (17, 7), (15, 7), (14, 5)))
        + "))"
    )
    predicted = [box(1, 1, 5, 5), hexagon]
    result, row = evaluate(run, predicted, [box(1, 1, 5, 6)])
    assert result["MATCHED_COUNT"] == 1 and result["MEAN_MATCHED_IOU"] == pytest.approx(16 / 20)
    assert result["PREDICTED_MEDIAN_VERTICES"] == 5.0  # 4 and 6
    assert result["PREDICTED_REGULAR_SHARE"] == pytest.approx(0.5)
    assert result["REFERENCE_MEDIAN_VERTICES"] == 4 and result["REFERENCE_REGULAR_SHARE"] == 1.0
    assert row["predicted_regular_share"] == pytest.approx(0.5) and row["mean_matched_iou"] == pytest.approx(0.8)


def test_evaluate_on_the_raster_grid_with_selected_features(run, ortho_layer):
    from qgis.core import QgsProcessingFeatureSourceDefinition, QgsProject

    reference = polygon_layer(rectangle_wkts(), name="ref")
    predicted = polygon_layer(rectangle_wkts() + [box(1, 1, 5, 5, dx=X0, dy=Y0 - 60)], name="pred")
    QgsProject.instance().addMapLayers([reference, predicted])
    predicted.selectByIds([f.id() for f in predicted.getFeatures()][:4])  # not the false alarm
    selected = QgsProcessingFeatureSourceDefinition(predicted.id(), selectedFeaturesOnly=True)
    result = run(
        "roofdetector:evaluatedetection",
        {"PREDICTED": selected, "REFERENCE": reference.id(), "RASTER": ortho_layer, "OUTPUT": "memory:"},
    )
    assert result["PIXEL_IOU"] == 1.0 and result["MATCHED_COUNT"] == 4 and result["PREDICTED_COUNT"] == 4
    assert result["VALID_PIXELS_COUNT"] == 160 * 128


def test_evaluate_needs_one_grid(run):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="either a raster or an extent"):
        run(
            "roofdetector:evaluatedetection",
            {
                "PREDICTED": polygon_layer([box(0, 0, 1, 1)]),
                "REFERENCE": polygon_layer([box(0, 0, 1, 1)]),
                "OUTPUT": "memory:",
            },
        )


# --------------------------------------------------------------------------- fine-tune and models


@pytest.fixture(scope="module")
def base_model(data_dir):
    """A tiny trainable U-Net (the brightness model cannot be fine-tuned)."""
    from roof_detector.core.training.export import export_model
    from roof_detector.core.training.trainer import TrainConfig
    from roof_detector.core.unet import build_model

    path = str(data_dir / "tiny_base.pt")
    cfg = TrainConfig(
        architecture="plain_unet", architecture_params={"base_channels": 4}, gsd_m=GSD, tile_px=64, overlap_px=8
    )
    return export_model(build_model("plain_unet", base_channels=4), cfg, path, 0.5, {"name": "tiny-base"})


def test_finetune_model_writes_a_model(run, ortho_layer, base_model, tmp_path):
    from shapely import ops, wkt
    from pyproj import Transformer

    from roof_detector.core.model_io import read_metadata

    # Labels in EPSG:4326 (reprojected by the engine); the area is a memory layer (exported).
    to_lonlat = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True).transform
    labels = polygon_layer([ops.transform(to_lonlat, wkt.loads(w)).wkt for w in rectangle_wkts()], crs="EPSG:4326")
    area = polygon_layer([box(0, 0, 80, 64, dx=X0, dy=Y0 - 64)])
    out = str(tmp_path / "models" / "mine.pt")
    result = run(
        "roofdetector:finetunemodel",
        {
            "INPUT": ortho_layer,
            "LABELS": labels,
            "AREA": area,
            "MODEL": base_model,
            "EPOCHS": 1,
            "BATCH_SIZE": 2,
            "SAMPLES_PER_EPOCH": 2,
            "DEVICE": 1,
            "OUTPUT": out,
        },
    )
    assert result["OUTPUT"] == out
    meta = read_metadata(out)
    assert meta["training"]["kind"] == "fine-tune" and meta["training"]["label_polygons"] == 4
    assert meta["base_model"]["name"] == "tiny-base"
    assert 0.0 <= result["IOU_BEFORE"] <= 1.0 and 0.0 <= result["IOU_AFTER"] <= 1.0
    assert 0.0 < result["THRESHOLD"] < 1.0 and result["CURVES"].endswith("mine_curves.png")


def test_algorithms_chain_in_a_processing_model(run, ortho_path, model_path):
    """Detect -> rooftop solar as a graphical-modeler model, the way a user would wire them."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Src,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("roofs", "tests")
    model.addModelParameter(
        QgsProcessingParameterRasterLayer("ortho", "Orthophoto"), QgsProcessingModelParameter("ortho")
    )
    detect = QgsProcessingModelChildAlgorithm("roofdetector:detectbuildings")
    detect.setChildId("detect")
    detect.addParameterSources("INPUT", [Src.fromModelParameter("ortho")])
    detect.addParameterSources("MODEL", [Src.fromStaticValue(model_path)])
    detect.addParameterSources("DEVICE", [Src.fromStaticValue(1)])
    detect.addParameterSources("MIN_AREA", [Src.fromStaticValue(5.0)])
    model.addChildAlgorithm(detect)
    solar = QgsProcessingModelChildAlgorithm("roofdetector:rooftopsolar")
    solar.setChildId("solar")
    solar.addParameterSources("INPUT", [Src.fromChildOutput("detect", "OUTPUT")])
    solar.addParameterSources("SPECIFIC_YIELD", [Src.fromStaticValue(1000.0)])
    out = QgsProcessingModelOutput("rooftops")
    out.setChildOutputName("OUTPUT")
    solar.setModelOutputs({"rooftops": out})
    model.addChildAlgorithm(solar)
    for child in (detect, solar):  # the modeler's dialog fills in the defaults of the other parameters
        for definition in child.algorithm().parameterDefinitions():
            if not definition.isDestination() and definition.name() not in child.parameterSources():
                child.addParameterSources(definition.name(), [Src.fromStaticValue(definition.defaultValue())])
        model.setChildAlgorithm(child)
    valid, issues = model.validate()
    assert valid, issues
    result = run(model, {"ortho": ortho_path, "solar:rooftops": "memory:"})
    layer = result["solar:rooftops"]
    assert layer.featureCount() == 4
    assert {"confidence", "panels", "kwp", "annual_kwh"} <= set(layer.fields().names())


# --------------------------------------------------------------------------- headless script


def test_headless_script_parses_parameters_like_qgis_process(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "roofdetector_process", repo_root / "scripts" / "roofdetector_process.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.parse_parameters(["INPUT=a.tif", "--DEVICE=1", "EXTENT=1,2,3,4 [EPSG:32631]", "L=x", "L=y"]) == {
        "INPUT": "a.tif",
        "DEVICE": "1",
        "EXTENT": "1,2,3,4 [EPSG:32631]",
        "L": ["x", "y"],
    }
    with pytest.raises(SystemExit):
        script.parse_parameters(["INPUT"])


def test_headless_script_lists_the_algorithms(repo_root):
    import os
    import subprocess

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "roofdetector_process.py"), "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert {line.split("\t")[0] for line in done.stdout.splitlines()} == ALGORITHM_IDS


def test_real_number_parameters_show_two_decimals_and_help_links_the_repository(processing_ready, plugin):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingParameterNumber
    from qgis.gui import QgsGui, QgsProcessingGui

    alg = QgsApplication.processingRegistry().algorithmById("roofdetector:detectbuildings")
    param = alg.parameterDefinition("MIN_AREA")
    assert param.dataType() == QgsProcessingParameterNumber.Double
    wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(param, QgsProcessingGui.Standard)
    widget = wrapper.createWrappedWidget(QgsProcessingContext())
    assert widget.decimals() == 2 and widget.text().replace(",", ".") in ("10.00", "10.00 ")
    assert alg.helpUrl().startswith("https://github.com/") and "<b>" in alg.shortHelpString()


def test_help_as_plain_text_for_qgis_process():
    from roof_detector.processing.common import html_to_text

    assert (
        html_to_text("<b>Model</b>: a <i>.pt</i> file;<br>empty = bundled &amp; fine")
        == "Model: a .pt file;\nempty = bundled & fine"
    )


def test_rooftop_solar_never_shifts_a_column(run):
    """Release 0.2.0 dropped `src_x` when `x` clashed, then wrote values by position (issue 21)."""
    hostile = {
        "area_m2": 1.5,
        "src_area_m2": 2.5,
        "src_area_m2_2": 3.5,
        "kwp": 4.5,
        "src_kwp": 5.5,
        "Kwp": 6.5,
        "name": "lower",
        "NAME": "UPPER",
        "orientation_deg": 7.5,
    }
    kinds = {k: "string" if isinstance(v, str) else "double" for k, v in hostile.items()}
    layer = polygon_layer([(box(0, 0, 10, 20), hostile)], fields=[f"{k}:{t}" for k, t in kinds.items()])
    params = {"INPUT": layer, "SPECIFIC_YIELD": 1000, "PANEL_WP": 400, "OUTPUT": "memory:"}
    out = run("roofdetector:rooftopsolar", params)["OUTPUT"]
    row = next(out.getFeatures())
    values = dict(zip(out.fields().names(), row.attributes()))
    for name, value in hostile.items():  # each input value exactly once
        assert [k for k, v in values.items() if v == value], name
    assert values["src_area_m2_3"] == 1.5 and values["src_area_m2"] == 2.5 and values["src_kwp_2"] == 4.5
    assert values["src_NAME"] == "UPPER" and values["name"] == "lower"  # a GeoPackage sink ignores case
    assert values["area_m2"] == pytest.approx(200.0, rel=0.002) and values["kwp"] == pytest.approx(20.8)
    assert values["orientation_deg"] != 7.5 and values["src_orientation_deg"] == 7.5
    # on its own output with another panel power: the new values are written, the old ones kept
    again = run("roofdetector:rooftopsolar", {**params, "INPUT": out, "PANEL_WP": 200})
    row2 = next(again["OUTPUT"].getFeatures())
    values2 = dict(zip(again["OUTPUT"].fields().names(), row2.attributes()))
    assert again["TOTAL_KWP"] == pytest.approx(10.4) and values2["kwp"] == pytest.approx(10.4)
    assert values2["annual_kwh"] == pytest.approx(10400)
    assert values2["src_kwp_4"] == pytest.approx(20.8)  # the first run's kwp (src_Kwp_3 holds Kwp)
    assert len(values2) == len(values) + 8


def test_rooftop_solar_takes_curved_polygons(run):
    """A CurvePolygon (common in cadastres) crashed 0.2.0 with `Unknown WKB type 10`."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer("CurvePolygon?crs=EPSG:32631", "parcels", "memory")
    feature = QgsFeature(layer.fields())
    x, y = X0, Y0 - 100
    feature.setGeometry(
        QgsGeometry.fromWkt(
            f"CURVEPOLYGON(CIRCULARSTRING({x} {y},{x + 10} {y + 10},{x + 20} {y},{x + 10} {y - 10},{x} {y}))"
        )
    )
    assert layer.dataProvider().addFeatures([feature])[0]
    result = run("roofdetector:rooftopsolar", {"INPUT": layer, "SPECIFIC_YIELD": 1000, "OUTPUT": "memory:"})
    row = next(result["OUTPUT"].getFeatures())
    assert row["area_m2"] == pytest.approx(314.16, rel=0.01) and result["BUILDINGS"] == 1


def test_detect_buildings_refuses_a_runaway_raster_unless_confirmed(run, project, model_path, tmp_path):
    """A VRT declaring 20,000² px: 127,449 tiles of the test model, refused before it starts (issue 21)."""
    from qgis.core import QgsProcessingException, QgsRasterLayer

    from tests.core.test_runaway_work import huge_vrt

    layer = QgsRasterLayer(huge_vrt(tmp_path, 20_000, 0.5), "huge")
    assert layer.isValid()
    # Owned by the project, which releases it after the test: the failed run's frames,
    # leaked by QGIS's bindings (see ``run``), must not hold the last reference to it.
    project.addMapLayer(layer)
    with pytest.raises(QgsProcessingException, match="more than 100,000 tiles.*CONFIRM_LARGE"):
        run("roofdetector:detectbuildings", {"INPUT": layer, "MODEL": model_path, "DEVICE": 1, "OUTPUT": "memory:"})


def test_a_failed_run_releases_the_engines_objects(run, ortho_path, model_path, tmp_path):
    """QGIS's bindings keep the exception of a failed Python algorithm for ever: the engine's
    frames in its traceback (the loaded model, the raster, the tiles) must hold nothing."""
    import gc

    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    core = str(Path(__file__).resolve().parents[2] / "roof_detector" / "core")

    def core_frames():
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, types.FrameType) and o.f_code.co_filename.startswith(core)]

    before = {id(frame) for frame in core_frames()}  # other tests' leftovers are not this test's business
    feedback = QgsProcessingFeedback()
    feedback.cancel()  # fails inside the engine, after the model is loaded
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run(
            "roofdetector:detectbuildings",
            {"INPUT": ortho_path, "MODEL": model_path, "DEVICE": 1, "OUTPUT": "memory:"},
            feedback=feedback,
        )
    holding = [
        f"{frame.f_code.co_name}: {sorted(k for k, v in frame.f_locals.items() if v is not None)}"
        for frame in core_frames()
        if id(frame) not in before and any(v is not None for v in frame.f_locals.values())
    ]
    assert holding == []
