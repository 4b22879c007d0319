"""The guards every request body passes before anything parses it: a size limit (413), and for JSON
bodies UTF-8 and a nesting-depth limit (400). Parsing a body of unbounded size or depth is where a
hostile request costs memory, or a RecursionError, before validation could reject it."""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import field_error

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _byte, _step in ((b"[", 1), (b"{", 1), (b"]", -1), (b"}", -1)):
    _DEPTH_STEP[_byte[0]] = _step


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest, without parsing it: the brackets
    outside strings, counted. Linear time and no recursion, whatever the input."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def is_json(headers: Headers) -> bool:
    """Whether FastAPI would parse this body as JSON: no content type, or ``application/json``
    or ``application/*+json`` (its own rule)."""
    content_type = headers.get("content-type")
    if not content_type:
        return True
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class BodyLimits:
    """ASGI middleware: reads the body (counting bytes, also for chunked bodies without a
    Content-Length), answers 413 past ``max_body_bytes`` and 400 for a JSON body that is not UTF-8
    or nests deeper than ``max_json_depth``; otherwise hands the app the body it read."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large()(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        if body and is_json(headers) and (problem := self._json_problem(bytes(body))):
            await _invalid_json(*problem)(scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self) -> JSONResponse:
        detail = f"The body is larger than this server's limit of {self.max_body_bytes} bytes (OPTIMLAB_MAX_BODY_BYTES)"
        return JSONResponse({"error": "payload_too_large", "detail": detail}, status_code=413)

    def _json_problem(self, body: bytes) -> tuple[str, str] | None:
        """(message, error type) when the JSON body must not reach the parser."""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"JSON must be UTF-8: invalid byte at position {exc.start}", "json_invalid"
        depth = json_depth(body)
        if depth > self.max_json_depth:
            limit = f"this server accepts {self.max_json_depth} (OPTIMLAB_MAX_JSON_DEPTH)"
            return f"JSON nested {depth} levels deep; {limit}", "json_too_deep"
        return None


def _invalid_json(message: str, type_: str) -> JSONResponse:
    """The 400 of a body that is not JSON this server parses, with the body as the field."""
    detail = [field_error(("body",), message, type_, field="body")]
    return JSONResponse({"error": "invalid_json", "detail": detail}, status_code=400)


def invalid_json_detail(error: dict[str, Any]) -> list[dict[str, Any]]:
    """FastAPI's ``json_invalid`` validation error as the 400's detail: the body is the field, the
    message says where the parser stopped."""
    position = next((part for part in error.get("loc", ())[1:] if isinstance(part, int)), None)
    reason = (error.get("ctx") or {}).get("error", "not valid JSON")
    where = f" at position {position}" if position is not None else ""
    return [field_error(("body",), f"Invalid JSON{where}: {reason}", "json_invalid", field="body")]


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that returns the body already read, then waits on the client as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
