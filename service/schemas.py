"""Response bodies every domain shares: the error body and the error responses of /v1 routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorOut(BaseModel):
    error: str
    detail: Any


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "Missing or wrong API key",
        404: "Unknown job or sweep",
        409: "Illegal state transition or idempotency-key reuse",
        422: "Invalid request; `detail` lists each field",
        503: "Database unavailable",
    }.items()
}
"""The errors any /v1 route may answer, for the OpenAPI document."""
