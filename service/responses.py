"""Response bodies the routers render by hand: CSV tables, bodies validated by a strong ETag
(304 to a matching ``If-None-Match``), streamed bodies, and a bounded cache of encoded bodies."""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fastapi import Response
from fastapi.responses import StreamingResponse


def csv_text(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """CSV lines: null cells are empty, floats are written exactly (``repr``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    """A ``text/csv`` table (see ``csv_text``)."""
    return Response(csv_text(rows, header), media_type="text/csv")


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (RFC 9110: a list, ``*``, and the weak
    comparison a GET uses, so ``W/"x"`` matches ``"x"``)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def validated_response(content: bytes | Iterator[bytes] | None, *, media_type: str, etag: str | None) -> Response:
    """``content`` (bytes, or chunks to stream) with its ``etag``; ``None``: 304 Not Modified.

    ``private, no-cache``: a client may keep the body but asks again, with ``If-None-Match``,
    every time (the body is one owner's), and a shared cache keeps nothing.
    """
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"} if etag is not None else {}
    if content is None:
        return Response(status_code=304, headers=headers)
    if isinstance(content, bytes):
        return Response(content, media_type=media_type, headers=headers)
    return StreamingResponse(content, media_type=media_type, headers=headers)


class BodyCache:
    """Encoded bodies by key, least recently used dropped first, at most ``max_bytes`` in all.

    Thread-safe: sync routes run in a thread pool. A body larger than the bound is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, key: str, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._bodies.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._bodies[key] = body
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, dropped = self._bodies.popitem(last=False)
                self._bytes -= len(dropped)
