"""What every domain shares at the HTTP boundary: the id and text types the API accepts (so that
nothing a database cannot store or compare gets past validation), the error body, and the error
responses each operation documents."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictFloat, StrictInt

from optim_engine.spec.errors import spec_error
from service.errors import printable

MAX_ID = 2**31 - 1
"""The largest id: PostgreSQL's ``integer`` (int4) primary keys; SQLite's are 64-bit."""

Id = Annotated[int, Field(ge=1, le=MAX_ID, description=f"An id: 1 to {MAX_ID}.")]
"""Every id the API reads (path and query parameters): an id out of this range names no row, and
PostgreSQL would fail the query comparing it with an int4 column, so it is a 422 up front."""


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)
"""After a ``StrictInt`` and its bounds (``Annotated[StrictInt, Field(ge=0), INTEGRAL]``; before
them, pydantic's JSON schema loses the bounds): an integral float is an integer too."""

JsonInt = Annotated[StrictInt, INTEGRAL]
"""An integer as JSON Schema means one: 3 or 3.0, never ``true`` or ``"3"`` (which lax ints take)."""

JsonFloat = StrictFloat
"""A number as JSON Schema means one: 3 or 0.5, never ``true`` or ``"0.5"`` (which lax floats take)."""

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
UNSTORABLE = "NUL characters and lone surrogates cannot be stored"


def _storable_text(text: str) -> str:
    if _UNSTORABLE.search(text):
        raise ValueError(f"{UNSTORABLE}: {text!r}")
    return text


Text = Annotated[str, AfterValidator(_storable_text), Field(json_schema_extra={"pattern": r"^[^\x00]*$"})]
"""A string the API stores or filters on: PostgreSQL text cannot hold NUL, and no UTF-8 column a
lone surrogate. The schema says so with a pattern (JSON Schema cannot name surrogates)."""


def unstorable_strings(value: Any, loc: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The location of every key or string inside a JSON value that a database cannot store (NUL,
    lone surrogates): JSONB rejects them, and they would be copied into stored specs."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, loc)]
    while stack:  # iterative: the depth of a body is bounded (max_json_depth), but not here
        node, where = stack.pop()
        if isinstance(node, str):
            if _UNSTORABLE.search(node):
                yield where
        elif isinstance(node, dict):
            for key, item in node.items():
                name = printable(str(key))  # the location is rendered into the error
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    yield (*where, name)
                stack.append((item, (*where, name)))
        elif isinstance(node, list | tuple):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(node))


def _storable(value: Any) -> Any:
    where = next(unstorable_strings(value), None)
    if where is not None:
        raise spec_error(UNSTORABLE, where)
    return value


StorableJson = BeforeValidator(_storable)
"""Metadata for a free-form JSON field (a spec, a sweep's base or search values): a 422 at the first
string in it that cannot be stored, located inside the field (``spec.dataset.params.path``)."""


def json_integers(value: Any) -> Any:
    """Integral floats as ints, recursively (``JsonInt`` for a whole spec): the spec validates
    strictly, and a strict float field takes an int, so nothing else changes."""
    if isinstance(value, float):
        return _integral(value)
    if isinstance(value, dict):
        return {key: json_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_integers(item) for item in value]
    return value


EXAMPLE_SPEC: dict[str, Any] = {
    "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
    "dataset": {"name": "synthetic_regression", "params": {"n_samples": 512, "n_features": 10}},
    "loss": "mse",
    "optimizer": {"name": "sgd", "lr": 0.01},
    "epochs": 3,
    "batch_size": 32,
    "seed": 0,
    "device": "cpu",
}
"""A spec any server accepts (a linear regression on synthetic data): the documented example of a
job's and a sweep's body, which schemathesis's examples phase also sends."""


class ErrorOut(BaseModel):
    error: str = Field(description="A stable code: invalid_request, job_not_found, payload_too_large, ...")
    detail: Any = Field(description="A message, or for 400 and 422 a list of {loc, field, msg, type}.")


_ERRORS = {
    400: "Unparseable body (`invalid_json`): malformed, not UTF-8, or nested deeper than the server allows",
    401: "Missing or wrong API key",
    403: "The key may not do this",
    404: "Unknown job, sweep or key",
    409: "Illegal state transition or idempotency-key reuse",
    413: "Body larger than the server allows (`payload_too_large`)",
    422: "Invalid request; `detail` lists each field",
    503: "Database unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each an ``ErrorOut``."""
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in codes}


def replayed(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a create retried with its Idempotency-Key, beside the 201 of the first request."""
    return {200: {"model": model, "description": f"A retry: the {what} this Idempotency-Key's first request created"}}


APP_ERROR_RESPONSES = error_responses(400, 413)
"""What any route may answer before it runs: the body guards (``service.limits``)."""

ERROR_RESPONSES = error_responses(401, 422, 503)
"""What any /v1 route may answer: no key, an invalid parameter, the database down. Routes add
their own 404 and 409 (``error_responses``)."""
