"""From the stitched probability raster to building polygons.

GDAL's Polygonize walks the on-disk building band scanline by scanline
(memory grows with the raster width and the number of open polygons, not
with its area) over the whole model grid at once, so a building across a
tile or block border comes out as one polygon. Each polygon then:

1. is dropped early when clearly under ``min_area_m2`` (approximate area);
2. gets its ``confidence``: the mean probability over its own pixels;
3. has holes under ``max_hole_area_m2`` filled (speckle, not courtyards);
4. is simplified by half a model pixel (removes the pixel staircase on
   straight walls, moves no edge by more than half a pixel);
5. is clipped to the area of interest, if any (parts become separate
   buildings);
6. gets its true ground ``area_m2``/``perimeter_m`` and is kept if
   ``area_m2 >= min_area_m2``.

Polygons are in the raster CRS (the model grid shares it).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from .building import Building
from .errors import Cancelled
from .geo import area_perimeter_m
from .osgeo_exc import gdal, ogr, osr
from .probability_raster import BUILDING_BAND, PROBABILITY_BAND, ProbabilityRaster

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

# Candidates are pre-filtered on an approximate area; this margin keeps
# borderline ones for the exact geodesic check.
_PREFILTER_MARGIN = 0.8


def vectorize_buildings(raster: ProbabilityRaster, crs_wkt: str, min_area_m2: float, max_hole_area_m2: float,
                        clip_geometry: Optional[BaseGeometry] = None, progress: Optional[ProgressFn] = None,
                        is_cancelled: Optional[CancelFn] = None) -> List[Building]:
    """Polygonise the building band of ``raster`` into :class:`Building` records (see module doc)."""
    raster.flush()
    grid = raster.grid
    ds = raster.dataset
    building_band = ds.GetRasterBand(BUILDING_BAND)
    prob_band = ds.GetRasterBand(PROBABILITY_BAND)

    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs_wkt)  # WKT, or "EPSG:XXXX" from a lenient RasterSource
    mem = ogr.GetDriverByName("Memory").CreateDataSource("polygons")
    layer = mem.CreateLayer("polygons", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("dn", ogr.OFTInteger))

    def gdal_progress(fraction, _message, _data):
        if is_cancelled is not None and is_cancelled():
            return 0  # makes GDAL stop and raise
        if progress is not None:
            progress(0.5 * fraction, "Tracing building outlines")
        return 1

    try:
        # The building band is its own mask: only pixels equal to 1 are traced.
        gdal.Polygonize(building_band, building_band, layer, 0, [], callback=gdal_progress)
    except RuntimeError:
        if is_cancelled is not None and is_cancelled():
            raise Cancelled() from None
        raise

    m2_per_unit2 = (grid.pixel_size_m[0] * grid.pixel_size_m[1]) / abs(grid.transform.a * grid.transform.e)
    tolerance = 0.5 * min(abs(grid.transform.a), abs(grid.transform.e))
    if clip_geometry is not None:
        shapely.prepare(clip_geometry)

    count = layer.GetFeatureCount()
    buildings: List[Building] = []
    for i, feat in enumerate(layer):
        if i % 64 == 0:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled()
            if progress is not None and count:
                progress(0.5 + 0.5 * i / count, f"Measuring buildings: {i}/{count}")
        poly = shapely.from_wkb(bytes(feat.GetGeometryRef().ExportToWkb()))
        if poly.area * m2_per_unit2 < _PREFILTER_MARGIN * min_area_m2:
            continue
        confidence = _mean_probability(poly, grid, building_band, prob_band)
        shape = _fill_small_holes(poly, max_hole_area_m2 / m2_per_unit2)
        shape = shape.simplify(tolerance, preserve_topology=True)
        if not shape.is_valid:
            shape = shapely.make_valid(shape)
        if clip_geometry is not None:
            if not clip_geometry.intersects(shape):
                continue
            if not clip_geometry.contains(shape):
                shape = shape.intersection(clip_geometry)
        for part in _polygons(shape):
            area_m2, perimeter_m = area_perimeter_m(part, crs_wkt)
            if area_m2 >= min_area_m2:
                buildings.append(Building(part, area_m2, perimeter_m, confidence))
    if progress is not None:
        progress(1.0, f"{len(buildings)} buildings")
    return buildings


def _mean_probability(poly: Polygon, grid, building_band, prob_band) -> float:
    """Mean probability of the building pixels whose centres fall inside ``poly``."""
    block = grid.pixel_bounds(poly.bounds)
    if block is None:
        return 0.0
    c0, r0, c1, r1 = block
    w, h = c1 - c0, r1 - r0
    is_building = building_band.ReadAsArray(c0, r0, w, h) > 0
    prob = prob_band.ReadAsArray(c0, r0, w, h)
    rows, cols = np.nonzero(is_building)
    if rows.size == 0:
        return 0.0
    t = grid.transform
    xs = t.c + (c0 + cols + 0.5) * t.a
    ys = t.f + (r0 + rows + 0.5) * t.e
    # Another building's pixels can fall in this bounding box (or in a hole).
    inside = shapely.contains_xy(poly, xs, ys)
    if not inside.any():
        return 0.0
    return float(prob[rows[inside], cols[inside]].mean()) / 255.0


def _fill_small_holes(poly: Polygon, max_hole_area_units: float) -> Polygon:
    """``poly`` without the interior rings smaller than ``max_hole_area_units`` (CRS units squared)."""
    if not poly.interiors:
        return poly
    keep = [ring for ring in poly.interiors if Polygon(ring).area >= max_hole_area_units]
    return Polygon(poly.exterior, keep)


def _polygons(geom: BaseGeometry) -> List[Polygon]:
    """The non-empty polygons of any geometry (collections are flattened)."""
    if geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    if hasattr(geom, "geoms"):
        out: List[Polygon] = []
        for g in geom.geoms:
            out.extend(_polygons(g))
        return out
    return []
