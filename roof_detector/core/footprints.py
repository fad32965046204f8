"""From raw traced outlines to finished buildings, many outlines per call.

Detection traces a few hundred outlines per strip of the raster; each batch
goes through these steps, every one a vectorised shapely/numpy call over the
whole batch (only regularisation works polygon by polygon):

1. holes smaller than ``max_hole_area_m2`` are filled (speckle, not courtyards);
2. outlines are simplified by ``simplify_tolerance`` (half a model pixel:
   removes the pixel staircase on straight walls, moves no edge by more);
3. invalid results are repaired, outlines are clipped to the area of
   interest if any, and multi-part results become separate buildings;
4. every part is projected to its local metric frame (one pyproj call per
   0.25° cell, :func:`.metric_frame.to_local_metric_many`) and measured
   there: ``area_m2``/``perimeter_m`` are true ground values in any CRS;
   parts under ``min_area_m2`` are dropped;
5. outlines are regularised (:mod:`.regularize`: right-angled polygons, neighbours
   aligned, a ``shape`` class per building), when asked, and a regularised outline
   that reaches past the raster (or the area of interest) is cut at its edge, as
   the traced one was;
6. rooftops are sized for solar panels (:func:`.solar.solar_columns`), when asked.

The same function sizes existing layers (:func:`measure_polygons`, :func:`size_buildings`), so a
building measures the same whichever front end produced it.
No ``qgis`` import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .building import Building
from .metric_frame import MetricBatch, to_local_metric_many
from .axes import aligned_clusters, consensus_orientations, own_axes, working_rings
from .batch_regularize import regularize_batch
from .regularize import CURVED
from .solar import SOLAR_FIELDS, SolarParams, solar_columns, solar_rows

_POLYGON = 3
_MULTI_OR_COLLECTION = (4, 5, 6, 7)


@dataclass
class FinishOptions:
    """How traced outlines become buildings (areas in ground m², tolerances in their own units)."""

    min_area_m2: float = 10.0
    max_hole_area_m2: float = 4.0
    m2_per_unit2: float = 1.0  # ground m² per CRS unit², for the hole filter
    simplify_tolerance: float = 0.0  # CRS units; 0 = no simplification
    clip_geometry: Optional[BaseGeometry] = None
    # what regularised outlines must stay within (the raster's model grid, cut to the area of interest)
    keep_within: Optional[BaseGeometry] = None
    regularize: bool = False
    regularize_tolerance_m: float = 1.0
    solar: Optional[SolarParams] = None


@dataclass
class Outlines:
    """Traced outlines after steps 1-4 (source CRS), their confidences and their metric batch.

    When squared, also what :func:`hold_for_neighbours` computed of them, once, for the fits:
    ``prepared`` (:func:`.axes.working_rings`), ``own`` (:func:`.axes.own_axes`) and, once
    decided, ``cluster`` (:func:`.axes.aligned_clusters` labels; whole clusters only).
    """

    polygons: np.ndarray
    confidence: np.ndarray
    batch: MetricBatch
    prepared: Optional[list] = None
    own: Optional[np.ndarray] = None
    cluster: Optional[np.ndarray] = None

    def subset(self, keep: np.ndarray) -> "Outlines":
        """The outlines selected by ``keep`` (a boolean mask)."""
        rows = np.flatnonzero(keep)
        return Outlines(
            self.polygons[keep],
            self.confidence[keep],
            self.batch.subset(keep),
            None if self.prepared is None else [self.prepared[i] for i in rows],
            None if self.own is None else self.own[keep],
            None if self.cluster is None else self.cluster[keep],
        )


def finish_outlines(
    outlines: Sequence[BaseGeometry], confidences: Sequence[float], crs_wkt: str, options: FinishOptions
) -> List[Building]:
    """Buildings from raw traced polygons in ``crs_wkt`` (steps 1-6 of the module docstring)."""
    ready = prepare_outlines(outlines, confidences, crs_wkt, options)
    return settle_outlines(ready, options) if ready is not None else []


def prepare_outlines(
    outlines: Sequence[BaseGeometry], confidences: Sequence[float], crs_wkt: str, options: FinishOptions
) -> Optional[Outlines]:
    """Steps 1-4 of the module docstring; None when no outline is left."""
    polys = np.asarray(outlines, dtype=object)
    conf = np.asarray(confidences, dtype=float)
    if len(polys) == 0:
        return None
    polys = _fill_small_holes(polys, options.max_hole_area_m2 / options.m2_per_unit2)
    if options.simplify_tolerance > 0:
        # Traced corners rounded to a millionth of a pixel first: the simplification's tolerance is
        # half a pixel, which a staircase corner sits at exactly, so a window's grid origin computed
        # with 1e-10 m of float noise (a detect-many job's) flipped its choices there.
        polys = _rounded(polys, options.simplify_tolerance * 2e-6)
        polys = shapely.simplify(polys, options.simplify_tolerance, preserve_topology=True)
    invalid = ~shapely.is_valid(polys)
    if invalid.any():
        polys[invalid] = shapely.make_valid(polys[invalid])
    if options.clip_geometry is not None:
        polys, conf = _clip(polys, conf, options.clip_geometry)
    polys, owner = polygon_parts(polys)
    conf = conf[owner]
    if len(polys) == 0:
        return None
    ready = Outlines(polys, conf, to_local_metric_many(polys, crs_wkt))
    keep = shapely.area(ready.batch.metric) >= options.min_area_m2
    if not keep.any():
        return None
    return ready if keep.all() else ready.subset(keep)


def settle_outlines(ready: Outlines, options: FinishOptions) -> List[Building]:
    """Steps 5-6 of the module docstring: buildings from prepared outlines."""
    known = (ready.prepared, ready.own, ready.cluster) if ready.cluster is not None else None
    geoms, columns = measure_metric_batch(
        ready.polygons,
        ready.batch,
        options.regularize,
        options.regularize_tolerance_m,
        options.solar,
        options.keep_within,
        known,
    )
    return _buildings(geoms, ready.confidence, columns, options.solar is not None)


def joined_outlines(first: Optional[Outlines], second: Optional[Outlines]) -> Optional[Outlines]:
    """Two sets of prepared outlines as one (either may be None); clusters are decided again."""
    if first is None or second is None:
        return first if second is None else second
    both = first.prepared is not None and second.prepared is not None
    return Outlines(
        np.concatenate([first.polygons, second.polygons]),
        np.concatenate([first.confidence, second.confidence]),
        first.batch.joined(second.batch),
        first.prepared + second.prepared if both else None,
        np.concatenate([first.own, second.own]) if both else None,
    )


def with_own_axes(ready: Outlines, tolerance_m: float) -> Outlines:
    """``ready`` with its working rings and own axes computed (once: kept when there)."""
    if ready.own is None:
        ready.prepared = working_rings(ready.batch.metric, tolerance_m)
        ready.own = own_axes(ready.batch.metric, tolerance_m, ready.prepared)
    return ready


def hold_for_neighbours(
    ready: Outlines, frontier_y: Optional[float], hold_units: float, options: FinishOptions
) -> Tuple[Optional[Outlines], Optional[Outlines]]:
    """``(settle now, hold back)``: the outlines whose aligned neighbours may not all be traced yet.

    Squared outlines share their axes with their aligned neighbours (:func:`.axes.aligned_clusters`).
    A later strip's outlines all lie below ``frontier_y`` (a north-up grid's y); an outline within
    ``hold_units`` (CRS units, at least the neighbour radius) of it may be linked to one of them, and
    so may every outline of its cluster. Those are held back and settled with the next strip, so
    every cluster is settled whole, in one batch: a row of houses across a strip border shares one
    axis, and the outlines do not depend on where the strips fall. Without squaring nothing waits.
    ``frontier_y`` None: no rows follow, nothing waits. The axes computed here are kept with the
    outlines for their fits (none computed twice).
    """
    if not options.regularize:
        return ready, None
    with_own_axes(ready, options.regularize_tolerance_m)
    _, ready.cluster = aligned_clusters(ready.batch.metric, ready.batch.frame_index, ready.own)
    if frontier_y is None:
        return ready, None
    has_axes = np.isfinite(ready.own)
    near = shapely.bounds(ready.polygons)[:, 1] - frontier_y <= hold_units
    held = np.isin(ready.cluster, ready.cluster[near & has_axes]) & has_axes
    if not held.any():
        return ready, None
    now = ready.subset(~held) if not held.all() else None
    later = ready.subset(held)
    later.cluster = None
    return now, later


def measure_metric_batch(
    geometries: np.ndarray,
    batch,
    regularize: bool,
    tolerance_m: float,
    solar: Optional[SolarParams],
    keep_within: Optional[BaseGeometry] = None,
    known: Optional[Tuple[list, np.ndarray, np.ndarray]] = None,
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Regularise (optionally) and measure geometries whose metric versions are in ``batch``.

    Returns the geometries in the source CRS (regularised ones replaced, others
    the very same objects) and columns: ``area_m2``, ``perimeter_m`` and, with
    ``solar``, the other :data:`.solar.SOLAR_FIELDS`; with ``regularize``, ``shape``
    (:data:`.regularize.SHAPES`). ``keep_within`` (source CRS): a regularised outline
    reaching past it is cut at its edge (its largest part kept) before it is measured.
    ``known``: the geometries' working rings, own axes and cluster labels, when the caller has
    them (:func:`hold_for_neighbours`).
    """
    geoms = np.array(geometries, dtype=object)
    metric = batch.metric.copy()
    shapes = None
    if regularize:
        changed, shapes = _regularise(metric, batch, tolerance_m, known)
        if changed.any():
            which = np.flatnonzero(changed)
            geoms[which] = batch.from_metric(metric[which], which)
            if keep_within is not None:
                _cut_at(keep_within, geoms, metric, which, batch)
    if solar is not None:
        columns = solar_columns(metric, batch.lat, solar)
    else:
        columns = {"area_m2": shapely.area(metric).astype(float), "perimeter_m": shapely.length(metric).astype(float)}
    if shapes is not None:
        columns["shape"] = shapes
    return geoms, columns


def _regularise(metric: np.ndarray, batch, tolerance_m: float, known=None) -> Tuple[np.ndarray, np.ndarray]:
    """Regularise the polygons of ``metric`` in place: ``(changed, shapes)`` per entry (``known``:
    see :func:`measure_metric_batch`)."""
    changed = np.zeros(len(metric), dtype=bool)
    shapes = np.full(len(metric), CURVED, dtype=object)
    kinds = shapely.get_type_id(metric)
    fit = np.flatnonzero((kinds == 3) | (kinds == 6))
    # rows of houses come out parallel: axes shared by aligned neighbours (one frame at a time)
    if known is None:
        prepared = working_rings(metric[fit], tolerance_m)  # shared by the axes and the fits
        own, clusters = own_axes(metric[fit], tolerance_m, prepared), None
    else:
        prepared, own = [known[0][i] for i in fit], known[1][fit]
        clusters = _renumbered(known[2][fit])
    axes = consensus_orientations(metric[fit], batch.frame_index[fit], tolerance_m, own=own, clusters=clusters)
    # The outlines were checked valid (and repaired) in the source CRS by the caller, and
    # projecting a few metres changes no topology: checking again would cost 27 us each.
    fits = regularize_batch(metric[fit], axes, own, prepared, tolerance_m)
    for i, (r, shape) in zip(fit.tolist(), fits):
        shapes[i] = shape
        # r is metric[i] itself when it is left as it is (also when already regular to 1 mm)
        if r is not metric[i]:
            metric[i] = r
            changed[i] = True
    return changed, shapes


def _renumbered(labels: np.ndarray) -> Tuple[int, np.ndarray]:
    """Cluster labels of a subset as ``(count, labels 0..count-1)``."""
    unique, inverse = np.unique(labels, return_inverse=True)
    return len(unique), inverse.astype(np.int64)


def _cut_at(edge: BaseGeometry, geoms: np.ndarray, metric: np.ndarray, which: np.ndarray, batch) -> None:
    """Cut the regularised outlines ``which`` that reach past ``edge`` at it (in place, both CRSs).

    A squared outline of a building the raster cuts, or one turned across the raster's edge,
    would otherwise cover ground the raster does not show (up to 7 % of one outline in a QA
    pass) and be sized for panels there.
    """
    shapely.prepare(edge)
    out = which[~shapely.covered_by(geoms[which], edge)]
    if not len(out):
        return
    cut = shapely.intersection(geoms[out], edge)
    cut = np.array([_largest_polygon(g) for g in cut], dtype=object)
    ok = np.array([g is not None for g in cut], dtype=bool)
    out, cut = out[ok], cut[ok]
    geoms[out] = cut
    frames = batch.frame_index[out]
    for k in np.unique(frames):
        sel = frames == k
        metric[out[sel]] = batch.frames[k].to_metric(cut[sel])


def _largest_polygon(geometry: BaseGeometry) -> Optional[BaseGeometry]:
    """The largest polygon of an overlay result (None when it holds none)."""
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type == "Polygon" and not p.is_empty]
    return max(parts, key=lambda p: p.area) if parts else None


#: The field that names each regularised outline's class (:data:`.regularize.SHAPES`).
SHAPE_FIELD = ("shape", "string")


def sized_fields(regularize: bool) -> Tuple[Tuple[str, str], ...]:
    """(name, kind) of the fields :func:`measure_polygons` gives each polygon with solar sizing:
    the solar fields and, when outlines are regularised, ``shape``. Every solar front end (the CLI,
    Processing, the REST service) writes exactly these after the source's own fields."""
    return SOLAR_FIELDS + ((SHAPE_FIELD,) if regularize else ())


def measure_polygons(
    geometries: Sequence[Optional[BaseGeometry]],
    crs_wkt: str,
    params: Optional[SolarParams],
    regularize: bool = False,
    tolerance_m: float = 1.0,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Size polygons from any source (a cadastre, a QGIS layer) the way detection sizes its buildings.

    Every front end (CLI ``solar``, the Processing algorithm, the Rooftop
    Report) calls this batched function. Returns the geometries (squared ones
    replaced, the others the same objects; None stays None) and one row per
    geometry: ``area_m2``, ``perimeter_m`` and, with ``params``, the solar fields; with ``regularize``,
    ``shape`` (the fields of :func:`sized_fields`).
    """
    params = params.validate() if params is not None else None
    source = np.array([shapely.Polygon() if g is None else g for g in geometries], dtype=object)
    if len(source) == 0:
        return source, []
    geoms, columns = measure_metric_batch(
        source, to_local_metric_many(source, crs_wkt), regularize, tolerance_m, params
    )
    geoms[np.array([g is None for g in geometries])] = None
    if params is None:
        rows = [
            {"area_m2": float(a), "perimeter_m": float(p)} for a, p in zip(columns["area_m2"], columns["perimeter_m"])
        ]
    else:
        rows = solar_rows(columns)
    if regularize:
        for row, shape in zip(rows, columns["shape"].tolist()):
            row["shape"] = shape
    return geoms, rows


def size_buildings(
    buildings: Sequence[Building],
    crs_wkt: str,
    params: Optional[SolarParams] = None,
    regularize: bool = False,
    tolerance_m: float = 1.0,
) -> int:
    """Add the solar attributes to detected buildings, in place; return how many outlines changed.

    With ``regularize`` each outline is first squared; a changed outline
    replaces ``geometry`` and updates ``area_m2`` / ``perimeter_m``. The other
    solar values go to ``attributes``.
    """
    geoms, rows = measure_polygons(
        [b.geometry for b in buildings], crs_wkt, params or SolarParams(), regularize, tolerance_m
    )
    changed = 0
    for b, g, row in zip(buildings, geoms, rows):
        if g is not b.geometry:
            b.geometry = g
            b.area_m2, b.perimeter_m = row["area_m2"], row["perimeter_m"]
            changed += 1
        b.attributes.update({k: v for k, v in row.items() if k not in ("area_m2", "perimeter_m")})
    return changed


def polygon_parts(geometries: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The non-empty polygons of each geometry (collections flattened) and the index of their source."""
    geoms = np.asarray(geometries, dtype=object)
    owner = np.arange(len(geoms))
    while True:
        kinds = shapely.get_type_id(geoms)
        nested = np.isin(kinds, _MULTI_OR_COLLECTION)
        if not nested.any():
            break
        parts, idx = shapely.get_parts(geoms[nested], return_index=True)
        flat = np.flatnonzero(~nested)
        src = np.flatnonzero(nested)[idx]
        order = np.argsort(np.concatenate([flat, src]), kind="stable")
        geoms = np.concatenate([geoms[flat], parts])[order]
        owner = np.concatenate([owner[flat], owner[src]])[order]
    keep = (shapely.get_type_id(geoms) == _POLYGON) & ~shapely.is_empty(geoms)
    return geoms[keep], owner[keep]


def _rounded(polys: np.ndarray, step: float) -> np.ndarray:
    """``polys`` with every coordinate rounded to a multiple of ``step``."""
    return shapely.transform(polys, lambda xy: np.round(xy / step) * step)


def _fill_small_holes(polys: np.ndarray, max_hole_area_units: float) -> np.ndarray:
    """``polys`` without their interior rings smaller than ``max_hole_area_units`` (CRS units²)."""
    with_holes = np.flatnonzero(shapely.get_num_interior_rings(polys) > 0)
    out = polys.copy()
    for i in with_holes:
        poly = polys[i]
        keep = [ring for ring in poly.interiors if shapely.Polygon(ring).area >= max_hole_area_units]
        if len(keep) < len(poly.interiors):
            out[i] = shapely.Polygon(poly.exterior, keep)
    return out


def _clip(polys: np.ndarray, conf: np.ndarray, clip: BaseGeometry) -> Tuple[np.ndarray, np.ndarray]:
    """Outlines inside the area of interest, cut at its edge (parts stay together until split)."""
    shapely.prepare(clip)
    inside = shapely.intersects(clip, polys)
    polys, conf = polys[inside], conf[inside]
    crossing = ~shapely.contains(clip, polys)
    if crossing.any():
        polys = polys.copy()
        polys[crossing] = shapely.intersection(polys[crossing], clip)
    return polys, conf


def _buildings(geoms: np.ndarray, conf: np.ndarray, columns: Dict[str, np.ndarray], solar: bool) -> List[Building]:
    area = columns["area_m2"].tolist()
    perimeter = columns["perimeter_m"].tolist()
    extra: List[Tuple[str, str, List[Any]]] = []
    # Every detection has the field, whether or not its outlines were regularised (then null: not
    # classified), so layers of runs with and without regularisation share one schema.
    extra.append(("shape", "text", columns["shape"].tolist() if "shape" in columns else [None] * len(geoms)))
    if solar:
        extra += [
            (key, typ, columns[key].tolist()) for key, typ in SOLAR_FIELDS if key not in ("area_m2", "perimeter_m")
        ]
    out = []
    for i, g in enumerate(geoms):
        attrs: Dict[str, Any] = {}
        for key, typ, values in extra:
            v = values[i]
            if typ == "text":
                attrs[key] = v
            else:
                attrs[key] = None if (typ == "real" and v != v) else (int(v) if typ == "integer" else float(v))
        out.append(Building(g, float(area[i]), float(perimeter[i]), float(conf[i]), attrs))
    return out
