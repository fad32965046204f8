"""A QGIS network reply read once, the same way for every HTTP caller of the plugin.

The web-tile reader (:func:`..qgis_io.workers.http_get`) and the server client
(:class:`.remote.ServerClient`) both turn a :class:`QgsNetworkReplyContent`
into a status, a body, Qt's error and the ``Retry-After`` header; they differ
only in what they do with it (retry, or one line for the user). Qt only: the
server client must load in a QGIS whose Python lacks the engine's packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from qgis.PyQt.QtCore import QByteArray
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest


@dataclass(frozen=True)
class ReplyParts:
    """What a reply says: ``status`` None when no HTTP answer came (refused, timed out, DNS...)."""

    status: Optional[int]
    body: bytes
    error: str  # Qt's description of the failure (a 4xx/5xx is one for Qt); "" when there is none
    retry_after: str  # the Retry-After header as sent ("" when absent)

    @property
    def retry_after_s(self) -> Optional[float]:
        """Retry-After in seconds when the server sent a number of seconds (not an HTTP date)."""
        return float(self.retry_after) if self.retry_after.isdigit() else None

    @property
    def succeeded(self) -> bool:
        """A 2xx answer without a Qt error."""
        return not self.error and self.status is not None and 200 <= self.status < 300


def read_reply(reply: Any) -> ReplyParts:
    """The parts of ``reply`` (a ``QgsNetworkReplyContent``, as the blocking calls return)."""
    status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute)
    # Without an error Qt's errorString() says "Unknown error": keep it only for a real error
    error = reply.errorString() if reply.error() != QNetworkReply.NoError else ""
    raw = bytes(reply.rawHeader(QByteArray(b"Retry-After")) or b"")
    return ReplyParts(
        int(status) if status else None,
        bytes(reply.content()),
        error,
        raw.decode("latin-1").strip(),
    )
