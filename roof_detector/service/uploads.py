"""Request bodies: a multipart upload streamed to the data dir under a size limit, then checked.

The file part is written as it arrives to ``DATA_DIR/uploads/<random>.part``
(never anywhere else: the client's file name is only remembered, never used
as a path) and the upload stops with :class:`UploadError` (413) as soon as it
passes the limit. Text parts (``options``, ``aoi``) are kept in memory, up to
1 MiB. A body that ends before its closing boundary is refused (400) and its
partial file deleted.
"""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator, Callable, Dict, Optional

MAX_FIELD_BYTES = 1 << 20


class UploadError(Exception):
    """The body cannot be taken: ``status`` (400, 413, 422) and a message saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Upload:
    """What a multipart body held: the file on disk (``path``, ``filename``, ``size``) and text fields."""

    def __init__(self) -> None:
        self.path: Optional[str] = None
        self.filename: str = ""
        self.size = 0
        self.fields: Dict[str, str] = {}

    def discard(self) -> None:
        """Delete the received file, if any."""
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)
        self.path = None


async def receive_multipart(
    stream: AsyncIterator[bytes], content_type: str, uploads_dir: str, max_file_bytes: int, file_field: str = "raster"
) -> Upload:
    """Parse a ``multipart/form-data`` body from ``stream`` (see the module doc)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary")
    receiver = _PartReceiver(uploads_dir, max_file_bytes, file_field)
    upload = receiver.upload
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
        if not receiver.ended:
            raise UploadError(400, "The upload ended before the closing boundary (truncated body); send it again")
        if upload.path is None:
            raise UploadError(422, f"No '{file_field}' file part: send the GeoTIFF as multipart field '{file_field}'")
        return upload
    except BaseException as exc:
        if receiver.file is not None:
            receiver.file.close()
        upload.discard()
        if isinstance(exc, UploadError):
            raise
        from python_multipart.exceptions import MultipartParseError

        if isinstance(exc, MultipartParseError):
            raise UploadError(400, f"The multipart body is malformed ({exc})") from None
        from starlette.requests import ClientDisconnect

        if isinstance(exc, ClientDisconnect):  # one request line in the log, not an ASGI traceback
            raise UploadError(
                400, "The client closed the connection before the upload ended; nothing was kept"
            ) from None
        raise


class _PartReceiver:
    """The parser's callbacks: the file part written to ``uploads_dir`` under the limit, text parts kept."""

    def __init__(self, uploads_dir: str, max_file_bytes: int, file_field: str):
        self.uploads_dir, self.max_file_bytes, self.file_field = uploads_dir, max_file_bytes, file_field
        self.upload = Upload()
        self.ended = False
        self.file = None
        self.on_part_begin()

    def callbacks(self) -> Dict[str, Callable]:
        return dict(
            on_part_begin=self.on_part_begin,
            on_header_field=self.on_header_field,
            on_header_value=self.on_header_value,
            on_header_end=self.on_header_end,
            on_headers_finished=self.on_headers_finished,
            on_part_data=self.on_part_data,
            on_part_end=self.on_part_end,
            on_end=self.on_end,
        )

    def on_part_begin(self) -> None:
        self.headers: Dict[bytes, bytes] = {}
        self.field, self.name, self.file = b"", None, None
        self.header_field, self.header_value = b"", b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, disp = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        self.name = name
        if name == self.file_field:
            upload = self.upload
            if upload.path is not None:
                raise UploadError(400, f"more than one '{self.file_field}' part")
            upload.filename = os.path.basename(disp.get(b"filename", b"upload.tif").decode("utf-8", "replace"))
            upload.path = os.path.join(self.uploads_dir, f"{uuid.uuid4().hex}.part")
            self.file = open(upload.path, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file is not None:
            self.upload.size += end - start
            if self.upload.size > self.max_file_bytes:
                raise UploadError(
                    413,
                    f"The raster is larger than this server's limit of "
                    f"{self.max_file_bytes / 2**20:g} MiB (--max-upload-mb); send a smaller "
                    "area (an area of interest) or ask the operator to raise the limit",
                )
            self.file.write(data[start:end])
        else:
            self.field += data[start:end]
            if len(self.field) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field '{self.name}' is larger than 1 MiB")

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        elif self.name:
            self.upload.fields[self.name] = self.field.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True


# Formats an upload (or a URL) may have: self-contained image files. A VRT (or any format that names
# other files) could make the server read files outside the upload, another client's raster included.
UPLOAD_DRIVERS = {"GTiff", "COG", "JP2OpenJPEG"}


def open_checked(path: str):
    """The engine's reader on ``path``: a file, or a ``/vsicurl/`` URL the service has allowed."""
    from ..core.raster_source import RasterioSource

    return RasterioSource(path, allow_remote=path.startswith("/vsicurl/"))


def check_raster(path: str, shown_name: str, self_contained: bool = True) -> None:
    """Raise :class:`UploadError` (422) unless ``path`` is a raster the engine can use.

    With ``self_contained`` (uploads, URLs) it must be a GeoTIFF / JPEG 2000
    (:data:`UPLOAD_DRIVERS`). Opened by the engine's own reader (CRS,
    geotransform, bands, data type), then its last row of blocks is read: a
    truncated file fails there.
    """
    from ..core.errors import RoofDetectorError

    if self_contained:
        _check_driver(path, shown_name)
    try:
        source = open_checked(path)
    except RoofDetectorError as exc:
        raise UploadError(422, str(exc).replace(path, shown_name)) from None
    try:
        _read_last_rows(path)
    except Exception as exc:  # noqa: BLE001 - rasterio/GDAL read errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UploadError(
            422,
            f"{shown_name} cannot be read to its end ({first.replace(path, shown_name)}); "
            "the file is truncated or corrupt: send it again",
        ) from None
    finally:
        source.close()


def _check_driver(path: str, shown_name: str) -> None:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            driver = ds.driver
    except RasterioIOError:
        return  # not a raster at all: the engine's reader says so, in its words
    if driver not in UPLOAD_DRIVERS:
        raise UploadError(
            422,
            f"{shown_name} is a {driver} file; send the raster itself as a GeoTIFF or "
            "JPEG 2000 (e.g. `gdal_translate in.vrt out.tif`)",
        )


def _read_last_rows(path: str) -> None:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        block_h = ds.block_shapes[0][0] if ds.block_shapes else 1
        rows = min(ds.height, max(1, block_h))
        ds.read(window=Window(0, ds.height - rows, ds.width, rows))
