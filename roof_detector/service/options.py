"""Request options -> the engine's options, through the CLI's own argument parsers.

The service declares no parameter of its own: the JSON keys are the long
option names of ``python -m roof_detector detect`` / ``solar`` (``-`` written
as ``_``: ``min_area``, ``separate_touching``, ``yield``...), turned back into
command-line arguments and parsed by the very parser the CLI builds, so the
types, ranges, defaults and messages are the CLI's. Options that belong to
the server (model, device, batch size, output paths) are refused.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional

from ..core.errors import RoofDetectorError

# Chosen by whoever runs the server, never by a request.
SERVER_OWNED = {"output", "layer", "overwrite", "model", "device", "batch_size", "out_layer", "report",
                "input", "raster", "help"}


class OptionsError(ValueError):
    """A request option is unknown or has a bad value; the message says which and why."""


class _RaisingParser(argparse.ArgumentParser):
    """An argparse parser that raises instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise OptionsError(message)


def _command_parser(command: str) -> argparse.ArgumentParser:
    from ..cli import detect, solar

    root = _RaisingParser(prog="roof_detector", add_help=False)
    sub = root.add_subparsers(dest="command")  # sub-parsers are _RaisingParser too
    {"detect": detect, "solar": solar}[command].add_parser(sub)
    return root


def _request_keys(parser: argparse.ArgumentParser, command: str) -> Dict[str, argparse.Action]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    keys: Dict[str, argparse.Action] = {}
    for action in sub._actions:
        if not action.option_strings or action.dest in SERVER_OWNED:
            continue
        for opt in action.option_strings:
            if opt.startswith("--") and not opt.startswith("--no-"):
                keys[opt[2:].replace("-", "_")] = action
    return keys


def _argv(options: Optional[Dict[str, Any]], keys: Dict[str, argparse.Action]) -> List[str]:
    if options is None:
        return []
    if not isinstance(options, dict):
        raise OptionsError("options must be a JSON object, e.g. {\"threshold\": 0.5, \"min_area\": 10}")
    argv: List[str] = []
    for key, value in options.items():
        action = keys.get(key)
        if action is None:
            raise OptionsError(f"unknown option {key!r}; known options: {', '.join(sorted(keys))}")
        option = next(o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-"))
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise OptionsError(f"option {key!r} must be true or false, got {json.dumps(value)}")
            argv.append(option if value else "--no-" + option[2:])
        elif value is None:
            continue  # the CLI's default
        elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise OptionsError(f"option {key!r} must be a number, got {json.dumps(value)}")
        else:
            argv += [option, str(value)]
    return argv


def _parse(command: str, positional: List[str], options: Optional[Dict[str, Any]]) -> argparse.Namespace:
    parser = _command_parser(command)
    argv = _argv(options, _request_keys(parser, command))
    try:
        return parser.parse_args([command, *positional, *argv])
    except OptionsError as exc:
        raise OptionsError(f"bad option: {exc}") from None


def detect_options(options: Optional[Dict[str, Any]]):
    """The engine's ``DetectOptions`` for a request's ``options`` object, exactly as ``detect`` builds them.

    Raises :class:`OptionsError` naming the bad key or value.
    """
    from ..cli.detect import options_from_args

    args = _parse("detect", ["RASTER", "-o", "OUT.gpkg"], options)
    try:
        return options_from_args(args), args
    except RoofDetectorError as exc:
        raise OptionsError(str(exc)) from None


def solar_options(options: Optional[Dict[str, Any]]):
    """``(SolarParams, regularize, tolerance_m)`` for ``POST /v1/solar``, as ``solar`` builds them."""
    from ..cli.solar import solar_params

    args = _parse("solar", ["IN", "-o", "OUT.gpkg"], options)
    try:
        return solar_params(args), bool(args.regularize), float(args.tolerance)
    except RoofDetectorError as exc:
        raise OptionsError(str(exc)) from None


def detect_option_names() -> List[str]:
    """The option keys ``POST /v1/detections`` accepts (for the OpenAPI description)."""
    return sorted(_request_keys(_command_parser("detect"), "detect"))


def solar_option_names() -> List[str]:
    """The option keys ``POST /v1/solar`` accepts."""
    return sorted(_request_keys(_command_parser("solar"), "solar"))


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
    to_raster = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_wkt(crs_wkt), always_xy=True)

    def project(xy):
        x, y = to_raster.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project).wkt
