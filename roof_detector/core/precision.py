"""How many decimals each written attribute keeps (GeoPackage and QGIS layers).

The engine computes in full double precision; what a user reads in an
attribute table is rounded once, at write time, to what the measurement can
carry: areas and lengths to 0.01 m, power to 0.01 kWp, yield to 1 kWh/yr,
angles to 0.1 degree, the model's confidence to 0.001.
"""

from __future__ import annotations

from typing import Any

DECIMALS = {
    "area_m2": 2,
    "perimeter_m": 2,
    "usable_area_m2": 2,
    "confidence": 3,
    "kwp": 2,
    "specific_yield": 1,
    "annual_kwh": 0,
    "orientation_deg": 1,
}


def rounded(key: str, value: Any) -> Any:
    """``value`` rounded to the decimals of attribute ``key`` (others, and None/NaN, unchanged)."""
    places = DECIMALS.get(key)
    if places is None or value is None or isinstance(value, (bool, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if number != number:  # NaN
        return value
    return round(number, places)
