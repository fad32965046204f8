"""The output sink: the engine's buildings as QGIS fields, features and memory layers.

Safe in a worker thread: nothing here touches the project or a widget. The
memory layer built in a task's thread must be moved to the main thread
(``layer.moveToThread``) before it is added to the project. GeoPackages are
written by :mod:`roof_detector.core.gpkg_writer` only; the fields here follow
its rule (:func:`attribute_fields`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from . import tr

CORE_FIELDS = (("area_m2", QVariant.Double), ("perimeter_m", QVariant.Double), ("confidence", QVariant.Double))
_VARIANTS = {"integer": QVariant.LongLong, "real": QVariant.Double, "string": QVariant.String}
_KINDS = {variant: kind for kind, variant in _VARIANTS.items()}


class WriteError(RuntimeError):
    """The result layer could not be built; nothing partial was left behind."""


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


def attribute_fields(buildings: Sequence[Any]) -> List[Tuple[str, str, QVariant.Type]]:
    """(attribute key, field name, type) of the extra attributes: the GeoPackage writer's rule.

    Names and kinds come from :func:`roof_detector.core.output_fields.attribute_schema`,
    so a memory layer, a Processing output and a GeoPackage have the same fields.
    """
    from ..core.output_fields import attribute_schema

    return [(key, name, _VARIANTS[kind]) for key, name, kind in attribute_schema(buildings)]


def result_fields(extra: Iterable[Tuple[str, str, QVariant.Type]]) -> QgsFields:
    """The result layer's fields: area_m2, perimeter_m, confidence, then the extras."""
    fields = QgsFields()
    for name, kind in CORE_FIELDS:
        fields.append(QgsField(name, kind))
    for _, name, kind in extra:
        fields.append(QgsField(name, kind))
    return fields


def linear_wkb(geometry: QgsGeometry) -> bytes:
    """The WKB of a QgsGeometry that shapely reads: curves linearised, M values dropped.

    shapely reads no curved WKB (a cadastre's CurvePolygon is "Unknown WKB type 10") and no M values.
    """
    if QgsWkbTypes.isCurvedType(geometry.wkbType()) or QgsWkbTypes.hasM(geometry.wkbType()):
        geometry = QgsGeometry(geometry)
        if QgsWkbTypes.isCurvedType(geometry.wkbType()):
            geometry.convertToStraightSegment()
        geometry.get().dropMValue()
    return bytes(geometry.asWkb())


def to_shapely(geometry: Any) -> Any:
    """A QgsGeometry as a 2D shapely geometry (None for a null/empty one); curves are linearised."""
    import shapely

    if geometry is None or geometry.isNull() or geometry.isEmpty():
        return None
    return shapely.from_wkb(linear_wkb(geometry))


def to_qgs_geometry(geometry: Any) -> QgsGeometry:
    """A shapely geometry (or anything with ``.wkb``/``.wkt``) as QgsGeometry."""
    result = QgsGeometry()
    wkb = getattr(geometry, "wkb", None)
    if wkb is not None:
        result.fromWkb(bytes(wkb))
    else:
        result = QgsGeometry.fromWkt(str(getattr(geometry, "wkt", geometry)))
    return result


class ResultFeatures:
    """The buildings as QGIS features: one schema for a memory layer and a Processing sink alike."""

    def __init__(self, buildings: Sequence[Any]):
        self.buildings = buildings
        self.geometries = [to_qgs_geometry(b.geometry) for b in buildings]
        self.multi = any(g.isMultipart() for g in self.geometries)
        self.extra = attribute_fields(buildings)
        self.fields = result_fields(self.extra)

    @property
    def wkb_type(self) -> int:
        """Polygon, or MultiPolygon when any building has several parts."""
        return QgsWkbTypes.MultiPolygon if self.multi else QgsWkbTypes.Polygon

    def features(self) -> Iterator[QgsFeature]:
        """One feature per building, attributes in :attr:`fields` order (values as the writer stores them)."""
        from ..core.output_fields import base_values, written_value

        for building, geometry in zip(self.buildings, self.geometries):
            feature = QgsFeature(self.fields)
            if self.multi:
                geometry.convertToMultiType()
            feature.setGeometry(geometry)
            attrs = getattr(building, "attributes", None) or {}
            # Rounded by the GeoPackage writer's own rule, so every output holds the same values.
            values = list(base_values(building))
            for key, _, kind in self.extra:
                values.append(written_value(key, _KINDS[kind], _plain(attrs.get(key))))
            feature.setAttributes(values)
            yield feature


def build_memory_layer(buildings: Sequence[Any], crs: QgsCoordinateReferenceSystem, name: str) -> QgsVectorLayer:
    """A memory polygon layer holding ``buildings`` with the core and extra fields."""
    result = ResultFeatures(buildings)
    uri = "MultiPolygon" if result.multi else "Polygon"
    layer = QgsVectorLayer(f"{uri}?crs={crs.authid()}" if crs.authid() else uri, name, "memory")
    if not crs.authid():
        layer.setCrs(crs)
    provider = layer.dataProvider()
    provider.addAttributes(result.fields.toList())
    layer.updateFields()
    features = list(result.features())
    if features and not provider.addFeatures(features)[0]:
        raise WriteError(
            tr("Could not build the result layer: {error}").format(
                error="; ".join(provider.errors()) or "unknown error"
            )
        )
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


def summary(buildings: Sequence[Any]) -> Tuple[int, float]:
    """(count, total area in m²) of ``buildings``."""
    return len(buildings), float(sum(float(b.area_m2) for b in buildings))


def crs_from(wkt_or_authid: str, fallback: Optional[str] = None) -> QgsCoordinateReferenceSystem:
    """A CRS from WKT or an authority id (e.g. 'EPSG:32631'), else from ``fallback``."""
    for text in (wkt_or_authid, fallback):
        if not text:
            continue
        crs = (
            QgsCoordinateReferenceSystem(text)
            if ":" in text and "[" not in text
            else QgsCoordinateReferenceSystem.fromWkt(text)
        )
        if crs.isValid():
            return crs
    return QgsCoordinateReferenceSystem()
