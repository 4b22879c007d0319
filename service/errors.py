"""Domain errors, each with the HTTP status the API maps it to in one handler (``service.app``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optim_engine.spec.errors import UNKNOWN, error_details


class OptimlabError(Exception):
    """Base of the service's domain errors; ``code`` and ``status_code`` drive the HTTP response,
    rendered as ``{"error": code, "detail": detail}``."""

    code = "error"
    status_code = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail


class JobNotFound(OptimlabError):
    code = "job_not_found"
    status_code = 404

    def __init__(self, job_id: int) -> None:
        super().__init__(f"No job with id {job_id}")


class SweepNotFound(OptimlabError):
    code = "sweep_not_found"
    status_code = 404

    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"No sweep with id {sweep_id}")


class Unauthorized(OptimlabError):
    code = "unauthorized"
    status_code = 401


class IllegalTransition(OptimlabError):
    code = "illegal_transition"
    status_code = 409


class IdempotencyConflict(OptimlabError):
    code = "idempotency_conflict"
    status_code = 409


class InvalidRequest(OptimlabError):
    """A request that parses but asks for something that cannot be served (bad cursor, sort key)."""

    code = "invalid_request"
    status_code = 422


class InvalidFields(InvalidRequest):
    """A request whose fields this server rejects (a resource cap, something the host lacks, an
    invalid sweep combination): ``detail`` lists each as ``field_error`` builds it, like a
    payload validation error."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__(list(errors))


def printable(text: str) -> str:
    """``text`` with lone surrogates as escapes (``\\ud800``): an error may name a key that holds
    one, and a response must encode as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def field_error(loc: Sequence[str], msg: str, type_: str, *, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """One entry of a 422's ``detail``: ``loc`` (from "body"), ``field`` (by default the dotted
    location without "body"), any ``extra`` keys, ``msg`` and ``type``; printable whatever keys
    the request held."""
    loc = [printable(str(part)) for part in loc]
    msg = printable(msg)
    field = ".".join(part for part in loc if part != "body") if field is None else printable(field)
    return {"loc": loc, "field": field, **extra, "msg": msg, "type": type_}


def validation_detail(errors: Sequence[Any], body_type: Any = UNKNOWN) -> list[dict[str, Any]]:
    """A request's pydantic errors as 422 detail (``field_error`` each): a body error's location
    is the JSON path inside ``body_type``, the route's body model (``spec.optimizer.lr``, never
    the union tag pydantic inserts), with "did you mean" for an unknown name or field; a query,
    path or header error keeps its location."""
    detail = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if loc[:1] == ("body",):
            (entry,) = error_details([{**error, "loc": loc[1:]}], body_type)
            entry["loc"] = ["body", *entry["loc"]]
        else:
            (entry,) = error_details([error], UNKNOWN)
        detail.append(field_error(entry["loc"], entry["msg"], entry["type"]))
    return detail
