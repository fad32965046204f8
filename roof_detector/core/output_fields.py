"""The fields and values every output stores: the GeoPackage writer, the plugin's memory layers
and the Processing sinks follow these rules, so a building reads the same in each.

* Fields: ``area_m2``, ``perimeter_m``, ``confidence`` (:data:`BASE_FIELDS`), then each key of the
  buildings' ``attributes`` in first-seen order, its kind widened over all buildings
  (:func:`attribute_schema`); a key clashing, ignoring case, with a built-in name or an earlier
  key is written as ``attr_<key>`` (:func:`field_names`).
* Values: rounded once, at write time, to the decimals of :mod:`.precision`
  (:func:`base_values`, :func:`written_value`).

No ``qgis``, GDAL or shapely import here.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .field_names import free_names
from .precision import rounded

if TYPE_CHECKING:
    from .building import Building

BASE_FIELDS = ("area_m2", "perimeter_m", "confidence")
RESERVED_NAMES = BASE_FIELDS + ("fid", "geom")


def base_values(building: Building) -> Tuple[float, float, Optional[float]]:
    """(area_m2, perimeter_m, confidence) as every output stores them: rounded once, at write
    time, to the decimals of :mod:`.precision` (this writer, the plugin's memory layer, the
    Processing sink)."""
    confidence = None if building.confidence is None else float(rounded("confidence", building.confidence))
    return (
        float(rounded("area_m2", building.area_m2)),
        float(rounded("perimeter_m", building.perimeter_m)),
        confidence,
    )


def written_value(key: str, kind: str, value: Any) -> Any:
    """Attribute ``key`` of :func:`attribute_schema` kind ``kind`` as every output stores it: None
    stays None, a real is rounded to the decimals of :mod:`.precision`, an integer is an int, anything
    else its text."""
    if value is None:
        return None
    if kind == "real":
        return float(rounded(key, value))
    if kind == "integer":
        return int(value)
    return value if isinstance(value, str) else str(value)


def attribute_schema(buildings: Iterable[Building]) -> List[Tuple[str, str, str]]:
    """(attribute key, field name, kind) of the buildings' attributes, in first-seen order.

    The one rule for the fields of every output (this writer, the plugin's
    memory layer, the Processing sink): kind "integer", "real" or "string",
    widened over all buildings (int + float -> real, any str -> string, only
    None -> string); the solar fields keep their declared kind even when every
    value is None; a key clashing, ignoring case, with a built-in name or an
    earlier key gets the first free ``attr_<key>``, ``attr_<key>_2``...
    """
    rank = {None: -1, "integer": 0, "real": 1, "string": 2}
    kinds: Dict[str, Optional[str]] = {}
    for b in buildings:
        for key, value in b.attributes.items():
            if value is None:
                kind = None
            elif type(value) is float:  # the common case first: the ABC checks below are slow
                kind = "real"
            elif isinstance(value, (bool, numbers.Integral)):
                kind = "integer"
            elif isinstance(value, numbers.Real):
                kind = "real"
            else:
                kind = "string"
            if key not in kinds or kinds[key] != kind:  # most values repeat their key's kind
                kinds[key] = max(kinds.get(key), kind, key=rank.__getitem__)
    fixed: Dict[str, str] = {}
    if None in kinds.values():  # imported only when needed: core.solar needs shapely
        from .solar import SOLAR_FIELDS

        fixed = dict(SOLAR_FIELDS)
    names = field_names(list(kinds))
    return [(key, names[key], kind or fixed.get(key) or "string") for key, kind in kinds.items()]


def field_names(keys: Sequence[str]) -> Dict[str, str]:
    """The field each attribute key is written to: itself, or ``attr_<key>`` (``attr_<key>_2``...) when it
    clashes, ignoring case, with a built-in name or another key."""
    return dict(zip(keys, free_names(keys, RESERVED_NAMES, prefix="attr_")))
