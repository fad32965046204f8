"""argparse options built from the parameter declarations of :mod:`roof_detector.core.params`.

The flag, type, default, range and help of each option come from its one
declaration; a value out of range (or ``nan``/``inf``) is refused by
argparse itself, before any work, with the declaration's message.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

from ..core.params import GROUPS, Param, ParameterError


def value_type(p: Param) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses and checks a value of ``p``."""

    def parse(text: str) -> Any:
        try:
            return p.parse(text)
        except ParameterError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = p.name  # argparse names the type in some messages
    return parse


def add_param(parser: Any, group: str, name: str, default: Any = None, help: Optional[str] = None) -> argparse.Action:  # noqa: A002 - argparse's name
    """Add the declared parameter ``group.name`` to ``parser`` (dest = the engine's field name).

    ``default`` overrides the declared default where a command differs on purpose
    (``solar`` does not regularise by default: cadastre outlines are clean).
    """
    p = GROUPS[group][name]
    value = p.default if default is None else default
    text = help or (p.help_text() if default is None else f"{p.help} (default: {_shown(value)})")
    flags = [f for f in (p.short_flag, p.flag) if f]
    if p.kind is bool and not p.default:  # a switch that is off unless given (--yes, --overwrite)
        return parser.add_argument(*flags, dest=p.name, action="store_true", help=help or p.help)
    if p.kind is bool:
        return parser.add_argument(*flags, dest=p.name, action=argparse.BooleanOptionalAction, default=value, help=text)
    if p.choices:
        return parser.add_argument(*flags, dest=p.name, default=value, choices=p.choices, help=text)
    metavar = (p.unit or p.kind.__name__).upper().replace("²", "2").replace("/", "_PER_")
    return parser.add_argument(*flags, dest=p.name, type=value_type(p), default=value, metavar=metavar, help=text)


def add_params(parser: Any, group: str, *names: str) -> None:
    """:func:`add_param` for each of ``names`` (all of ``group`` when none is given)."""
    for name in names or GROUPS[group]:
        add_param(parser, group, name)


def values(args: argparse.Namespace, group: str) -> dict:
    """The parsed values of ``group``'s declared parameters present in ``args``, by field name."""
    return {name: getattr(args, name) for name in GROUPS[group] if hasattr(args, name)}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)
