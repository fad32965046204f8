"""Processing algorithm *Detect buildings in many rasters*: the detect-many engine on local Dask workers."""

import pytest

from tests.core.many_fixtures import cut, read_layer, scene

from .test_processing import processing_ready  # noqa: F401 - fixture

pytestmark = pytest.mark.qgis


@pytest.mark.slow
def test_detect_buildings_in_many_rasters(processing_ready, plugin, tmp_path, model_path):  # noqa: F811
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProject

    from roof_detector.core.pipeline import DetectOptions, detect_buildings

    whole = scene(str(tmp_path / "whole.tif"))
    tiles = cut(whole, str(tmp_path / "tiles"))
    reference = detect_buildings(whole, DetectOptions(model_path=model_path, device="cpu")).buildings
    out = tmp_path / "many.gpkg"
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = processing.run(
        "roofdetector:detectbuildingsmany",
        {
            "INPUTS": tiles[:2],
            "MORE_INPUTS": f"{tiles[2]}; {tmp_path / 'tiles' / 'tile_1_1.tif'}",
            "MODEL": model_path,
            "WORKERS": 1,
            "OUTPUT": str(out),
        },
        context=context,
    )
    got = read_layer(str(out))
    assert result["BUILDINGS"] == len(got) == len(reference) > 40
    # areas are written rounded to 0.01 m2 (issue 17), so the total may differ by 0.005 m2 a building
    assert result["TOTAL_AREA_M2"] == pytest.approx(sum(b.area_m2 for b in reference), abs=0.005 * len(reference))
    assert result["OUTPUT"] == str(out)
    assert list(context.layersToLoadOnCompletion())[0].endswith("many.gpkg|layername=buildings")
    assert not (tmp_path / "many.gpkg.parts").exists()

    with pytest.raises(QgsProcessingException, match="No input"):
        processing.run("roofdetector:detectbuildingsmany", {"MODEL": model_path, "OUTPUT": str(tmp_path / "x.gpkg")})
    with pytest.raises(QgsProcessingException, match="matches no file"):
        processing.run(
            "roofdetector:detectbuildingsmany",
            {"MORE_INPUTS": str(tmp_path / "nothing_*.tif"), "MODEL": model_path, "OUTPUT": str(tmp_path / "x.gpkg")},
        )
