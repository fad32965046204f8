"""What a parameter declaration is (:class:`Param`) and the one error a bad value raises.

The declarations themselves are in :mod:`.params`; every front end builds its controls from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .errors import RoofDetectorError


class ParameterError(RoofDetectorError, ValueError):
    """A parameter value is not usable; the message names it, its range and the value given."""


@dataclass(frozen=True)
class Param:
    """One parameter as every front end shows it.

    ``name`` is the engine's field name; ``flag`` the CLI option (``short_flag``
    its one-letter alias, if any); ``key`` the Processing parameter name
    (empty: not a Processing parameter); ``optional`` parameters accept None
    (meaning ``none_means``: "the model's", "automatic"...). A yes/no parameter
    whose default is no is a plain CLI switch (``--yes``, ``--overwrite``).
    """

    name: str
    kind: type
    default: Any
    label: str
    help: str
    flag: str = ""
    key: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    unit: str = ""
    decimals: int = 2
    step: float = 1.0
    optional: bool = False
    none_means: str = ""
    choices: Tuple[str, ...] = ()
    choice_labels: Tuple[str, ...] = ()  # what a list shows for each choice
    short_flag: str = ""

    def check(self, value: Any) -> Any:
        """``value`` converted to the parameter's type, or :class:`ParameterError` saying what is wrong."""
        if value is None:
            if self.optional:
                return None
            raise ParameterError(f"{self.label} needs a value ({self.range_text()})")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise ParameterError(f"{self.label} must be yes or no, got {value!r}")
        if self.kind is str:
            if self.choices and value not in self.choices:
                raise ParameterError(f"{self.label} must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        return self._check_number(value)

    def _check_number(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ParameterError(f"{self.label} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.label} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ParameterError(f"{self.label} must be a finite number ({self.range_text()}), got {value!r}")
        if self.kind is int and number != int(number):
            raise ParameterError(f"{self.label} must be a whole number ({self.range_text()}), got {value!r}")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ParameterError(f"{self.label} must be {self.range_text()}, got {value!r}")
        return int(number) if self.kind is int else number

    def parse(self, text: str) -> Any:
        """A value typed by a user (CLI, settings) checked as :meth:`check` does."""
        if self.kind in (int, float):
            try:
                number = float(text)
            except (TypeError, ValueError):
                raise ParameterError(f"{self.label} must be a number, got {text!r}") from None
            return self.check(number)
        return self.check(text)

    def range_text(self) -> str:
        """The allowed values in words, with the unit: 'from 0 to 100000 m²'."""
        unit = f" {self.unit}" if self.unit else ""
        if self.low is not None and self.high is not None:
            return f"from {self.low:g} to {self.high:g}{unit}"
        if self.low is not None:
            return f"at least {self.low:g}{unit}"
        if self.high is not None:
            return f"at most {self.high:g}{unit}"
        return "a finite number"

    def help_text(self) -> str:
        """Help with range, unit and default, as the CLI and Processing show it."""
        parts = [self.help]
        if self.kind in (int, float):
            parts.append(f"({self.range_text()}")
            default = self.none_means if self.default is None else f"{self.default:g}"
            parts[-1] += f"; default: {default})"
        elif self.kind is bool:
            parts.append(f"(default: {'yes' if self.default else 'no'})")
        return " ".join(parts)
