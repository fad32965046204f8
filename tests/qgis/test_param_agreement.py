"""Every front end shows each parameter with the one range and default of core.params.

The CLI, the Processing algorithms, the dialogs' spin boxes and the saved
settings are built from the declarations; these tests pin that they agree
(the threshold, for one, used to be (0, 1) in the CLI, 0.01-0.99 in the
dialog and [0, 1] in Processing).
"""

import argparse
import math

import pytest

from roof_detector.core.params import DETECT, FINETUNE, MANY, OUTLINES, SOLAR

pytestmark = pytest.mark.qgis

NUMBERS = [
    (g, p)
    for g, group in (("detect", DETECT), ("outlines", OUTLINES), ("solar", SOLAR))
    for p in group.values()
    if p.kind in (int, float)
]


def _cli_actions(command):
    from roof_detector.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


def _algorithm(alg_id):
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    assert alg is not None, alg_id
    return alg


def test_processing_detect_has_every_parameter_the_cli_has(plugin):
    cli = _cli_actions("detect")
    declared = {name for group in (DETECT, OUTLINES, SOLAR) for name in group}
    assert declared <= set(cli), "the CLI builds its options from the declarations"
    alg = _algorithm("roofdetector:detectbuildings")
    keys = {d.name() for d in alg.parameterDefinitions()}
    assert {p.key for group in (DETECT, OUTLINES, SOLAR) for p in group.values()} <= keys


def test_the_switches_of_issue_21_are_declared_once(plugin):
    """The size guard's confirmation and fine-tune's overwrite: off unless asked, where each front end asks."""
    yes = _cli_actions("detect")["confirm_large_run"]
    assert yes.option_strings == ["-y", "--yes"] and yes.default is False and yes.nargs == 0
    overwrite = _cli_actions("finetune")["overwrite"]
    assert overwrite.option_strings == ["--overwrite"] and overwrite.default is False
    large = _algorithm("roofdetector:detectbuildings").parameterDefinition(DETECT["confirm_large_run"].key)
    assert large.defaultValue() is False and large.flags() & large.FlagAdvanced
    # Processing replaces its destination once QGIS has asked: no OVERWRITE parameter
    finetune = {d.name() for d in _algorithm("roofdetector:finetunemodel").parameterDefinitions()}
    assert FINETUNE["overwrite"].key == "" and "OVERWRITE" not in finetune
    assert {p.key for p in FINETUNE.values() if p.key} <= finetune


@pytest.mark.parametrize("group, p", NUMBERS, ids=[p.name for _, p in NUMBERS])
def test_ranges_and_defaults_agree_in_cli_and_processing(plugin, group, p):
    action = _cli_actions("detect")[p.name]
    assert action.default == p.default
    for good in (p.low, p.high):
        assert action.type(str(good)) == pytest.approx(good)
    for bad in (p.low - 10 ** -(p.decimals + 1), p.high * 1.001 + 1e-9, math.nan, math.inf):
        with pytest.raises(argparse.ArgumentTypeError):
            action.type(str(bad))
    definition = _algorithm("roofdetector:detectbuildings").parameterDefinition(p.key)
    assert (definition.minimum(), definition.maximum()) == (p.low, p.high)
    assert definition.defaultValue() == p.default
    assert bool(definition.flags() & definition.FlagOptional) == p.optional


def test_solar_algorithm_shares_the_declarations(plugin):
    alg = _algorithm("roofdetector:rooftopsolar")
    for p in SOLAR.values():
        d = alg.parameterDefinition(p.key)
        assert (d.minimum(), d.maximum(), d.defaultValue()) == (p.low, p.high, p.default)
    assert alg.parameterDefinition("REGULARIZE").defaultValue() is False  # cadastres are clean, as the CLI
    assert _cli_actions("solar")["regularize"].default is False


def test_dialog_spin_boxes_use_the_declared_ranges(qgis_iface):
    from roof_detector.qgis_ui.dialog import DetectDialog

    dialog = DetectDialog(qgis_iface)
    spins = {
        "threshold": dialog.threshold_spin,
        "min_area_m2": dialog.min_area_spin,
        "regularize_tolerance_m": dialog.tolerance_spin,
        "setback_m": dialog.setback_spin,
        "usable_fraction": dialog.usable_spin,
        "panel_area_m2": dialog.panel_area_spin,
        "panel_wp": dialog.panel_wp_spin,
        "specific_yield_kwh_per_kwp": dialog.yield_spin,
    }
    for name, spin in spins.items():
        p = {**DETECT, **OUTLINES, **SOLAR}[name]
        assert (spin.minimum(), spin.maximum()) == pytest.approx((p.low, p.high)), name
    assert (dialog.threshold_spin.minimum(), dialog.threshold_spin.maximum()) == (0.01, 0.99)


def test_finetune_dialog_uses_the_declared_ranges(qgis_iface, tmp_path):
    from roof_detector.qgis_ui.finetune_dialog import FinetuneDialog

    dialog = FinetuneDialog(qgis_iface, library_dir=str(tmp_path))
    for name, spin, scale in (
        ("epochs", dialog.training.epochs_spin, 1),
        ("lr", dialog.training.lr_spin, 1),
        ("batch_size", dialog.training.batch_spin, 1),
        ("val_fraction", dialog.training.val_spin, 100),
        ("patience", dialog.training.patience_spin, 1),
    ):
        p = FINETUNE[name]
        assert (spin.minimum(), spin.maximum()) == pytest.approx((p.low * scale, p.high * scale)), name
    assert dialog.training.samples_spin.maximum() == FINETUNE["samples_per_epoch"].high


def test_saved_settings_default_to_the_declarations_and_refuse_out_of_range_values(qgis_app):
    from qgis.core import QgsSettings

    from roof_detector.qgis_ui import settings

    settings.clear()
    try:
        for key, (group, name) in settings.DECLARED.items():
            p = {"detect": DETECT, "outlines": OUTLINES, "solar": SOLAR, "finetune": FINETUNE}[group][name]
            assert settings.get(key) == p.default, key
        QgsSettings().setValue(settings.PREFIX + "solar_panel_wp", "1e308")  # an old or hand-edited value
        QgsSettings().setValue(settings.PREFIX + "min_area_m2", "nan")
        QgsSettings().setValue(settings.PREFIX + "threshold", "1.0")
        assert settings.get("solar_panel_wp") == SOLAR["panel_wp"].default
        assert settings.get("min_area_m2") == DETECT["min_area_m2"].default
        assert settings.get("threshold") == 0.5
    finally:
        settings.clear()


def test_the_planner_assumes_the_bundled_model_grid():
    from roof_detector.core.model_io import BUNDLED_MODEL_PATH, read_metadata
    from roof_detector.core.params import BUNDLED_MODEL_GRID

    meta = read_metadata(str(BUNDLED_MODEL_PATH))
    assert {k: meta[k] for k in BUNDLED_MODEL_GRID} == BUNDLED_MODEL_GRID


def test_finetune_ranges_agree_in_cli_and_processing(plugin):
    cli = _cli_actions("finetune")
    alg = _algorithm("roofdetector:finetunemodel")
    for p in FINETUNE.values():
        if not p.key:  # overwrite: a CLI switch only (see test_the_switches_of_issue_21_are_declared_once)
            continue
        d = alg.parameterDefinition(p.key)
        assert d.defaultValue() == p.default and cli[p.name].default == p.default, p.name
        if p.kind is bool:  # compare_outside, freeze_encoder: --NAME / --no-NAME
            assert isinstance(cli[p.name], argparse.BooleanOptionalAction), p.name
            continue
        assert (d.minimum(), d.maximum()) == (p.low, p.high), p.name
        with pytest.raises(argparse.ArgumentTypeError):
            cli[p.name].type(str(p.high * 2))
    assert alg.parameterDefinition("DEVICE").options() == ["Automatic", "CPU", "CUDA GPU"]


def test_detect_many_takes_every_detect_parameter_and_its_declared_distribution_ones(plugin):
    cli = _cli_actions("detect-many")
    detect = _cli_actions("detect")
    alg = _algorithm("roofdetector:detectbuildingsmany")
    for group in (DETECT, OUTLINES, SOLAR, MANY):
        for p in group.values():
            d = alg.parameterDefinition(p.key)
            assert d is not None, p.key
            if p.kind in (int, float) and not p.choices:
                assert (d.minimum(), d.maximum()) == (p.low, p.high), p.name
                assert bool(d.flags() & d.FlagOptional) == p.optional, p.name
            if not p.choices:
                assert d.defaultValue() == p.default, p.name
            assert cli[p.name].default == p.default, p.name
            if group is not MANY:  # the same options as detect, from the same function
                assert cli[p.name].option_strings == detect[p.name].option_strings
    for p in MANY.values():
        with pytest.raises(argparse.ArgumentTypeError):
            cli[p.name].type(str(p.high * 2))
        with pytest.raises(argparse.ArgumentTypeError):
            cli[p.name].type("nan")
