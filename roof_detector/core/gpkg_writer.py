"""Writing buildings to a GeoPackage layer without ever losing data.

* A new file is written under a temporary name in the same directory and
  renamed when complete, so a crash leaves no half-written GeoPackage.
* An existing GeoPackage keeps its other layers: the new layer is created
  inside one dataset transaction (SQLite), so an error or a kill leaves
  either the complete layer or none (SQLite rolls a hot journal back on
  the next open).
* An existing layer of the same name is replaced only with ``overwrite``
  (the delete and the new layer share the transaction: a failure keeps
  the old layer).

Fields: ``area_m2``, ``perimeter_m``, ``confidence`` and every key of the
buildings' ``attributes`` (float -> Real, int/bool -> Integer64, str -> String,
missing/None -> null); a key that clashes with those or with ``fid``/``geom``
(or with another key, ignoring case) is written as ``attr_<key>`` (or the
first free ``attr_<key>_N``, :mod:`.field_names`) rather than dropped
(:func:`attribute_schema`, the rule the plugin's memory layers and
Processing outputs follow too).

Every GeoPackage the project writes goes through :func:`write_buildings`:
the CLI, the plugin's detection task and the tools; ``detect-many`` streams
its merged parts through :func:`write_building_stream`, the same writer with
the schema given up front.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import OutputError
from .temp_files import remove_stale, temp_path
from .osgeo_exc import ogr, osr
from .output_fields import BASE_FIELDS, attribute_schema, base_values, written_value

if TYPE_CHECKING:  # annotations only: the plugin writes a server's result with GDAL alone (no shapely)
    from .building import Building

DEFAULT_LAYER = "buildings"


def check_output(path: str, layer: str = DEFAULT_LAYER, overwrite: bool = False) -> None:
    """Fail early (before a long detection) if ``write_buildings`` would refuse ``path``/``layer``."""
    _require_gdal()
    if not layer or not layer.strip():
        raise OutputError("The output layer name is empty; choose a name such as 'buildings'")
    low = layer.strip().lower()
    if low.startswith(("gpkg_", "gpkgext_", "sqlite_", "rtree_")) or low in ("ogr_empty_table",):
        raise OutputError(
            f"{layer!r} is the name of a GeoPackage system table; choose another layer name such as 'buildings'"
        )
    ext = os.path.splitext(path)[1].lower()
    if ext != ".gpkg" and not os.path.isdir(path):
        raise OutputError(
            f"{path}: the output is written as a GeoPackage only; give a file name ending in .gpkg "
            + (f"(convert it to {ext} afterwards, e.g. with ogr2ogr)" if ext else "")
        )
    if not check_writable(path):
        return
    ds = _open_existing(path, update=False)
    exists = _layer_index(ds, layer) is not None
    ds = None
    if exists and not overwrite:
        raise OutputError(
            f"{path} already has a layer {layer!r}; pass --overwrite to replace it "
            "or choose another layer name (--layer)"
        )


def check_writable(path: str) -> bool:
    """Fail early if a layer cannot be written to GeoPackage ``path``; return whether the file exists.

    Checks the folder (exists, is a folder, writable), and an existing file
    (a GeoPackage, writable, not locked by another program's transaction).
    """
    _require_gdal()
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        parent = directory
        while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise OutputError(f"Cannot write {path}: {parent} is a file, not a folder; choose another output path")
        raise OutputError(f"The output folder {directory} does not exist; create it or choose another path")
    if os.path.isdir(path):
        raise OutputError(f"{path} is a folder; give a file name ending in .gpkg")
    if not os.path.exists(path):
        if not os.access(directory, os.W_OK) or not _can_create_in(directory):
            raise OutputError(
                f"Cannot write in {directory} (read-only, immutable or permission denied); choose another output folder"
            )
        return False
    ds = _open_existing(path, update=False)
    ds = None  # noqa: F841 - closes the dataset now
    if not os.access(path, os.W_OK):
        raise OutputError(f"{path} is read-only; choose another output file")
    check_not_locked(path)
    return True


def _can_create_in(directory: str) -> bool:
    """Create and remove a probe file: root passes every permission check, not an immutable folder
    (chattr +i) or a read-only mount."""
    probe = temp_path(os.path.join(directory, "probe"), ".check")
    try:
        with open(probe, "xb"):
            pass
        os.unlink(probe)
        return True
    except OSError:
        return False


def check_not_locked(path: str, timeout_s: float = 1.0) -> None:
    """Raise :class:`OutputError` when another connection holds the GeoPackage's write lock.

    Takes SQLite's write lock for an instant (and gives it back) instead of
    letting the writer wait for it and fail after the detection.
    """
    import sqlite3
    from urllib.parse import quote

    try:
        con = sqlite3.connect(
            f"file:{quote(os.path.abspath(path))}?mode=rw", uri=True, timeout=timeout_s, isolation_level=None
        )
    except sqlite3.Error:
        return  # not openable by SQLite: the writer reports it
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        raise _as_output_error(exc, path) from None
    finally:
        con.close()


def write_buildings(
    buildings: Sequence[Building],
    path: str,
    crs_wkt: str,
    layer: str = DEFAULT_LAYER,
    overwrite: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
) -> str:
    """Write ``buildings`` (geometries in ``crs_wkt``) to layer ``layer`` of GeoPackage ``path``.

    ``metadata`` (e.g. model name and version, source raster) is stored as
    layer metadata items. Returns ``path``. Raises :class:`OutputError` with
    what to do when the file or layer cannot be written.
    """
    multi = not all(b.geometry.geom_type == "Polygon" for b in buildings)
    return write_building_stream(buildings, path, crs_wkt, field_types_of(buildings), multi, layer, overwrite, metadata)


def write_building_stream(
    buildings: Union[Iterable[Building], Callable[[Any, bool], None]],
    path: str,
    crs_wkt: str,
    fields: Union[Sequence[Tuple[str, str, int]], Dict[str, int]],
    multi: bool,
    layer: str = DEFAULT_LAYER,
    overwrite: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
) -> str:
    """:func:`write_buildings` for buildings that arrive one by one (never all in memory), or for
    a function ``fill(layer, multi)`` that creates the features (see :func:`_write_features`).

    The schema is given up front: ``fields`` lists (attribute key, field name,
    OGR type) as :func:`field_types_of` gives them, or maps field names to OGR
    types as an existing layer gives them; and
    ``multi`` says whether any geometry is a MultiPolygon. Same guarantees:
    the layer appears complete or not at all.
    """
    if isinstance(fields, dict):  # {field name: OGR type}, e.g. read back from written parts
        fields = [(key, key, ftype) for key, ftype in fields.items()]
    check_output(path, layer, overwrite)
    try:
        if not os.path.exists(path):
            return _write_new_file(buildings, path, crs_wkt, layer, fields, metadata, multi)
        ds = _open_existing(path, update=True)
        try:
            _write_layer(ds, buildings, crs_wkt, layer, fields, metadata, replace=overwrite, multi=multi)
        finally:
            ds = None
    except OSError as exc:  # the rename, or a file system error outside GDAL (full disk, I/O error)
        raise _as_output_error(exc, path) from None
    return path


def _write_new_file(buildings, path, crs_wkt, layer, fields, metadata, multi) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale(path, ".gpkg")  # left by a killed run (kill -9, SIGTERM in QGIS)
    tmp = temp_path(path, ".gpkg")
    try:
        try:
            ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        except RuntimeError as exc:
            # GDAL gives no message on a real ENOSPC here: say what the file system says.
            detail = f" ({' '.join(str(exc).split())})" if str(exc).strip() else ""
            free_kb = _free_kb(directory)
            raise OutputError(
                f"Cannot create the GeoPackage {path}{detail}: "
                + (
                    f"the disk is full ({free_kb} KB free); free space or write to another disk"
                    if free_kb is not None and free_kb < 1024
                    else "check the folder is writable and the disk not full"
                )
            ) from None
        try:
            _write_layer(ds, buildings, crs_wkt, layer, fields, metadata, replace=False, multi=multi)
        except OutputError as exc:  # name the file the user asked for, not our temporary
            raise OutputError(str(exc).replace(tmp, path)) from None
        finally:
            ds = None  # closes the file before the rename
        if os.path.exists(path):  # appeared while we wrote: never clobber it
            raise OutputError(f"{path} was created by another program while writing; run again")
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return path


def _write_layer(ds, buildings, crs_wkt, layer, fields, metadata, replace: bool, multi: bool) -> None:
    try:
        srs = _spatial_ref(crs_wkt)
    except OutputError:
        ds = None  # no GDAL object may outlive this frame in a traceback (see below)
        raise
    geom_type = ogr.wkbMultiPolygon if multi else ogr.wkbPolygon
    name = ds.GetDescription()
    try:
        ds.StartTransaction()
    except RuntimeError as exc:
        ds = None  # see the finally below
        raise _as_output_error(exc, name) from None
    lyr = None
    try:
        # Take SQLite's write lock first, with a no-op write: a file locked by
        # another program then fails here (after GDAL's busy timeout) before
        # any layer exists, instead of half-way through creating one.
        ds.ExecuteSQL("DELETE FROM gpkg_contents WHERE 0")
        lyr = _create_layer(ds, name, layer, srs, geom_type, fields, replace)
        _write_features(lyr, buildings, fields, multi=geom_type == ogr.wkbMultiPolygon)
        if metadata:
            lyr.SetMetadata({str(k): str(v) for k, v in metadata.items()})
        # GDAL defers work on a layer to its next sync or to closing: the spatial index and
        # the feature-count triggers it dropped for the bulk insert. Done here, inside the
        # transaction, a failed COMMIT (a full disk) rolls it all back and leaves nothing for
        # closing to do; deferred, it failed in the dataset's destructor ("Exception ignored
        # in delete_DataSource: ... no such table", a real ENOSPC at commit on a tmpfs).
        lyr.SyncToDisk()
        ds.CommitTransaction()
    except BaseException as exc:  # KeyboardInterrupt too: the transaction must not stay open
        try:
            ds.RollbackTransaction()
        except RuntimeError:
            pass
        if isinstance(exc, (RuntimeError, OSError)):
            raise _as_output_error(exc, name) from None
        raise
    finally:
        # A traceback keeps this frame alive, and GDAL objects freed late (after
        # their dataset, or by the garbage collector) corrupt memory: drop every
        # reference here so the caller closes the dataset deterministically.
        lyr = srs = ds = None  # noqa: F841


def _spatial_ref(crs_wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    try:
        srs.SetFromUserInput(crs_wkt)  # WKT, or "EPSG:XXXX"
    except RuntimeError as exc:
        srs = None  # noqa: F841 - no GDAL object in a traceback's frame (see _write_layer)
        raise OutputError(f"The buildings' coordinate reference system is not usable ({exc})") from None
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _create_layer(ds, name: str, layer: str, srs, geom_type, fields, replace: bool):
    """The empty layer with its fields, its table created inside the open transaction."""
    lyr = None
    try:
        index = _layer_index(ds, layer)
        if index is not None:
            if not replace:
                raise OutputError(
                    f"{name} already has a layer {layer!r}; pass --overwrite "
                    "to replace it or choose another layer name (--layer)"
                )
            ds.DeleteLayer(index)
        lyr = ds.CreateLayer(layer, srs, geom_type, ["SPATIAL_INDEX=YES", "GEOMETRY_NAME=geom", "FID=fid"])
        columns = [(n, ogr.OFTReal) for n in BASE_FIELDS] + [(n, t) for _, n, t in fields]
        for column, ftype in columns:
            lyr.CreateField(ogr.FieldDefn(column, ftype))
        # Create the table (and its triggers) now, inside the transaction: a
        # rollback then leaves GDAL nothing deferred to create on close.
        lyr.SyncToDisk()
        return lyr
    finally:
        lyr = srs = ds = None  # noqa: F841 - as in _write_layer: no GDAL object left in this frame


def _write_features(lyr, buildings, fields, multi: bool) -> None:
    """One feature per building: geometry, the base fields, then ``fields``' attributes.

    ``buildings`` may instead be a function ``fill(layer, multi)`` that creates the features
    itself (``detect-many`` copies its parts' features as they are, in C).
    """
    if callable(buildings):
        buildings(lyr, multi)
        return
    feat = geom = defn = None
    try:
        defn = lyr.GetLayerDefn()
        # Field indexes resolved once, not by name per value (62,500 buildings: 3.7 -> 1.5 s),
        # and integers and strings set through the typed setters ``SetField`` dispatches to.
        base = [defn.GetFieldIndex(n) for n in BASE_FIELDS]
        extra = [(key, _KINDS[ftype], defn.GetFieldIndex(column)) for key, column, ftype in fields]
        for chunk, wkbs in _with_wkb(buildings):
            for b, wkb in zip(chunk, wkbs):
                feat = ogr.Feature(defn)
                geom = ogr.CreateGeometryFromWkb(wkb)
                if multi:
                    geom = ogr.ForceToMultiPolygon(geom)
                feat.SetGeometryDirectly(geom)  # the feature owns it: no copy
                geom = None
                for idx, value in zip(base, base_values(b)):
                    if value is None:
                        feat.SetFieldNull(idx)
                    else:
                        feat.SetField(idx, value)
                attrs = b.attributes
                for key, kind, idx in extra:
                    value = written_value(key, kind, attrs.get(key))
                    if value is None:
                        feat.SetFieldNull(idx)
                    else:
                        _SETTERS[kind](feat, idx, value)
                lyr.CreateFeature(feat)
    finally:
        feat = geom = defn = lyr = None  # noqa: F841 - as in _write_layer: no GDAL object left in this frame


#: Buildings whose geometries are turned into WKB in one call (shapely's array function).
_WKB_CHUNK = 4096


def _with_wkb(buildings: Iterable["Building"]) -> Iterator[Tuple[List["Building"], Iterable[bytes]]]:
    """The buildings in chunks, each with its geometries' WKB (the same bytes as ``geometry.wkb``)."""
    try:
        import shapely
    except ImportError:  # the plugin writes a server's result with GDAL alone (geometries give their WKB)
        shapely = None
    it = iter(buildings)
    while chunk := list(itertools.islice(it, _WKB_CHUNK)):
        wkbs: Iterable[bytes] = (b.geometry.wkb for b in chunk)  # one at a time, as written
        if shapely is not None:
            try:
                wkbs = shapely.to_wkb([b.geometry for b in chunk]).tolist()
            except TypeError:  # not all shapely geometries: each gives its own ``wkb``
                pass
        yield chunk, wkbs


#: Kinds of :func:`attribute_schema` (OGR-style names, as ``core.solar.SOLAR_FIELDS``).
_OGR_TYPES = {"integer": ogr.OFTInteger64, "real": ogr.OFTReal, "string": ogr.OFTString}
_KINDS = {ftype: kind for kind, ftype in _OGR_TYPES.items()}
#: The typed setter of each kind, for the values :func:`written_value` gives.
_SETTERS = {
    "integer": ogr.Feature.SetFieldInteger64,
    "real": ogr.Feature.SetField,  # GDAL 3.6's bindings have no SetFieldDouble
    "string": ogr.Feature.SetFieldString,
}


def field_types_of(buildings: Iterable[Building]) -> List[Tuple[str, str, int]]:
    """(attribute key, field name, OGR field type) of each attribute (see :func:`attribute_schema`),
    as :func:`write_building_stream` takes them."""
    return [(key, name, _OGR_TYPES[kind]) for key, name, kind in attribute_schema(buildings)]


def _free_kb(directory: str) -> Optional[int]:
    """Free space (KB) of the file system holding ``directory``; None where it cannot be told."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    return st.f_bavail * st.f_frsize // 1024


def _open_existing(path: str, update: bool):
    try:
        ds = ogr.Open(path, 1 if update else 0)
    except RuntimeError as exc:
        raise _as_output_error(exc, path, existing=True) from None
    if ds is None or ds.GetDriver().GetName() != "GPKG":
        raise OutputError(f"{path} exists and is not a GeoPackage; choose another output file")
    return ds


def _layer_index(ds, layer: str) -> Optional[int]:
    names: List[str] = [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]
    lowered = [n.lower() for n in names]  # GeoPackage table names are case-insensitive
    return lowered.index(layer.lower()) if layer.lower() in lowered else None


def _as_output_error(exc: Exception, path: str, existing: bool = False) -> OutputError:
    msg = " ".join(str(exc).split()) or type(exc).__name__  # GDAL messages span lines
    if (
        (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
        or "disk is full" in msg.lower()
        or "no space left" in msg.lower()
    ):
        return OutputError(
            f"The disk is full: {path} could not be written ({msg}). Nothing was written; free "
            "space or write to another disk"
        )
    if "locked" in msg.lower() or "busy" in msg.lower():
        return OutputError(
            f"{path} is locked by another program (QGIS editing it?); stop editing or close it, "
            "or write to another file"
        )
    if (
        "readonly" in msg.lower()
        or "read-only" in msg.lower()
        or "permission" in msg.lower()
        or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS))
    ):
        return OutputError(f"{path} cannot be written (read-only or permission denied); choose another file")
    if existing:
        return OutputError(f"{path} exists but cannot be opened as a GeoPackage ({msg}); choose another file")
    return OutputError(f"Writing {path} failed ({msg}); check free disk space and permissions")


def _require_gdal() -> None:
    if ogr is None:
        raise OutputError("GDAL's Python bindings (osgeo) are missing; run `make setup`")
