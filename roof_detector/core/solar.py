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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .metric_frame import lonlat_of, to_local_metric
from .params import SOLAR, check_fields

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


#: Setbacks below this (metres) are no setback: GEOS gives an empty inset for tiny negative buffers.
MIN_SETBACK_M = 1e-3


@dataclass
class SolarParams:
    """Sizing parameters; defaults and ranges are declared in :data:`.params.SOLAR`."""

    setback_m: float = SOLAR["setback_m"].default
    usable_fraction: float = SOLAR["usable_fraction"].default
    panel_area_m2: float = SOLAR["panel_area_m2"].default
    panel_wp: float = SOLAR["panel_wp"].default
    specific_yield_kwh_per_kwp: Optional[float] = SOLAR["specific_yield_kwh_per_kwp"].default  # None: latitude

    def validate(self) -> "SolarParams":
        """Raise :class:`.params.ParameterError` naming the first unusable parameter; return self."""
        check_fields(self, "solar")
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
    value = orientations_deg(np.array([metric_geometry], dtype=object))[0]
    return None if np.isnan(value) else float(value)


#: Hulls with more vertices than this are measured one by one (the vectorised search is quadratic).
_VECTOR_HULL_MAX = 256


def orientations_deg(metric_geometries: np.ndarray) -> np.ndarray:
    """:func:`orientation_deg` of many geometries at once (NaN where degenerate).

    The minimum-area rectangle has a side on an edge of the convex hull, so for
    every hull edge of every geometry the extent of the hull along the edge and
    across it is computed in one numpy pass (edges x vertices of the same
    hull), and the edge of least area wins; its longer side is the long axis.
    GEOS 3.11 (Debian 12, QGIS 3.22) has no minimum-area rectangle, and
    shapely's per-geometry fallback took 1.3 s for 10,000 roofs; this takes
    about 0.03 s. On a tie (a square) the hull edge's own direction is used.
    """
    geoms = np.asarray(metric_geometries, dtype=object)
    out = np.full(len(geoms), np.nan)
    if len(geoms) == 0:
        return out
    hulls = shapely.convex_hull(geoms)
    kind = shapely.get_type_id(hulls)
    lines = np.flatnonzero(kind == 1)
    if len(lines):
        ends = np.stack([shapely.get_coordinates(shapely.get_point(hulls[lines], i)) for i in (0, -1)])
        d = ends[1] - ends[0]
        ok = np.hypot(d[:, 0], d[:, 1]) > 0
        out[lines[ok]] = _azimuths(d[ok, 0], d[ok, 1])
    polys = np.flatnonzero(kind == 3)
    if not len(polys):
        return out
    rings = shapely.get_exterior_ring(hulls[polys])
    n_pts = shapely.get_num_coordinates(rings)
    big = n_pts > _VECTOR_HULL_MAX
    for i in polys[big]:  # rare: a huge round hull
        out[i] = _rectangle_azimuth(geoms[i])
    polys, rings, n_pts = polys[~big], rings[~big], n_pts[~big]
    if len(polys):
        hull_of, azimuths = _hull_azimuths(rings, n_pts)
        out[polys[hull_of]] = azimuths
    return out


def _rectangle_azimuth(geometry) -> float:
    """Long axis of shapely's minimum rotated rectangle (one geometry at a time)."""
    rect = shapely.minimum_rotated_rectangle(geometry)
    c = shapely.get_coordinates(rect)
    e1, e2 = c[1] - c[0], c[2] - c[1]
    long_edge = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    return _azimuths(np.array([long_edge[0]]), np.array([long_edge[1]]))[0]


def _hull_azimuths(rings: np.ndarray, n_pts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Long axes of the minimum-area rectangles of convex hull ``rings``: (ring indexes, azimuths)."""
    xy, owner = shapely.get_coordinates(rings, return_index=True)  # closed rings: first == last
    pt_start = np.concatenate([[0], np.cumsum(n_pts)[:-1]])
    # Edges j -> j + 1 inside each ring (the ring's last coordinate starts none).
    last = np.zeros(len(xy), dtype=bool)
    last[pt_start + n_pts - 1] = True
    e_from = np.flatnonzero(~last)
    e_owner = owner[e_from]
    d = xy[e_from + 1] - xy[e_from]
    length = np.hypot(d[:, 0], d[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        ux, uy = d[:, 0] / length, d[:, 1] / length
    width, height = _extents_along_edges(xy, n_pts, pt_start, e_owner, ux, uy)
    area = np.where(length > 0, width * height, np.inf)
    area = np.nan_to_num(area, nan=np.inf)
    # The first edge of least area per hull.
    n_edges = np.bincount(e_owner, minlength=len(rings))
    edge_start = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
    has_edges = n_edges > 0
    best_area = np.full(len(rings), np.inf)
    best_area[has_edges] = np.minimum.reduceat(area, edge_start[has_edges])
    is_best = (area <= best_area[e_owner]) & np.isfinite(area)
    hull_of, first = np.unique(e_owner[is_best], return_index=True)
    best = np.flatnonzero(is_best)[first]
    long_is_edge = width[best] >= height[best]
    ax = np.where(long_is_edge, ux[best], -uy[best])
    ay = np.where(long_is_edge, uy[best], ux[best])
    return hull_of, _azimuths(ax, ay)


def _extents_along_edges(
    xy: np.ndarray, n_pts: np.ndarray, pt_start: np.ndarray, e_owner: np.ndarray, ux: np.ndarray, uy: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Extent of each edge's hull along the edge (unit vector ux, uy) and across it, in one numpy pass."""
    # Every (edge, vertex of the same hull) pair, grouped by edge.
    seg = n_pts[e_owner]
    seg_start = np.concatenate([[0], np.cumsum(seg)[:-1]])
    pair_edge = np.repeat(np.arange(len(e_owner)), seg)
    pair_pt = np.repeat(pt_start[e_owner] - seg_start, seg) + np.arange(int(seg.sum()))
    px, py = xy[pair_pt, 0], xy[pair_pt, 1]
    along = px * ux[pair_edge] + py * uy[pair_edge]
    across = py * ux[pair_edge] - px * uy[pair_edge]
    width = np.maximum.reduceat(along, seg_start) - np.minimum.reduceat(along, seg_start)
    height = np.maximum.reduceat(across, seg_start) - np.minimum.reduceat(across, seg_start)
    return width, height


def _azimuths(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    az = np.degrees(np.arctan2(dx, dy)) % 180.0
    return np.where(az >= 180.0 - 1e-9, 0.0, az)


def solar_columns(
    metric_geometries: np.ndarray, latitudes_deg: Optional[np.ndarray], params: Optional[SolarParams] = None
) -> Dict[str, np.ndarray]:
    """The solar attributes (see the module docstring) of many geometries in north-up metric frames.

    Returns one numpy column per key of :data:`SOLAR_FIELDS`; ``orientation_deg``
    is NaN where undefined. ``latitudes_deg`` is needed only when ``params``
    gives no specific yield. Invalid geometries are repaired first; empty ones
    get zeros. Every front end's figures come from here.
    """
    params = (params or SolarParams()).validate()
    geoms = np.asarray(metric_geometries, dtype=object)
    n = len(geoms)
    missing = np.array([g is None for g in geoms], dtype=bool)
    if missing.any():
        geoms = geoms.copy()
        geoms[missing] = shapely.Polygon()
    invalid = ~shapely.is_valid(geoms) & ~shapely.is_empty(geoms)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    area = shapely.area(geoms).astype(float)
    perimeter = shapely.length(geoms).astype(float)
    # GEOS turns a sub-micrometre negative buffer into an empty polygon (a 1e-320 m setback gave 0 panels):
    # a setback finer than a millimetre is no setback.
    inset = shapely.buffer(geoms, -params.setback_m) if params.setback_m >= MIN_SETBACK_M else geoms
    usable = np.maximum(0.0, shapely.area(inset).astype(float)) * params.usable_fraction
    if params.specific_yield_kwh_per_kwp is not None:
        spec = np.full(n, float(params.specific_yield_kwh_per_kwp))
    elif latitudes_deg is not None:
        # rounded so that annual_kwh = kwp x specific_yield holds for the values written out
        spec = np.array([round(estimate_specific_yield(lat), 1) for lat in np.asarray(latitudes_deg, float)])
    else:
        raise ValueError("give a specific yield or the latitude to estimate it from")
    panels = np.floor(usable / params.panel_area_m2 + 1e-9).astype(np.int64)
    kwp = panels * params.panel_wp / 1000.0
    return {
        "area_m2": area,
        "perimeter_m": perimeter,
        "usable_area_m2": usable,
        "panels": panels,
        "kwp": kwp,
        "specific_yield": spec,
        "annual_kwh": kwp * spec,
        "orientation_deg": orientations_deg(geoms),
    }


def solar_rows(columns: Dict[str, np.ndarray]) -> List[Dict[str, Any]]:
    """Columns of :func:`solar_columns` as one dict of plain Python values per geometry (None for NaN)."""
    n = len(columns["area_m2"])
    rows: List[Dict[str, Any]] = [{} for _ in range(n)]
    for key, typ in SOLAR_FIELDS:
        values = columns[key].tolist()
        for row, v in zip(rows, values):
            row[key] = None if (typ == "real" and v != v) else (int(v) if typ == "integer" else float(v))
    return rows


def rooftop_attributes_metric(
    metric_geometry: BaseGeometry, latitude_deg: Optional[float], params: Optional[SolarParams] = None
) -> Dict[str, Any]:
    """:func:`rooftop_attributes` of a geometry already in a north-up metric frame.

    ``latitude_deg`` is needed only when ``params`` gives no specific yield.
    """
    lat = None if latitude_deg is None else np.array([float(latitude_deg)])
    return solar_rows(solar_columns(np.array([metric_geometry], dtype=object), lat, params))[0]


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
