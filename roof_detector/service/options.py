"""Request options -> the engine's options, from the parameter declarations of :mod:`roof_detector.core.params`.

The service declares no parameter of its own: each JSON key is a declared
parameter, named as the CLI's long option without ``--`` and with ``-`` as
``_`` (``min_area``, ``separate_touching``, ``tolerance``, ``yield``...), and its
type, range, default and message are the declaration's (the same as the
``detect`` / ``solar`` commands', whose options are built from it too).
Options that belong to the server (device, batch size; model and output
paths are no parameters at all) are refused.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import RoofDetectorError
from ..core.params import GROUPS, Param, ParameterError

# Chosen by whoever runs the server (``serve --device/--batch-size``), never by a request; and the
# work-size guard (``--yes`` on the command line) applies to every request: a client could otherwise
# hold the server's one device slot for hours.
SERVER_OWNED = {"device", "batch_size", "confirm_large_run"}

# The declared groups each route takes: those of the ``detect`` and ``solar`` commands.
DETECT_GROUPS = ("detect", "outlines", "solar")
SOLAR_GROUPS = ("solar", "outlines")


class OptionsError(ValueError):
    """A request option is unknown or has a bad value; the message says which and why."""


def request_key(p: Param) -> str:
    """The JSON key of a declared parameter: its CLI long option, ``--min-area`` -> ``min_area``."""
    return p.flag[2:].replace("-", "_")


def _declared(groups: Tuple[str, ...]) -> Dict[str, Tuple[str, Param]]:
    """Request key -> (group, declaration) of the parameters a route accepts."""
    return {
        request_key(p): (group, p) for group in groups for name, p in GROUPS[group].items() if name not in SERVER_OWNED
    }


def _values(options: Optional[Dict[str, Any]], groups: Tuple[str, ...]) -> Dict[str, Dict[str, Any]]:
    """The request's options checked by their declarations, as engine keyword arguments per group."""
    out: Dict[str, Dict[str, Any]] = {group: {} for group in groups}
    if options is None:
        return out
    if not isinstance(options, dict):
        raise OptionsError('options must be a JSON object, e.g. {"threshold": 0.5, "min_area": 10}')
    declared = _declared(groups)
    for key, value in options.items():
        if key not in declared:
            raise OptionsError(f"unknown option {key!r}; known options: {', '.join(sorted(declared))}")
        group, p = declared[key]
        if value is None:
            continue  # the declared default
        if p.kind is bool and not isinstance(value, bool):
            raise OptionsError(f"option {key!r} must be true or false, got {json.dumps(value)}")
        if p.kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            raise OptionsError(f"option {key!r} must be a number, got {json.dumps(value)}")
        try:
            out[group][p.name] = p.check(value)
        except ParameterError as exc:
            raise OptionsError(f"bad option {key!r}: {exc}") from None
    return out


def detect_options(options: Optional[Dict[str, Any]]):
    """The engine's ``DetectOptions`` for a request's ``options`` object (server-owned fields at their defaults).

    Raises :class:`OptionsError` naming the bad key or value.
    """
    from ..core.pipeline import DetectOptions
    from ..core.solar import SolarParams

    values = _values(options, DETECT_GROUPS)
    try:
        return DetectOptions(
            **values["detect"], **values["outlines"], solar=SolarParams(**values["solar"]).validate()
        ).validate()
    except RoofDetectorError as exc:
        raise OptionsError(str(exc)) from None


def solar_options(options: Optional[Dict[str, Any]]):
    """``(SolarParams, regularize, tolerance_m)`` for ``POST /v1/solar``, with the ``solar`` command's defaults."""
    from ..cli.solar import REGULARIZE_DEFAULT
    from ..core.solar import SolarParams

    values = _values(options, SOLAR_GROUPS)
    outlines = {
        "regularize": REGULARIZE_DEFAULT,
        "regularize_tolerance_m": GROUPS["outlines"]["regularize_tolerance_m"].default,
        **values["outlines"],
    }
    try:
        params = SolarParams(**values["solar"]).validate()
    except RoofDetectorError as exc:
        raise OptionsError(str(exc)) from None
    return params, bool(outlines["regularize"]), float(outlines["regularize_tolerance_m"])


def request_options(detect: Dict[str, Any], solar: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The inverse, for clients: engine keyword arguments (``DetectOptions``/``SolarParams`` names) -> request keys.

    Server-owned and undeclared keys (model, device, area of interest...) are left out; None values too.
    """
    out: Dict[str, Any] = {}
    for groups, values in ((("detect", "outlines"), detect), (("solar",), solar or {})):
        for group in groups:
            for name, p in GROUPS[group].items():
                if name not in SERVER_OWNED and values.get(name) is not None:
                    out[request_key(p)] = values[name]
    return out


def detect_option_names() -> List[str]:
    """The option keys ``POST /v1/detections`` accepts (for the OpenAPI description)."""
    return sorted(_declared(DETECT_GROUPS))


def solar_option_names() -> List[str]:
    """The option keys ``POST /v1/solar`` accepts."""
    return sorted(_declared(SOLAR_GROUPS))


def aoi_wkt(aoi: Any, crs_wkt: str) -> str:
    """An area of interest given as GeoJSON (geometry, Feature or FeatureCollection; EPSG:4326
    longitude/latitude per RFC 7946) as WKT in the raster's CRS ``crs_wkt``."""
    import numpy as np
    import shapely
    from pyproj import CRS, Transformer
    from shapely.geometry import shape

    if isinstance(aoi, str):
        try:
            aoi = json.loads(aoi)
        except ValueError as exc:
            raise OptionsError(f"the area of interest is not JSON ({exc})") from None
    if not isinstance(aoi, dict):
        raise OptionsError("the area of interest must be a GeoJSON geometry, Feature or FeatureCollection")
    try:
        if aoi.get("type") == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in aoi.get("features", [])]
        elif aoi.get("type") == "Feature":
            geoms = [shape(aoi["geometry"])]
        else:
            geoms = [shape(aoi)]
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
        raise OptionsError(f"the area of interest is not a valid GeoJSON geometry ({exc})") from None
    geom = shapely.union_all(geoms) if geoms else shapely.Polygon()
    if geom.is_empty or geom.area <= 0:
        raise OptionsError("the area of interest must be a polygon with a non-zero area (lon/lat, EPSG:4326)")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180.0 <= minx and maxx <= 180.0 and -90.0 <= miny and maxy <= 90.0):
        raise OptionsError(
            f"the area of interest must be in longitude/latitude (EPSG:4326, as GeoJSON says); its coordinates "
            f"reach x {minx:.6g} to {maxx:.6g}, y {miny:.6g} to {maxy:.6g}, outside ±180 / ±90: metres, or another CRS?"
        )
    to_raster = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_wkt(crs_wkt), always_xy=True)

    def project(xy):
        x, y = to_raster.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project).wkt
