"""The parameter declarations (core.params): one range per parameter, every number finite and in range."""

import math

import pytest

from roof_detector.core import params
from roof_detector.core.errors import RoofDetectorError
from roof_detector.core.params import GROUPS, ParameterError
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from roof_detector.core.solar import SolarParams
from roof_detector.core.training.finetune import FinetuneOptions


@pytest.mark.parametrize("group, name", [(g, n) for g, ps in GROUPS.items() for n in ps])
def test_each_default_passes_its_own_check(group, name):
    p = GROUPS[group][name]
    assert p.check(p.default) == p.default
    if p.kind in (int, float):
        assert p.low is not None and p.high is not None, "every number has a closed range"
        for bad in (math.nan, math.inf, -math.inf, p.low - 1, p.high + 1):
            with pytest.raises(ParameterError):
                p.check(bad)


def test_option_classes_take_their_defaults_from_the_declarations():
    d, s, f = DetectOptions(), SolarParams(), FinetuneOptions("r", "l", "o")
    for group, obj in (("detect", d), ("outlines", d), ("solar", s), ("finetune", f)):
        for name, p in GROUPS[group].items():
            if hasattr(obj, name):
                assert getattr(obj, name) == p.default, (group, name)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("min_area_m2", math.nan, "Minimum building area must be a finite number"),
        ("regularize_tolerance_m", math.nan, "Regularisation tolerance must be a finite number"),
        ("regularize_tolerance_m", math.inf, "Regularisation tolerance must be a finite number"),
        ("threshold", 1.0, "Threshold must be from 0.01 to 0.99"),
        ("batch_size", 0, "Batch size must be from 1 to 1024"),
        ("device", "gpu", "Device must be one of auto, cpu, cuda"),
    ],
)
def test_detect_refuses_a_bad_option_before_any_work(tmp_path, field, value, words):
    """The raster does not exist: the parameter error comes first (nothing opened, nothing loaded)."""
    with pytest.raises(ParameterError, match=words):
        detect_buildings(str(tmp_path / "missing.tif"), DetectOptions(**{field: value}))


@pytest.mark.parametrize(
    "field, value",
    [
        ("panel_area_m2", 1e-300),
        ("panel_wp", 1e308),
        ("setback_m", math.nan),
        ("usable_fraction", 1.5),
        ("specific_yield_kwh_per_kwp", 0.0),
    ],
)
def test_solar_params_refuse_with_the_one_error_type(tmp_path, field, value):
    with pytest.raises(ParameterError) as info:
        detect_buildings(str(tmp_path / "missing.tif"), DetectOptions(solar=SolarParams(**{field: value})))
    assert isinstance(info.value, RoofDetectorError) and isinstance(info.value, ValueError)
    assert params.SOLAR[field].label in str(info.value)


def test_finetune_options_are_checked():
    with pytest.raises(ParameterError, match="Epochs must be from 1 to 500"):
        FinetuneOptions("r", "l", "o", epochs=0).validate()


def test_unknown_keys_are_refused_not_dropped():
    with pytest.raises(ParameterError, match="Unknown detect parameter"):
        params.check("detect", {"treshold": 0.5})
    assert params.check("detect", {"threshold": "0.5"}) == {"threshold": 0.5}
