"""The service's request options come from the parameter declarations (core/params.py), nothing else."""

import argparse

import pytest

from roof_detector.cli import detect as detect_cli
from roof_detector.cli import solar as solar_cli
from roof_detector.core.params import GROUPS
from roof_detector.service.options import (
    OptionsError,
    detect_option_names,
    detect_options,
    request_options,
    solar_option_names,
    solar_options,
)


def _cli_keys(command_module):
    """The long options of a CLI command, as request keys, without the server's and the paths."""
    sub = argparse.ArgumentParser().add_subparsers()
    parser = command_module.add_parser(sub)
    keys = {
        opt[2:].replace("-", "_")
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and not opt.startswith("--no-")
    }
    return keys - {
        "help",
        "output",
        "layer",
        "out_layer",
        "overwrite",
        "model",
        "report",
        "device",
        "batch_size",
        "yes",
    }


def test_option_keys_are_the_declared_parameters_named_as_the_cli_names_them():
    assert set(detect_option_names()) == _cli_keys(detect_cli)
    assert set(solar_option_names()) == _cli_keys(solar_cli)
    declared = {name for group in ("detect", "outlines", "solar") for name in GROUPS[group]} - {
        "device",
        "batch_size",
        "confirm_large_run",
    }
    assert len(detect_option_names()) == len(declared)


def test_defaults_are_the_declarations_and_the_cli_commands():
    options = detect_options(None)
    for group in ("detect", "outlines"):
        for name, p in GROUPS[group].items():
            assert getattr(options, name) == p.default, name
    assert options.solar.as_dict() == {name: p.default for name, p in GROUPS["solar"].items()}
    params, regularize, tolerance = solar_options({})
    assert regularize is solar_cli.REGULARIZE_DEFAULT is False  # as `solar`: cadastre outlines are clean
    assert tolerance == GROUPS["outlines"]["regularize_tolerance_m"].default


def test_a_clients_engine_options_round_trip():
    engine = dict(
        threshold=0.4,
        min_area_m2=12.0,
        separate_touching=False,
        regularize=False,
        regularize_tolerance_m=2.0,
        model_path="/m.pt",
        device="cuda",
        aoi_wkt="POLYGON EMPTY",
    )
    solar = dict(setback_m=0.8, panel_wp=420.0, specific_yield_kwh_per_kwp=None)
    wire = request_options(engine, solar)
    assert wire == {
        "threshold": 0.4,
        "min_area": 12.0,
        "separate_touching": False,
        "regularize": False,
        "tolerance": 2.0,
        "setback": 0.8,
        "panel_wp": 420.0,
    }  # no model, device, area or None
    options = detect_options(wire)
    assert (
        options.threshold,
        options.min_area_m2,
        options.separate_touching,
        options.regularize,
        options.regularize_tolerance_m,
    ) == (0.4, 12.0, False, False, 2.0)
    assert (options.solar.setback_m, options.solar.panel_wp) == (0.8, 420.0)
    assert options.model_path is None and options.device == "auto"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"yield": 1e308}, "Specific yield must be from 1 to 4999"),
        ({"tolerance": float("inf")}, "finite"),
        ({"separate_touching": 1}, "true or false"),
        ({"min_area": [1]}, "must be a number"),
        ({"batch_size": 4}, "unknown option 'batch_size'"),
        ({"yes": True}, "unknown option 'yes'"),  # the work-size guard is the server's, as the device
        ("threshold=0.5", "must be a JSON object"),
    ],
)
def test_bad_values_name_the_option_and_the_declared_range(options, message):
    with pytest.raises(OptionsError, match=message):
        detect_options(options)
