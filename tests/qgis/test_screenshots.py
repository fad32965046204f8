"""scripts/screenshots.py: the dialog and a result map rendered to out/screenshots/."""

import importlib.util

import pytest

pytestmark = pytest.mark.qgis


def test_screenshots_show_the_dialog_styled_buildings_and_report(repo_root, qgis_app, project):
    from qgis.PyQt.QtGui import QColor, QImage

    spec = importlib.util.spec_from_file_location("screenshots", repo_root / "scripts" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = repo_root / "out" / "screenshots"
    dialog_png, map_png, report_png, deps_png, bar_png = module.make_screenshots(str(out))
    assert QImage(bar_png).width() == 900 and QImage(bar_png).height() > 40  # the summary's lines, not one
    assert QImage(deps_png).width() >= 700
    assert QImage(dialog_png).width() >= 500
    assert report_png.endswith("report.png") and QImage(report_png).width() >= 700
    image = QImage(map_png)
    assert image.width() == 900 and image.height() == 600
    # the demo raster's first roof spans pixels (rows 20-80, cols 20-100) of 256 x 384:
    # its outline is drawn in the style's orange, its inside is roof tinted by the fill
    x, y_edge = int(60 * 900 / 384), 20 * 600 / 256
    column = [QColor(image.pixel(x, y)) for y in range(int(y_edge) - 4, int(y_edge) + 5)]
    assert any(c.red() > 200 and 60 < c.green() < 150 and c.blue() < 80 for c in column)
    inside = QColor(image.pixel(x - 20, int(50 * 600 / 256)))
    assert inside.red() > 200 and inside.blue() < 190  # the roof, tinted orange by the fill
    grass = QColor(image.pixel(5, 5))
    assert grass.green() > grass.red()
    assert project.count() == 0
