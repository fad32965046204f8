"""Rasters named by URL (``serve --allow-url-prefix``): which URLs the server may read, and a first look.

Reading a URL the client chose makes the server send requests on the
client's behalf (server-side request forgery: the cloud metadata address,
an intranet service, ``file:///``...). So URLs are refused unless the
operator lists prefixes, and then only ``http(s)://`` URLs under one of
them are read, through GDAL's ``/vsicurl/`` by the engine's own reader:

* :func:`parse_prefixes` checks the operator's prefixes at start-up;
* :func:`vsicurl_path` checks a client's URL against them (scheme, host,
  port, path; no user info, no ``..`` segments) and then asks the URL for
  its first byte itself, without following redirects: a redirect is
  followed only to a URL that is allowed too, the answer must come within
  the timeout, support Range requests (GDAL reads by ranges) and give a
  size within the upload limit. GDAL then reads the final URL, so it meets
  no redirect unless the host changes its answers between the two.
* :func:`configure_gdal_http` bounds GDAL's own requests (timeouts, no
  retries, no directory listing).

What cannot be enforced: GDAL has no setting to refuse redirects, so a
host on the list that starts redirecting later (or redirects GDAL's sidecar
probes, ``.ovr``/``.aux.xml``) is followed by libcurl (to http/https only).
List only hosts you trust. See README "REST service", "Rasters by URL".
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

from .uploads import UploadError

#: Redirects followed by the first look (each must stay on the allow-list).
MAX_REDIRECTS = 3
_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class UrlPrefix:
    """One allowed prefix: scheme, host, port and the start of the path."""

    scheme: str
    host: str
    port: int
    path: str
    text: str  # as the operator wrote it

    def allows(self, url: "_Url") -> bool:
        """True when ``url`` lies under this prefix."""
        return (url.scheme, url.host, url.port) == (self.scheme, self.host, self.port) and url.path.startswith(
            self.path
        )


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent
    text: str


def _split(text: str) -> _Url:
    """The parts of an http(s) URL; ValueError saying what is wrong with it."""
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in text):
        raise ValueError("it holds spaces, control characters or backslashes")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"only http:// and https:// URLs can be read, not {scheme or 'this'}://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URLs with a user name or password (user@host) are refused")
    if not parts.hostname:
        raise ValueError("it names no host")
    if parts.fragment:
        raise ValueError("it has a #fragment")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:  # a port that is not a number
        raise ValueError(str(exc)) from None
    path = parts.path or "/"
    # libcurl removes dot segments before sending: "/ok/../secret" would leave the allowed folder.
    segments = re.split(r"/", re.sub(r"%2e", ".", re.sub(r"%2f", "/", path, flags=re.I), flags=re.I))
    if any(s in (".", "..") for s in segments):
        raise ValueError("its path has . or .. segments")
    # The scheme is case-insensitive (RFC 3986) but GDAL's /vsicurl/ and the engine know it lower case.
    text = scheme + text[len(parts.scheme) :]
    return _Url(scheme, parts.hostname.lower(), port, path + (f"?{parts.query}" if parts.query else ""), text)


def parse_prefixes(texts: Sequence[str]) -> List[UrlPrefix]:
    """The operator's ``--allow-url-prefix`` values; ValueError naming a bad one."""
    out = []
    for text in texts:
        try:
            url = _split(text)
        except ValueError as exc:
            raise ValueError(f"--allow-url-prefix {text!r}: {exc}") from None
        if "?" in url.path:
            raise ValueError(f"--allow-url-prefix {text!r}: a prefix has no ?query")
        out.append(UrlPrefix(url.scheme, url.host, url.port, url.path, text))
    return out


def is_url(name: str) -> bool:
    """True when a JSON ``raster`` names a URL or a GDAL virtual path rather than a data-dir file."""
    return "://" in name or name.startswith("/vsi")


def vsicurl_path(name: str, prefixes: Sequence[UrlPrefix], max_bytes: int, timeout_s: float) -> str:
    """The ``/vsicurl/`` path the engine reads for the URL ``name``; :class:`UploadError` if it may not.

    403: URLs are off, the URL is not under an allowed prefix, or it redirects
    outside them; 422: not reachable, an HTTP error, no Range support;
    413: larger than ``max_bytes``.
    """
    text = name[len("/vsicurl/") :] if name.startswith("/vsicurl/") else name
    if not prefixes:
        raise UploadError(
            403,
            "This server reads rasters under its data dir only; reading URLs is off "
            "(the operator can allow some with `serve --allow-url-prefix`). Upload the raster instead",
        )
    if text.startswith("/vsi") or "://" not in text:
        raise UploadError(403, f"{name!r}: of GDAL's virtual paths only /vsicurl/http(s)://... URLs are read here")
    url = _allowed(text, prefixes)
    for _ in range(MAX_REDIRECTS + 1):
        location, size = _first_byte(url, timeout_s)
        if location is None:
            break
        url = _allowed(urljoin(url.text, location), prefixes, redirected_from=url.text)
    else:
        raise UploadError(422, f"{text} redirects more than {MAX_REDIRECTS} times")
    if size > max_bytes:
        raise UploadError(
            413,
            f"The raster at {text} is {size / 2**20:.1f} MiB, larger than this server's limit of "
            f"{max_bytes / 2**20:g} MiB (--max-upload-mb)",
        )
    return "/vsicurl/" + url.text


def _allowed(text: str, prefixes: Sequence[UrlPrefix], redirected_from: Optional[str] = None) -> _Url:
    via = f" (a redirect from {redirected_from})" if redirected_from else ""
    try:
        url = _split(text)
    except ValueError as exc:
        raise UploadError(403, f"{text}{via} cannot be read: {exc}") from None
    if not any(p.allows(url) for p in prefixes):
        raise UploadError(
            403,
            f"{text}{via} is not under a URL prefix this server may read; ask the operator "
            "(serve --allow-url-prefix) or upload the raster",
        )
    return url


def _first_byte(url: _Url, timeout_s: float) -> Tuple[Optional[str], int]:
    """Ask ``url`` for byte 0 without following a redirect: ``(Location, 0)`` or ``(None, size)``."""
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    kwargs = {"context": ssl.create_default_context()} if url.scheme == "https" else {}
    conn = conn_cls(url.host, url.port, timeout=timeout_s, **kwargs)
    try:
        conn.request("GET", url.path, headers={"Range": "bytes=0-0", "User-Agent": "roof-detector"})
        resp = conn.getresponse()
        resp.read(1024)
    except socket.timeout:
        raise UploadError(422, f"{url.text} did not answer within {timeout_s:g} s; check the URL") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else type(exc).__name__
        raise UploadError(422, f"{url.text} cannot be reached ({reason}); check the URL") from None
    finally:
        conn.close()
    if 300 <= resp.status < 400:
        location = resp.getheader("Location")
        if not location:
            raise UploadError(422, f"{url.text} answered HTTP {resp.status} without a Location")
        return location, 0
    if resp.status == 200:
        raise UploadError(
            422,
            f"{url.text} does not answer HTTP Range requests, which reading a raster by URL needs "
            "(GDAL /vsicurl/); serve it from a server that does, or upload it",
        )
    if resp.status != 206:
        raise UploadError(422, f"{url.text} answered HTTP {resp.status} {resp.reason}; check the URL")
    m = re.fullmatch(r"bytes\s+\d+-\d+/(\d+)", resp.getheader("Content-Range") or "")
    if not m:
        raise UploadError(422, f"{url.text} does not say its size (Content-Range); it cannot be read by range")
    return None, int(m.group(1))


def configure_gdal_http(timeout_s: float) -> None:
    """Bound GDAL's HTTP reads in this process (environment: both GDAL builds, every thread, read them).

    A request gives up after ``timeout_s`` (connecting after ``timeout_s``
    too) or when it stalls below 1 kB/s for that long; no retries; no
    directory listing on open (GDAL would otherwise probe the folder); no cache across opens.
    """
    seconds = str(max(1, int(round(timeout_s))))
    os.environ.update(
        GDAL_HTTP_TIMEOUT=seconds,
        GDAL_HTTP_CONNECTTIMEOUT=seconds,
        GDAL_HTTP_LOW_SPEED_TIME=seconds,
        GDAL_HTTP_LOW_SPEED_LIMIT="1024",
        GDAL_HTTP_MAX_RETRY="0",
        GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
        # GDAL keeps what it fetched for later opens of the same URL: a raster replaced at its URL
        # would be detected from the old bytes. Every job reads the URL afresh instead.
        CPL_VSIL_CURL_NON_CACHED="/vsicurl/",
    )
