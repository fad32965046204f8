"""``python -m roof_detector solar IN.gpkg -o OUT.gpkg``: size rooftops of existing polygons.

For building polygons that did not come from detection (a cadastre,
OpenStreetMap...). Each input polygon keeps its attributes (a name that
clashes, ignoring case, with a field we write (the solar fields,
``confidence``, ``fid``, ``geom``, ``src_fid``) or with an earlier input field
gets the first free name of ``src_<name>``, ``src_<name>_2``...: see
:mod:`roof_detector.core.field_names`; ``src_fid`` is the input feature id) and
gains the solar fields of :mod:`roof_detector.core.solar`.
``--regularize`` squares the outlines first (off by default: cadastre outlines
are already clean). ``--report DIR`` also writes the HTML/CSV/PNG report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

from ..core.errors import LabelError, OutputError
from . import writing, wrote
from .arguments import add_param, add_params, values

DEFAULT_OUT_LAYER = "rooftops"
#: ``solar`` does not regularise by default (cadastre outlines are already clean); the REST service follows it.
REGULARIZE_DEFAULT = False


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "solar",
        help="rooftop solar sizing of existing building polygons",
        description="Add rooftop solar attributes (usable area, panels, kWp, kWh/yr, orientation) "
        "to building polygons from any source and write them to a GeoPackage.",
    )
    p.add_argument("input", metavar="IN", help="polygon layer (GeoPackage, Shapefile, GeoJSON...)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.gpkg", help="GeoPackage to write")
    p.add_argument("--layer", help="input layer name (default: the first polygon layer)")
    p.add_argument("--out-layer", default=DEFAULT_OUT_LAYER, help=f"output layer name (default {DEFAULT_OUT_LAYER})")
    p.add_argument("--overwrite", action="store_true", help="replace the output layer if OUT already has it")
    add_solar_arguments(p, regularize_default=REGULARIZE_DEFAULT)
    p.add_argument("--report", metavar="DIR", help="also write summary.html, buildings.csv and areas.png here")
    p.set_defaults(func=run)
    return p


def add_solar_arguments(p: argparse.ArgumentParser, regularize_default: Optional[bool] = None) -> None:
    """The solar sizing and regularisation options shared by ``solar`` and ``detect`` (core.params)."""
    g = p.add_argument_group("rooftop solar sizing")
    add_params(g, "solar")
    add_param(g, "outlines", "regularize", default=regularize_default)
    add_param(g, "outlines", "regularize_tolerance_m")


def solar_params(args: argparse.Namespace):
    """SolarParams from the shared options (already checked by argparse; checked again by the engine)."""
    from ..core.solar import SolarParams

    return SolarParams(**values(args, "solar")).validate()


def run(args: argparse.Namespace) -> int:
    from ..core.gpkg_writer import check_output, write_buildings
    from ..core.report import build_table, totals, write_report

    params = solar_params(args)
    with _output_flag_names():
        check_output(args.output, args.out_layer, args.overwrite)
    if args.report:
        from ..core.report import check_report_dir

        check_report_dir(args.report)  # before the work, not after the GeoPackage is written

    from ..core.vector_io import read_polygons

    layer = read_polygons(args.input, layer=args.layer, with_attributes=True, require_crs=True)
    require_polygons(layer, args.input)
    buildings, rows, regularized = size_layer(layer, params, args.regularize, args.regularize_tolerance_m)
    with _output_flag_names():
        write_buildings(
            buildings,
            args.output,
            layer.crs_wkt,
            layer=args.out_layer,
            overwrite=args.overwrite,
            metadata={
                "source": os.path.abspath(args.input),
                "source_layer": layer.layer_name,
                "solar_params": json.dumps(params.as_dict()),
                "regularized": f"tolerance {args.regularize_tolerance_m} m" if args.regularize else "no",
            },
        )
    wrote(args.output)

    table = build_table(rows)
    total = totals(table)
    msg = (
        f"{total['buildings']} buildings: footprint {total['area_m2']:,.1f} m², usable {total['usable_area_m2']:,.1f} m², "
        f"{total['panels']:,} panels, {total['kwp']:,.1f} kWp, {total['annual_kwh']:,.0f} kWh/yr -> {args.output}"
    )
    print(msg)
    if layer.skipped:
        print(f"skipped {layer.skipped} features without a polygon", file=sys.stderr)
    if args.regularize:
        print(f"regularised {regularized} of {len(buildings)} outlines (the others kept as they were)")
    if args.report:
        with writing(f"the report in {args.report}"):
            paths = write_report(rows, args.report, params=params.as_dict(), source=os.path.abspath(args.input))
        print(f"report: {paths['html']}")
    return 0


def require_polygons(layer, source: str) -> None:
    """:class:`LabelError` naming what was skipped when ``layer`` (a ``vector_io`` read) holds no polygon:
    sizing nothing is not an answer. This command and the REST service's ``/v1/solar`` both check."""
    if layer.geometries:
        return
    what = (
        f"{layer.skipped} feature(s) skipped as not polygons or empty ({', '.join(sorted(set(layer.skipped_reasons)))})"
        if layer.skipped
        else "it has no features"
    )
    raise LabelError(
        f"Layer {layer.layer_name!r} of {source} holds no polygon: {what}. Rooftop sizing needs building polygons"
    )


def size_layer(layer, params, regularize: bool, tolerance_m: float):
    """Solar-size every polygon of ``layer`` (a ``vector_io`` read with attributes).

    Returns ``(buildings, rows, regularized)``: the buildings to write (source
    attributes kept, clashing names given free names), the report rows, and how many
    outlines regularisation changed. Shared by this command and the REST service.
    """
    from ..core.building import Building
    from ..core.field_names import free_names
    from ..core.footprints import measure_polygons, sized_fields
    from ..core.output_fields import RESERVED_NAMES

    # All buildings at once: the same batched sizing detection uses.
    geoms, sized = measure_polygons(layer.geometries, layer.crs_wkt, params, regularize, tolerance_m)
    regularized = sum(1 for g, s in zip(geoms, layer.geometries) if g is not s)
    rows: List[Dict[str, Any]] = [{"id": fid, **attrs} for fid, attrs in zip(layer.fids, sized)]

    # Source attributes keep their names unless they clash with a field we write or with each
    # other (GeoPackage column names ignore case): never dropped, never shifted.
    written_names = [name for name, _ in sized_fields(regularize)]
    old_names = [name for name, _ in layer.fields]
    renamed = list(zip(old_names, free_names(old_names, list(RESERVED_NAMES) + written_names + ["src_fid"])))
    buildings = []
    for fid, src_attrs, geom, row in zip(layer.fids, layer.attributes, geoms, rows):
        attrs: Dict[str, Any] = {"src_fid": fid}
        attrs.update({new: src_attrs.get(old) for old, new in renamed})
        attrs.update({k: row[k] for k in written_names if k not in ("area_m2", "perimeter_m")})
        # confidence is a detection field: NaN (stored as null) for polygons from elsewhere
        buildings.append(Building(geom, row["area_m2"], row["perimeter_m"], math.nan, attrs))
    return buildings, rows, regularized


@contextmanager
def _output_flag_names():
    """The writer's messages name detect's ``--layer``; here the output layer is ``--out-layer``."""
    try:
        yield
    except OutputError as exc:
        raise OutputError(str(exc).replace("(--layer)", "(--out-layer)")) from None
