"""Turn the engine's buildings into a QGIS layer and write it to a GeoPackage.

Safe in a worker thread: nothing here touches the project or a widget. The
memory layer built in a task's thread must be moved to the main thread
(``layer.moveToThread``) before it is added to the project.

GeoPackage writing never leaves a partial result behind: a new file is
written to a temporary file in the same folder and moved into place; an
existing file gets the layer written into it (other layers are kept) and,
on failure, the layer is dropped again if it did not exist before.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from . import tr

CORE_FIELDS = (("area_m2", QVariant.Double), ("perimeter_m", QVariant.Double),
               ("confidence", QVariant.Double))
RESERVED = {"fid", "geom", "geometry", "ogc_fid"}
# Field types of the engine's solar attributes (core.solar.SOLAR_FIELDS, kept in step by a test): fixed
# here so that a first building with a null orientation or no panels cannot decide the column's type.
KNOWN_TYPES = {"usable_area_m2": QVariant.Double, "panels": QVariant.Int, "kwp": QVariant.Double,
               "specific_yield": QVariant.Double, "annual_kwh": QVariant.Double,
               "orientation_deg": QVariant.Double}


class WriteError(RuntimeError):
    """Writing the GeoPackage failed; nothing partial was left behind."""


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; containers -> JSON text."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _variant_type(value: Any) -> QVariant.Type:
    if isinstance(value, bool):
        return QVariant.Bool
    if isinstance(value, int):
        return QVariant.LongLong
    if isinstance(value, float):
        return QVariant.Double
    return QVariant.String


def _field_name(key: str) -> str:
    name = str(key).strip() or "attr"
    return name + "_" if name.lower() in RESERVED else name


def attribute_fields(buildings: Sequence[Any]) -> List[Tuple[str, str, QVariant.Type]]:
    """(attribute key, field name, type) of the extra attributes, in first-seen order.

    The type of a solar attribute is fixed (:data:`KNOWN_TYPES`), any other
    comes from the first non-empty value; keys that clash with the core
    fields are left out (the core value wins).
    """
    seen: dict = {}
    for building in buildings:
        for key, value in (getattr(building, "attributes", None) or {}).items():
            value = _plain(value)
            if key in seen and seen[key] is not None:
                continue
            seen[key] = None if value is None else _variant_type(value)
    core = {name for name, _ in CORE_FIELDS}
    seen.update({key: KNOWN_TYPES[key] for key in seen if key in KNOWN_TYPES})
    return [(key, _field_name(key), kind if kind is not None else QVariant.String)
            for key, kind in seen.items() if _field_name(key) not in core]


def result_fields(extra: Iterable[Tuple[str, str, QVariant.Type]]) -> QgsFields:
    """The result layer's fields: area_m2, perimeter_m, confidence, then the extras."""
    fields = QgsFields()
    for name, kind in CORE_FIELDS:
        fields.append(QgsField(name, kind))
    for _, name, kind in extra:
        fields.append(QgsField(name, kind))
    return fields


def to_shapely(geometry: Any) -> Any:
    """A QgsGeometry as a 2D shapely geometry (None for a null/empty one); curves are linearised.

    shapely reads no curved WKB (CurvePolygon is "Unknown WKB type 10") and no M values.
    """
    import shapely

    if geometry is None or geometry.isNull() or geometry.isEmpty():
        return None
    if QgsWkbTypes.isCurvedType(geometry.wkbType()) or QgsWkbTypes.hasM(geometry.wkbType()):
        geometry = QgsGeometry(geometry)
        if QgsWkbTypes.isCurvedType(geometry.wkbType()):
            geometry.convertToStraightSegment()
        geometry.get().dropMValue()
    return shapely.from_wkb(bytes(geometry.asWkb()))


def to_qgs_geometry(geometry: Any) -> QgsGeometry:
    """A shapely geometry (or anything with ``.wkb``/``.wkt``) as QgsGeometry."""
    result = QgsGeometry()
    wkb = getattr(geometry, "wkb", None)
    if wkb is not None:
        result.fromWkb(bytes(wkb))
    else:
        result = QgsGeometry.fromWkt(str(getattr(geometry, "wkt", geometry)))
    return result


def build_memory_layer(buildings: Sequence[Any], crs: QgsCoordinateReferenceSystem,
                       name: str) -> QgsVectorLayer:
    """A memory polygon layer holding ``buildings`` with the core and extra fields."""
    geometries = [to_qgs_geometry(b.geometry) for b in buildings]
    multi = any(g.isMultipart() for g in geometries)
    uri = "MultiPolygon" if multi else "Polygon"
    layer = QgsVectorLayer(f"{uri}?crs={crs.authid()}" if crs.authid() else uri, name, "memory")
    if not crs.authid():
        layer.setCrs(crs)
    extra = attribute_fields(buildings)
    fields = result_fields(extra)
    provider = layer.dataProvider()
    provider.addAttributes(fields.toList())
    layer.updateFields()
    features = []
    for building, geometry in zip(buildings, geometries):
        feature = QgsFeature(fields)
        if multi:
            geometry.convertToMultiType()
        feature.setGeometry(geometry)
        attrs = getattr(building, "attributes", None) or {}
        values = [float(building.area_m2), float(building.perimeter_m),
                  None if building.confidence is None else float(building.confidence)]
        for key, _, kind in extra:
            value = _plain(attrs.get(key))
            if value is not None and kind == QVariant.String and not isinstance(value, str):
                value = str(value)
            values.append(value)
        feature.setAttributes(values)
        features.append(feature)
    if features and not provider.addFeatures(features)[0]:
        raise WriteError(tr("Could not build the result layer: {error}")
                         .format(error="; ".join(provider.errors()) or "unknown error"))
    layer.updateExtents()
    return layer


def gpkg_layer_names(path: str) -> List[str]:
    """Names of the vector layers in the GeoPackage at ``path`` ([] if none or unreadable)."""
    if not os.path.isfile(path):
        return []
    from osgeo import gdal

    dataset = gdal.OpenEx(path, gdal.OF_VECTOR)
    if dataset is None:
        return []
    try:
        return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]
    finally:
        dataset = None


def drop_gpkg_layer(path: str, layer_name: str) -> bool:
    """Delete ``layer_name`` from the GeoPackage at ``path``; True if it was there."""
    from osgeo import gdal

    dataset = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_UPDATE)
    if dataset is None:
        return False
    try:
        for i in range(dataset.GetLayerCount()):
            if dataset.GetLayer(i).GetName() == layer_name:
                dataset.DeleteLayer(i)
                return True
        return False
    finally:
        dataset = None


def _remove_sqlite_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def _write(layer: QgsVectorLayer, path: str, layer_name: str,
           action: QgsVectorFileWriter.ActionOnExistingFile) -> None:
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = layer_name
    options.fileEncoding = "UTF-8"
    options.actionOnExistingFile = action
    # V3 is V2 without the deprecation (QGIS >= 3.20); same CreateOrOverwrite* semantics.
    writer = getattr(QgsVectorFileWriter, "writeAsVectorFormatV3", None) or \
        QgsVectorFileWriter.writeAsVectorFormatV2
    error, message = writer(layer, path, QgsCoordinateTransformContext(), options)[:2]
    if error != QgsVectorFileWriter.NoError:
        raise WriteError(tr("Could not write layer '{layer}' to {path}: {error}")
                         .format(layer=layer_name, path=path, error=message or error))


def write_geopackage(layer: QgsVectorLayer, path: str, layer_name: str,
                     replace: bool = False) -> str:
    """Write ``layer`` as ``layer_name`` into the GeoPackage ``path``; return the layer URI.

    Raises :class:`WriteError` (with nothing partial left) if the layer exists
    and ``replace`` is false, or if writing fails.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if os.path.exists(path):
        existed = layer_name in gpkg_layer_names(path)
        if existed and not replace:
            raise WriteError(tr("{path} already has a layer '{layer}'; choose another layer name "
                                "or allow replacing it.").format(path=path, layer=layer_name))
        try:
            _write(layer, path, layer_name, QgsVectorFileWriter.CreateOrOverwriteLayer)
        except Exception:
            if not existed:
                try:
                    drop_gpkg_layer(path, layer_name)
                except Exception:  # keep the write error, the more useful one
                    pass
            raise
    else:
        if not os.path.isdir(folder):
            raise WriteError(tr("Folder {folder} does not exist.").format(folder=folder))
        tmp = os.path.join(folder, f".roof_detector-{uuid.uuid4().hex[:8]}.tmp.gpkg")
        try:
            _write(layer, tmp, layer_name, QgsVectorFileWriter.CreateOrOverwriteFile)
            os.replace(tmp, path)
        finally:
            _remove_sqlite_files(tmp)
    return f"{path}|layername={layer_name}"


def summary(buildings: Sequence[Any]) -> Tuple[int, float]:
    """(count, total area in m²) of ``buildings``."""
    return len(buildings), float(sum(float(b.area_m2) for b in buildings))


def crs_from(wkt_or_authid: str, fallback: Optional[str] = None) -> QgsCoordinateReferenceSystem:
    """A CRS from WKT or an authority id (e.g. 'EPSG:32631'), else from ``fallback``."""
    for text in (wkt_or_authid, fallback):
        if not text:
            continue
        crs = QgsCoordinateReferenceSystem(text) if ":" in text and "[" not in text \
            else QgsCoordinateReferenceSystem.fromWkt(text)
        if crs.isValid():
            return crs
    return QgsCoordinateReferenceSystem()
