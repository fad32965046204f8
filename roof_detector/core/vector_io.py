"""Reading polygon layers (labels, references, cadastres) and rasterising them.

Vector files are read with GDAL/OGR's Python bindings (``osgeo``, installed
with QGIS), geometries become shapely objects reprojected to the CRS the
caller works in. No ``qgis`` import here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .errors import LabelError

try:  # osgeo comes with QGIS / python3-gdal
    from osgeo import ogr, osr
    ogr.UseExceptions()
    osr.UseExceptions()
except ImportError:  # pragma: no cover - the set-up installs it
    ogr = None
    osr = None


@dataclass
class PolygonLayer:
    """Polygons of one layer in a target CRS, with what was repaired or skipped."""

    geometries: List[BaseGeometry]
    crs_wkt: str
    layer_name: str
    repaired: int = 0
    skipped: int = 0
    skipped_reasons: List[str] = field(default_factory=list)


def list_layers(path: str) -> List[str]:
    """Names of the layers of a vector file."""
    ds = _open(path)
    return [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]


def _open(path: str):
    if ogr is None:
        raise LabelError("GDAL's Python bindings (osgeo) are missing; run `make setup`")
    if not os.path.exists(path):
        raise LabelError(f"Vector file not found: {path}")
    try:
        ds = ogr.Open(path, 0)
    except RuntimeError as exc:
        raise LabelError(f"{path} is not a readable vector file ({exc})") from None
    if ds is None:
        raise LabelError(f"{path} is not a readable vector file")
    return ds


def read_polygons(path: str, target_crs_wkt: Optional[str] = None, layer: Optional[str] = None,
                  bbox: Optional[Tuple[float, float, float, float]] = None) -> PolygonLayer:
    """Read the polygons of ``layer`` (default: the first polygon layer) of ``path``.

    Geometries are flattened to 2D, invalid ones repaired (``make_valid``),
    multi-polygons kept whole, and non-polygon or empty geometries skipped and
    counted. With ``target_crs_wkt`` they are reprojected to that CRS (a layer
    in another CRS is reprojected, not refused). ``bbox`` (in the target CRS)
    keeps only geometries that intersect it.
    """
    ds = _open(path)
    lyr = None
    if layer:
        lyr = ds.GetLayerByName(layer)
        if lyr is None:
            raise LabelError(f"{path} has no layer {layer!r}; layers: {', '.join(list_layers(path))}")
    else:
        for i in range(ds.GetLayerCount()):
            cand = ds.GetLayerByIndex(i)
            if ogr.GT_Flatten(cand.GetGeomType()) in (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbUnknown):
                lyr = cand
                break
        if lyr is None:
            lyr = ds.GetLayerByIndex(0) if ds.GetLayerCount() else None
        if lyr is None:
            raise LabelError(f"{path} holds no layer")
    src_srs = lyr.GetSpatialRef()
    transform = None
    crs_wkt = src_srs.ExportToWkt() if src_srs is not None else ""
    if target_crs_wkt:
        if src_srs is None:
            raise LabelError(f"Layer {lyr.GetName()!r} of {path} has no CRS; set one in QGIS "
                             "(Layer Properties > Source) and save it again")
        dst = osr.SpatialReference()
        dst.ImportFromWkt(target_crs_wkt)
        for srs in (src_srs, dst):
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src_srs.IsSame(dst):
            transform = osr.CoordinateTransformation(src_srs, dst)
        crs_wkt = target_crs_wkt
    bbox_geom = shapely.box(*bbox) if bbox else None
    out: List[BaseGeometry] = []
    repaired = skipped = 0
    reasons: List[str] = []
    for feat in lyr:
        g = feat.GetGeometryRef()
        if g is None or g.IsEmpty():
            skipped += 1
            reasons.append("empty")
            continue
        g = g.Clone()
        g.FlattenTo2D()
        if transform is not None:
            g.Transform(transform)
        geom = shapely.from_wkb(bytes(g.ExportToWkb()))
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            repaired += 1
        polys = _polygonal_part(geom)
        if polys is None:
            skipped += 1
            reasons.append(g.GetGeometryName().lower())
            continue
        if bbox_geom is not None and not polys.intersects(bbox_geom):
            continue
        out.append(polys)
    return PolygonLayer(out, crs_wkt, lyr.GetName(), repaired, skipped, reasons)


def _polygonal_part(geom: BaseGeometry) -> Optional[BaseGeometry]:
    """The polygonal part of a geometry (collections from make_valid), or None."""
    if geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    if geom.geom_type == "GeometryCollection":
        parts = [p for p in geom.geoms if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
        if parts:
            return shapely.union_all(parts)
    return None


def rasterize_polygons(geometries: Sequence[BaseGeometry], transform, shape: Tuple[int, int]) -> np.ndarray:
    """Burn polygons onto a grid (``transform`` is an ``affine.Affine``): uint8 0/1.

    A pixel is building when its centre lies inside a polygon (GDAL's default
    rule), the same rule for labels, references and predictions.
    """
    from rasterio import features

    height, width = shape
    if not geometries:
        return np.zeros((height, width), dtype=np.uint8)
    return features.rasterize(((g, 1) for g in geometries if not g.is_empty), out_shape=(height, width),
                              transform=transform, fill=0, dtype="uint8")
