"""Reading polygon layers (labels, references, cadastres) and rasterising them.

Vector files are read with GDAL/OGR's Python bindings (``osgeo``, installed
with QGIS), geometries become shapely objects reprojected to the CRS the
caller works in. No ``qgis`` import here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
    fids: List[int] = field(default_factory=list)  # feature id of each geometry
    attributes: List[Dict[str, Any]] = field(default_factory=list)  # with ``with_attributes``
    fields: List[Tuple[str, str]] = field(default_factory=list)  # (name, integer|integer64|real|date|datetime|string)


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


def _pick_layer(ds, path: str, layer: Optional[str]):
    """The named layer, or the first polygon (or untyped) layer, or the first layer."""
    if layer:
        lyr = ds.GetLayerByName(layer)
        if lyr is None:
            raise LabelError(f"{path} has no layer {layer!r}; layers: {', '.join(list_layers(path))}")
        return lyr
    for i in range(ds.GetLayerCount()):
        cand = ds.GetLayerByIndex(i)
        if ogr.GT_Flatten(cand.GetGeomType()) in (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbUnknown):
            return cand
    if ds.GetLayerCount():
        return ds.GetLayerByIndex(0)
    raise LabelError(f"{path} holds no layer")


def _field_kinds(lyr) -> List[Tuple[str, str]]:
    defn = lyr.GetLayerDefn()
    kinds = {
        ogr.OFTInteger: "integer",
        ogr.OFTInteger64: "integer64",
        ogr.OFTReal: "real",
        ogr.OFTDate: "date",
        ogr.OFTDateTime: "datetime",
    }
    return [
        (defn.GetFieldDefn(i).GetName(), kinds.get(defn.GetFieldDefn(i).GetType(), "string"))
        for i in range(defn.GetFieldCount())
    ]


def _attributes(feat, fields: List[Tuple[str, str]]) -> Dict[str, Any]:
    attrs: Dict[str, Any] = {}
    # By index, not by name: OGR finds names ignoring case, so `name` would read `NAME`'s value too.
    for i, (name, kind) in enumerate(fields):
        if not feat.IsFieldSetAndNotNull(i):
            attrs[name] = None
        elif kind in ("integer", "integer64"):
            attrs[name] = feat.GetFieldAsInteger64(i)
        elif kind == "real":
            attrs[name] = feat.GetFieldAsDouble(i)
        else:
            attrs[name] = feat.GetFieldAsString(i)
    return attrs


def read_polygons(
    path: str,
    target_crs_wkt: Optional[str] = None,
    layer: Optional[str] = None,
    bbox: Optional[Tuple[float, float, float, float]] = None,
    with_attributes: bool = False,
    require_crs: bool = False,
) -> PolygonLayer:
    """Read the polygons of ``layer`` (default: the first polygon layer) of ``path``.

    Curved geometries are linearised (GDAL's default step), geometries are flattened to 2D, invalid ones repaired (``make_valid``),
    multi-polygons kept whole, and non-polygon or empty geometries skipped and
    counted. With ``target_crs_wkt`` they are reprojected to that CRS (a layer
    in another CRS is reprojected, not refused). ``bbox`` (in the target CRS)
    keeps only geometries that intersect it. ``fids`` holds each kept
    geometry's feature id; ``with_attributes`` also reads the attribute values.
    """
    ds = _open(path)
    lyr = _pick_layer(ds, path, layer)
    src_srs = lyr.GetSpatialRef()
    transform = None
    crs_wkt = src_srs.ExportToWkt() if src_srs is not None else ""
    if src_srs is None and (target_crs_wkt or require_crs):
        raise LabelError(
            f"Layer {lyr.GetName()!r} of {path} has no CRS; set one in QGIS "
            "(Layer Properties > Source) and save it again"
        )
    if target_crs_wkt:
        dst = osr.SpatialReference()
        dst.ImportFromWkt(target_crs_wkt)
        for srs in (src_srs, dst):
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src_srs.IsSame(dst):
            transform = osr.CoordinateTransformation(src_srs, dst)
        crs_wkt = target_crs_wkt
    fields = _field_kinds(lyr) if with_attributes else []
    bbox_geom = shapely.box(*bbox) if bbox else None
    out = PolygonLayer([], crs_wkt, lyr.GetName(), fields=fields)
    for feat in lyr:
        g = feat.GetGeometryRef()
        if g is None or g.IsEmpty():
            out.skipped += 1
            out.skipped_reasons.append("empty")
            continue
        g = g.Clone()
        if g.HasCurveGeometry():  # CurvePolygon, MultiSurface... (cadastres): shapely reads straight lines only
            g = g.GetLinearGeometry()
        g.FlattenTo2D()
        if transform is not None:
            g.Transform(transform)
        geom = shapely.from_wkb(bytes(g.ExportToWkb()))
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            out.repaired += 1
        polys = _polygonal_part(geom)
        if polys is None:
            out.skipped += 1
            out.skipped_reasons.append(g.GetGeometryName().lower())
            continue
        if bbox_geom is not None and not polys.intersects(bbox_geom):
            continue
        out.geometries.append(polys)
        out.fids.append(int(feat.GetFID()))
        if with_attributes:
            out.attributes.append(_attributes(feat, fields))
    return out


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
    return features.rasterize(
        ((g, 1) for g in geometries if not g.is_empty),
        out_shape=(height, width),
        transform=transform,
        fill=0,
        dtype="uint8",
    )
