"""Spec errors with structured locations: a rule broken at a field carries the field as data, so
no consumer parses a ``"field: message"`` string; and pydantic's locations as the JSON paths a
user writes (``optimizer.lr``, never the union tag pydantic inserts: ``optimizer.sgd.lr``), with
"did you mean" for a misspelt name or field."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

FieldProblem = tuple[tuple[str, ...], str]
"""A problem with one field of a spec: its location (``("dataset", "params", "path")``) and a message."""

SPEC_ERROR = "spec_field"
"""The pydantic error type of the rules the spec states itself (cross-field rules, rejected names)."""

UNKNOWN: Any = typing.Any
"""A root whose type is not known (``error_details``): locations are kept as pydantic gives them."""


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


def error_details(errors: Iterable[Any], root: Any = None) -> list[dict[str, Any]]:
    """Pydantic errors (``ValidationError.errors()``) as ``{"loc": [...], "msg": ..., "type": ...}``.

    ``loc`` is the JSON path inside ``root``, the type that was validated (default ``JobSpec``;
    ``UNKNOWN`` keeps pydantic's locations): read against the type, not the input, so a tag is
    told from a key even where they are spelt alike. A spec error's own location is appended
    (and not repeated in ``msg``); an unknown name or field gets "did you mean", from the union's
    variants and the model's fields as they are now, so plugins count.
    """
    if root is None:
        from optim_engine.spec.job import JobSpec  # here: job.py imports this module

        root = JobSpec
    detail = []
    for error in errors:
        where = _locate(error.get("loc", ()), root)
        loc: list[str] = list(where.path)
        msg = str(error.get("msg", "")).removeprefix("Value error, ")
        context = error.get("ctx") or {}
        kind = str(error.get("type", "invalid"))
        if kind == SPEC_ERROR:
            loc += [str(part) for part in context.get("loc", ())]
            msg = str(context.get("message", msg))
        elif kind in ("union_tag_invalid", "union_tag_not_found") and isinstance(error.get("input"), Mapping):
            discriminator = str(context.get("discriminator", "'name'")).strip("'\"")
            msg = _unknown_name(kind, error["input"].get(discriminator), where)
            loc.append(discriminator)
        elif kind == "extra_forbidden" and where.model is not None and loc:
            msg = _unknown_field(loc[-1], where.model)
        else:
            msg = _reworded(kind, error.get("input"), context, msg)
        detail.append({"loc": loc, "msg": msg, "type": kind})
    return detail


def _reworded(kind: str, given: Any, context: Mapping[str, Any], msg: str) -> str:
    """Pydantic's message where it misleads: NaN or inf in a float field, and a string's length,
    which a constrained string type after a validator counts in "items"."""
    if kind == "finite_number":
        return f"must be a finite number, not {given!r}"
    if kind in ("too_long", "too_short") and isinstance(given, str):
        bound = "at most" if kind == "too_long" else "at least"
        limit = context.get("max_length" if kind == "too_long" else "min_length")
        return f"should have {bound} {limit} characters, not {len(given)}"
    return msg


class _Location(typing.NamedTuple):
    path: tuple[str, ...]
    annotation: Any
    """The type at the end of the path (a union, for a tag error at it)."""
    model: type[BaseModel] | None
    """The model whose field the last part names (or fails to name), if it is a model's."""


def _locate(loc: Sequence[Any], root: Any) -> _Location:
    """Walk ``loc`` down the type ``root``: a part that picks a union member (a tag, or a smart
    union's label) is pydantic's, not the user's, and is dropped; once the type is unknown (a
    free-form dict, ``Any``, an unlabelled member) the rest is kept as it is."""
    annotation, model, path = root, None, []
    for part in loc:
        annotation, model, step = _step(annotation, part)
        path += [str(part)] if step else []
    return _Location(tuple(path), annotation, model)


def _step(annotation: Any, part: Any) -> tuple[Any, type[BaseModel] | None, bool]:
    """One part: the type it leads to, the model it is a field of, and whether it is in the JSON."""
    node = _bare(annotation)
    while (members := _members(node)) is not None and len(members) == 1:  # X | None: no label
        node = _bare(members[0])
    if members is not None:
        return _variant(members, part), None, False
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation, node, True
        return UNKNOWN, node, True
    origin, args = typing.get_origin(node), typing.get_args(node)
    if origin is tuple and args and isinstance(part, int):
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(part, len(args) - 1)]
        return item, None, True
    if origin in (list, set, frozenset) or (isinstance(origin, type) and issubclass(origin, Sequence)):
        return (args[0] if args else UNKNOWN), None, True
    if origin is dict or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return (args[1] if len(args) == 2 else UNKNOWN), None, True
    return UNKNOWN, None, True


def _bare(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any] | None:
    """A union's members other than None (None: not a union)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for member in typing.get_args(annotation) if member is not type(None)]
    return None


def _variant(members: Sequence[Any], label: Any) -> Any:
    """The member a union error's label names: by its ``name`` tag or its class name."""
    for member in members:
        model = _bare(member)
        if isinstance(model, type) and issubclass(model, BaseModel) and label in (*_tags(model), model.__name__):
            return member
    return UNKNOWN


def _tags(model: type[BaseModel]) -> tuple[str, ...]:
    field = model.model_fields.get("name")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return ()
    return tuple(str(tag) for tag in typing.get_args(field.annotation))


def _unknown_name(kind: str, given: Any, where: _Location) -> str:
    """``unknown optimizer 'adamww'; did you mean 'adamw'?`` and the names the union takes."""
    members = _members(_bare(where.annotation)) or []
    models = [model for model in map(_bare, members) if isinstance(model, type) and issubclass(model, BaseModel)]
    names = sorted({tag for model in models for tag in _tags(model)})
    noun = next((part for part in reversed(where.path) if not part.isdigit()), "value")
    choices = f"one of {', '.join(map(repr, names))}" if names else "a name"
    if kind == "union_tag_not_found" or given is None:
        return f"Field required: the {noun}'s name, {choices}"
    guess = did_you_mean(given, names) if isinstance(given, str) else ""
    return f"unknown {noun} {given!r}{guess} ({choices})"


def _unknown_field(field: str, model: type[BaseModel]) -> str:
    """``unknown field 'learning_rate'; did you mean 'lr'?`` over the model's fields, or a field
    of its ``params`` (``momentum`` beside ``lr`` belongs in ``params``)."""
    names = [info.alias or name for name, info in model.model_fields.items()]
    params = _bare(model.model_fields["params"].annotation) if "params" in model.model_fields else None
    if isinstance(params, type) and issubclass(params, BaseModel) and field in params.model_fields:
        return f"unknown field {field!r}; did you mean 'params.{field}'?"
    guess = did_you_mean(field, names)
    return f"unknown field {field!r}{guess}" if guess else f"unknown field {field!r}; fields: {', '.join(names)}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate (a near spelling, the initials of a
    snake_case word: ``learning_rate`` is ``lr``, or a longer name it starts: ``cosine``), or
    ``""`` when none is close."""
    names = sorted(candidates)
    initials = "".join(piece[:1] for piece in word.split("_")) if "_" in word else None
    close = (
        difflib.get_close_matches(word, names, n=1)
        or [name for name in names if name == initials]
        or [name for name in names if word and name.startswith(word)]
    )
    return f"; did you mean {close[0]!r}?" if close else ""
