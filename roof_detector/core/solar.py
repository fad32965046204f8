"""Rooftop solar sizing of building footprints.

Per building, in true metres whatever the CRS (each geometry is measured in a
local azimuthal-equidistant frame, see :mod:`.metric_frame`):

``area_m2``, ``perimeter_m``
    footprint (plan) area and perimeter.
``usable_area_m2``
    area of the roof inset by the setback (a negative buffer, default 0.5 m)
    times the usable fraction (default 0.6: chimneys, skylights, shading, faces
    turned away from the sun).
``panels``
    whole panels fitting the usable area: ``floor(usable_area_m2 / panel_area_m2)``
    (default panel 1.96 m², 400 Wp). Counted by area, not by tiling the roof.
``kwp``
    ``panels * panel_wp / 1000``.
``specific_yield``
    kWh per kWp per year: the user's value, else :func:`estimate_specific_yield`
    of the building's latitude.
``annual_kwh``
    ``kwp * specific_yield``.
``orientation_deg``
    azimuth of the long axis of the minimum rotated rectangle, degrees clockwise
    from true north, in [0, 180).

No ``qgis`` import here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .metric_frame import lonlat_of, to_local_metric

#: Attribute names and types written per building (OGR-style type names).
SOLAR_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("area_m2", "real"),
    ("perimeter_m", "real"),
    ("usable_area_m2", "real"),
    ("panels", "integer"),
    ("kwp", "real"),
    ("specific_yield", "real"),
    ("annual_kwh", "real"),
    ("orientation_deg", "real"),
)

# Latitude-only specific-yield curve, see estimate_specific_yield.
_YIELD_FLOOR = 950.0
_YIELD_SPAN = 650.0
_YIELD_MID_LAT = 45.0
_YIELD_WIDTH = 4.0


@dataclass
class SolarParams:
    """Sizing parameters; defaults are typical of residential rooftop PV."""

    setback_m: float = 0.5
    usable_fraction: float = 0.6
    panel_area_m2: float = 1.96
    panel_wp: float = 400.0
    specific_yield_kwh_per_kwp: Optional[float] = None  # None: estimate from latitude

    def validate(self) -> "SolarParams":
        """Raise ValueError naming the first unusable parameter; return self."""
        checks = [
            ("setback", self.setback_m, self.setback_m >= 0, "must be >= 0 metres"),
            ("usable fraction", self.usable_fraction, 0 <= self.usable_fraction <= 1, "must be in [0, 1]"),
            ("panel area", self.panel_area_m2, self.panel_area_m2 > 0, "must be > 0 m²"),
            ("panel power", self.panel_wp, self.panel_wp > 0, "must be > 0 Wp"),
        ]
        if self.specific_yield_kwh_per_kwp is not None:
            y = self.specific_yield_kwh_per_kwp
            checks.append(("specific yield", y, 0 < y < 5000, "must be in (0, 5000) kWh/kWp/yr"))
        for name, value, ok, rule in checks:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
                raise ValueError(f"{name} {value!r} {rule}")
        return self

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def estimate_specific_yield(latitude_deg: float) -> float:
    """Coarse yearly PV yield (kWh/kWp/yr) from latitude alone.

    ``950 + 650 / (1 + exp((|lat| - 45) / 4))``: about 1,600 in the tropics,
    1,250 at 45°, 1,050 at 51.5° (London), levelling off at 950 towards the
    poles. A hand fit to approximate yields of a fixed, optimally tilted
    crystalline-silicon system with 14 % system losses from PVGIS (EC JRC) and
    the Global Solar Atlas PVOUT layer (World Bank/ESMAP, Solargis); the README
    lists the reference figures. Climate is ignored, so expect errors up to
    about ±25 % (humid tropics and monsoon coasts lower, deserts higher): pass a
    site value when it matters.
    """
    lat = abs(float(latitude_deg))
    if not math.isfinite(lat) or lat > 90:
        raise ValueError(f"latitude {latitude_deg!r} is not in [-90, 90]")
    return _YIELD_FLOOR + _YIELD_SPAN / (1.0 + math.exp((lat - _YIELD_MID_LAT) / _YIELD_WIDTH))


def orientation_deg(metric_geometry: BaseGeometry) -> Optional[float]:
    """Azimuth (0-180, clockwise from the frame's +y = north) of the long axis of the
    minimum rotated rectangle of a geometry in a north-up metric frame; None if degenerate."""
    if metric_geometry is None or metric_geometry.is_empty:
        return None
    rect = shapely.minimum_rotated_rectangle(metric_geometry)
    if rect.geom_type != "Polygon":
        if rect.geom_type == "LineString" and rect.length > 0:
            (x0, y0), (x1, y1) = rect.coords[0], rect.coords[-1]
            return _azimuth(x1 - x0, y1 - y0)
        return None
    c = np.asarray(rect.exterior.coords)
    e1, e2 = c[1] - c[0], c[2] - c[1]
    long_edge = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    return _azimuth(long_edge[0], long_edge[1])


def _azimuth(dx: float, dy: float) -> float:
    az = math.degrees(math.atan2(dx, dy)) % 180.0
    return 0.0 if az >= 180.0 - 1e-9 else az


def rooftop_attributes_metric(metric_geometry: BaseGeometry, latitude_deg: Optional[float],
                              params: Optional[SolarParams] = None) -> Dict[str, Any]:
    """:func:`rooftop_attributes` of a geometry already in a north-up metric frame.

    ``latitude_deg`` is needed only when ``params`` gives no specific yield.
    """
    params = (params or SolarParams()).validate()
    geom = metric_geometry
    if geom is not None and not geom.is_empty and not geom.is_valid:
        geom = shapely.make_valid(geom)
    if geom is None or geom.is_empty:
        area = perimeter = usable = 0.0
        orient = None
    else:
        area = float(geom.area)
        perimeter = float(geom.length)
        inset = geom.buffer(-params.setback_m) if params.setback_m > 0 else geom
        usable = max(0.0, float(inset.area)) * params.usable_fraction
        orient = orientation_deg(geom)
    if params.specific_yield_kwh_per_kwp is not None:
        spec = float(params.specific_yield_kwh_per_kwp)
    elif latitude_deg is not None:
        # rounded so that annual_kwh = kwp x specific_yield holds for the values written out
        spec = round(estimate_specific_yield(latitude_deg), 1)
    else:
        raise ValueError("give a specific yield or the latitude to estimate it from")
    panels = int(math.floor(usable / params.panel_area_m2 + 1e-9))
    kwp = panels * params.panel_wp / 1000.0
    return {
        "area_m2": area,
        "perimeter_m": perimeter,
        "usable_area_m2": usable,
        "panels": panels,
        "kwp": kwp,
        "specific_yield": spec,
        "annual_kwh": kwp * spec,
        "orientation_deg": orient,
    }


def rooftop_attributes(geometry: BaseGeometry, crs_wkt: str, params: Optional[SolarParams] = None) -> Dict[str, Any]:
    """Solar attributes of one building polygon given in ``crs_wkt`` (any CRS, EPSG:4326 too).

    Keys: ``area_m2``, ``perimeter_m``, ``usable_area_m2``, ``panels``, ``kwp``,
    ``specific_yield`` (kWh/kWp/yr used), ``annual_kwh``, ``orientation_deg``
    (None for an empty geometry). See the module docstring for the formulas.
    """
    if geometry is None or geometry.is_empty:
        lat = None if (params and params.specific_yield_kwh_per_kwp is not None) else 0.0
        return rooftop_attributes_metric(None, lat, params)
    metric, frame = to_local_metric(geometry, crs_wkt)
    lat = None
    if params is None or params.specific_yield_kwh_per_kwp is None:
        lat = lonlat_of(geometry, crs_wkt)[1]
    return rooftop_attributes_metric(metric, lat, params)


def rooftop_attributes_many(geometries: Sequence[BaseGeometry], crs_wkt: str,
                            params: Optional[SolarParams] = None) -> List[Dict[str, Any]]:
    """:func:`rooftop_attributes` of each geometry (transformers are shared)."""
    params = (params or SolarParams()).validate()
    return [rooftop_attributes(g, crs_wkt, params) for g in geometries]


def size_buildings(buildings: Sequence[Any], crs_wkt: str, params: Optional[SolarParams] = None,
                   regularize: bool = False, tolerance_m: float = 1.0) -> int:
    """Add the solar attributes to detected buildings (:class:`roof_detector.core.building.Building`), in place.

    With ``regularize`` each outline is first squared (:func:`.regularize.regularize_outline`);
    a changed outline replaces ``geometry`` and updates ``area_m2`` / ``perimeter_m``.
    The other solar values go to ``attributes``. Returns how many outlines changed.
    """
    from .regularize import regularize_outline

    params = (params or SolarParams()).validate()
    changed = 0
    for b in buildings:
        reshaped = False
        if regularize:
            g = regularize_outline(b.geometry, crs_wkt, tolerance_m)
            if g is not b.geometry:
                b.geometry = g
                reshaped = True
                changed += 1
        a = rooftop_attributes(b.geometry, crs_wkt, params)
        if reshaped:
            b.area_m2, b.perimeter_m = a["area_m2"], a["perimeter_m"]
        b.attributes.update({k: v for k, v in a.items() if k not in ("area_m2", "perimeter_m")})
    return changed
