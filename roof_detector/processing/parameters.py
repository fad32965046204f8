"""Processing parameters built from the declarations of :mod:`roof_detector.core.params`.

Name (``Param.key``), label, unit, default and range come from the one
declaration; an optional parameter left empty means the declaration's
``none_means`` ("the model's", "automatic"...). Values read back are checked
by the declaration again (a model or a script can pass anything). A
declaration without a ``key`` is not a Processing parameter (fine-tune's
``overwrite``: a Processing destination is replaced once QGIS has asked).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
)

from ..core.params import GROUPS, Param


def label(p: Param) -> str:
    """'Minimum building area (m²)', 'Threshold (empty: the model's tuned value)'."""
    from .common import tr

    text = tr(p.label)
    if p.unit:
        text += f" ({p.unit})"
    if p.optional:
        text += " " + tr("(empty: {what})").format(what=tr(p.none_means))
    return text


def definition(p: Param, default: Any = None) -> QgsProcessingParameterDefinition:
    """The Processing parameter of ``p`` (``default`` overrides the declared one)."""
    value = p.default if default is None else default
    if p.kind is bool:
        return QgsProcessingParameterBoolean(p.key, label(p), defaultValue=value)
    if p.choices:
        from .common import tr

        return QgsProcessingParameterEnum(
            p.key, label(p), options=[tr(c) for c in p.choice_labels or p.choices], defaultValue=p.choices.index(value)
        )
    kind = QgsProcessingParameterNumber.Integer if p.kind is int else QgsProcessingParameterNumber.Double
    return QgsProcessingParameterNumber(
        p.key, label(p), kind, defaultValue=value, optional=p.optional, minValue=p.low, maxValue=p.high
    )


def _names(group: str, names: Tuple[str, ...]) -> Tuple[str, ...]:
    """``names``, or every parameter of ``group`` that Processing shows (those with a key)."""
    return names or tuple(name for name, p in GROUPS[group].items() if p.key)


def add(alg: Any, group: str, *names: str, advanced: tuple = (), defaults: Dict[str, Any] = None) -> None:
    """Add the declared parameters ``names`` of ``group`` (all when none given) to ``alg``."""
    for name in _names(group, names):
        d = definition(GROUPS[group][name], (defaults or {}).get(name))
        if name in advanced:
            d.setFlags(d.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        alg.addParameter(d)


def value(alg: Any, parameters: Dict[str, Any], context: Any, group: str, name: str) -> Any:
    """The checked value of a declared parameter (None for an empty optional one)."""
    p = GROUPS[group][name]
    if p.optional and not alg.optional_value(parameters, p.key):
        return None
    if p.kind is bool:
        raw = alg.parameterAsBoolean(parameters, p.key, context)
    elif p.choices:
        raw = p.choices[alg.parameterAsEnum(parameters, p.key, context)]
    elif p.kind is int:
        raw = alg.parameterAsInt(parameters, p.key, context)
    else:
        raw = alg.parameterAsDouble(parameters, p.key, context)
    return p.check(raw)


def values(alg: Any, parameters: Dict[str, Any], context: Any, group: str, *names: str) -> Dict[str, Any]:
    """:func:`value` of each of ``names`` (all of ``group`` when none given), by engine field name."""
    return {name: value(alg, parameters, context, group, name) for name in _names(group, names)}


def help_lines(group: str, *names: str) -> str:
    """The declarations' help as the algorithms' help lists it: '<b>Label</b>: help (range; default).<br>'."""
    out = []
    for name in _names(group, names):
        p = GROUPS[group][name]
        out.append(f"<b>{p.label}</b>: {p.help_text()}.<br>")
    return "".join(out)


def detect_options(alg: Any, parameters: Dict[str, Any], context: Any, model: Optional[str], **fields: Any) -> Any:
    """The engine's ``DetectOptions`` from an algorithm's detect, outlines and solar parameters.

    ``model``: the model file given, else the bundled model (a :class:`QgsProcessingException`
    when it is not installed); ``fields``: other options (e.g. the area to search).
    """
    from qgis.core import QgsProcessingException

    from ..core.pipeline import DetectOptions
    from ..core.solar import SolarParams
    from ..qgis_adapter.paths import bundled_model_path
    from .common import tr

    model = model or bundled_model_path()
    if model is None:
        raise QgsProcessingException(tr("The bundled model is not installed; give a model file (parameter MODEL)"))
    return DetectOptions(
        model_path=model,
        **fields,
        **values(alg, parameters, context, "detect"),
        **values(alg, parameters, context, "outlines"),
        solar=SolarParams(**values(alg, parameters, context, "solar")),
    )
