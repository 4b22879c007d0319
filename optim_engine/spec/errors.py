"""Spec errors with structured locations: a rule broken at a field carries the field as data, so
no consumer parses a ``"field: message"`` string."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic_core import PydanticCustomError

FieldProblem = tuple[tuple[str, ...], str]
"""A problem with one field of a spec: its location (``("dataset", "params", "path")``) and a message."""

SPEC_ERROR = "spec_field"
"""The pydantic error type of the rules the spec states itself (cross-field rules, rejected names)."""


def spec_error(message: str, loc: tuple[str, ...] = ()) -> PydanticCustomError:
    """An error for a validator to raise, located at ``loc`` relative to where pydantic reports it.

    A model validator on ``JobSpec`` is reported at the spec itself, so it passes the full
    location inside the spec (``("model", "params", "in_features")``); a field validator is
    reported at its field and passes none. The context holds ``loc`` and ``message`` for
    ``error_details``; the rendered text (``str(ValidationError)``) names the field for people.
    """
    if loc:
        context = {"loc": loc, "field": ".".join(loc), "message": message}
        return PydanticCustomError(SPEC_ERROR, "{field}: {message}", context)
    return PydanticCustomError(SPEC_ERROR, "{message}", {"loc": loc, "message": message})


def problem_error(problem: FieldProblem) -> PydanticCustomError:
    """``spec_error`` for a ``(loc, message)`` problem."""
    loc, message = problem
    return spec_error(message, loc)


def error_details(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic errors (``ValidationError.errors()``) as ``{"loc": [...], "msg": ..., "type": ...}``,
    with a spec error's own location appended to ``loc`` (and not repeated in ``msg``)."""
    detail = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", "")).removeprefix("Value error, ")
        context = error.get("ctx") or {}
        if error.get("type") == SPEC_ERROR:
            loc += [str(part) for part in context.get("loc", ())]
            msg = str(context.get("message", msg))
        detail.append({"loc": loc, "msg": msg, "type": str(error.get("type", "invalid"))})
    return detail
