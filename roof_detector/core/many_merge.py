"""The end of ``detect-many``: every job's GeoPackage part streamed, in job order, into the output layer."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Sequence

from .building import Building
from .gpkg_writer import write_building_stream
from .many_manifest import Manifest
from .mosaic_plan import Job


def merge_parts(
    jobs: Sequence[Job],
    manifest: Manifest,
    output: str,
    crs_wkt: str,
    layer: str,
    overwrite: bool,
    metadata: Dict[str, Any],
    extra_parts: Sequence[str] = (),
):
    """Stream every part, in job order, then ``extra_parts`` (the settled seam buildings), into the
    output layer; return (buildings, total area m²).

    Parts of one schema (a detection's always) are copied feature by feature in C; parts whose
    fields differ are read back as buildings and written with the fields widened (:func:`_wider`).
    """
    from .osgeo_exc import ogr

    parts = [manifest.part_path(j.index) for j in jobs] + list(extra_parts)
    fields: Dict[str, int] = {}
    multi = False
    schemas = set()
    for path in parts:
        ds = ogr.Open(path)
        lyr = ds.GetLayer(0)
        multi = multi or ogr.GT_Flatten(lyr.GetGeomType()) == ogr.wkbMultiPolygon
        defn = lyr.GetLayerDefn()
        schema = []
        for i in range(defn.GetFieldCount()):
            fd = defn.GetFieldDefn(i)
            schema.append((fd.GetName(), fd.GetType()))
            if fd.GetName() not in ("area_m2", "perimeter_m", "confidence"):
                fields[fd.GetName()] = _wider(fields.get(fd.GetName()), fd.GetType())
        schemas.add(tuple(schema))
        lyr = defn = fd = None
        ds = None
    counter = {"n": 0, "area": 0.0}
    if len(schemas) <= 1:  # every part has the output's fields and types (a detection's always do)
        write_building_stream(_copier(parts, counter), output, crs_wkt, fields, multi, layer, overwrite, metadata)
        return counter["n"], counter["area"]

    def buildings() -> Iterator[Building]:
        for path in parts:
            for b in read_part(path):
                counter["n"] += 1
                counter["area"] += b.area_m2
                yield b

    write_building_stream(buildings(), output, crs_wkt, fields, multi, layer, overwrite, metadata)
    return counter["n"], counter["area"]


def _copier(parts: Sequence[str], counter: Dict[str, Any]) -> Callable[[Any, bool], None]:
    """A ``fill(layer, multi)`` for :func:`.gpkg_writer.write_building_stream` that copies every
    part's features, in order, field for field by name (GDAL's ``SetFromWithMap``, in C).

    The values were rounded and typed when the parts were written, so the merged layer is the
    one that reading each building back and writing it again gives, feature for feature; in
    Python, that round trip took 1.7-2.5 CPU s for the 23,409 buildings of ``bench-many``
    (0.5-0.8 s copied here).
    """
    from .osgeo_exc import ogr

    def fill(lyr, multi: bool) -> None:
        defn = lyr.GetLayerDefn()
        area = defn.GetFieldIndex("area_m2")
        ds = src = sdefn = feat = out = geom = None
        try:
            for path in parts:
                ds = ogr.Open(path)
                src = ds.GetLayer(0)
                sdefn = src.GetLayerDefn()
                field_map = [defn.GetFieldIndex(sdefn.GetFieldDefn(i).GetName()) for i in range(sdefn.GetFieldCount())]
                for feat in src:
                    out = ogr.Feature(defn)
                    out.SetFromWithMap(feat, 0, field_map)
                    if multi:
                        geom = out.GetGeometryRef()
                        if geom is not None and ogr.GT_Flatten(geom.GetGeometryType()) == ogr.wkbPolygon:
                            out.SetGeometry(ogr.ForceToMultiPolygon(geom.Clone()))
                        geom = None
                    lyr.CreateFeature(out)
                    counter["n"] += 1
                    counter["area"] += out.GetFieldAsDouble(area)
                src = sdefn = feat = out = None
                ds = None
        finally:
            # as the writer does: no GDAL object outlives its dataset in a traceback's frame
            ds = src = sdefn = feat = out = geom = lyr = defn = None  # noqa: F841

    return fill


def read_part(path: str) -> Iterator[Building]:
    """The buildings of one part, in their order (the fields as they were written)."""
    import shapely

    from .osgeo_exc import ogr

    ds = ogr.Open(path)
    try:
        lyr = ds.GetLayer(0)
        defn = lyr.GetLayerDefn()
        # Each field read by index with its type's getter: Feature.items() / GetField(name) look every
        # name up in Python, which made reading the parts 10 times slower than writing them
        # (23,409 buildings: 5.2 -> 0.5 CPU s on a loaded machine).
        getters = {ogr.OFTInteger64: ogr.Feature.GetFieldAsInteger64, ogr.OFTReal: ogr.Feature.GetFieldAsDouble}
        columns = []
        for i in range(defn.GetFieldCount()):
            fd = defn.GetFieldDefn(i)
            columns.append((fd.GetName(), i, getters.get(fd.GetType(), ogr.Feature.GetField)))
        fd = defn = None
        for feat in lyr:
            attrs = {name: get(feat, i) if feat.IsFieldSetAndNotNull(i) else None for name, i, get in columns}
            geom = shapely.from_wkb(bytes(feat.GetGeometryRef().ExportToWkb()))
            yield Building(geom, attrs.pop("area_m2"), attrs.pop("perimeter_m"), attrs.pop("confidence"), attrs)
        lyr = feat = None
    finally:
        ds = None


def _wider(a: Optional[int], b: int) -> int:
    from .osgeo_exc import ogr

    rank = {ogr.OFTInteger: 0, ogr.OFTInteger64: 0, ogr.OFTReal: 1}
    if a is None:
        return b
    ra, rb = rank.get(a, 2), rank.get(b, 2)
    if max(ra, rb) == 2:
        return ogr.OFTString
    return ogr.OFTReal if max(ra, rb) == 1 else ogr.OFTInteger64


def seam_part_path(manifest: Manifest, index: int) -> str:
    """Where job ``index``'s buildings near a seam wait for :func:`settle_seams`."""
    return manifest.part_path(index)[: -len(".gpkg")] + "-seam.gpkg"


def settle_seams(jobs: Sequence[Job], manifest: Manifest, crs_wkt: str) -> Optional[str]:
    """The buildings near seams settled for the whole mosaic (:func:`.many_seams.settle`), written as
    one more part; its path, or None when no job had any."""
    import os

    from .gpkg_writer import write_buildings
    from .many_seams import settle

    paths = [(j.index, seam_part_path(manifest, j.index)) for j in jobs]
    candidates = [(i, b) for i, path in paths if os.path.exists(path) for b in read_part(path)]
    kept = settle(candidates, jobs)
    if not kept:
        return None
    path = os.path.join(manifest.folder, "seams.gpkg")
    write_buildings(kept, path, crs_wkt, layer="buildings", overwrite=True)
    return path


__all__ = ["merge_parts", "read_part", "seam_part_path", "settle_seams"]
