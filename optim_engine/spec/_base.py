"""What every part of the spec shares: the strict base model, the annotated number types, and
the helpers that read a union variant's registry keys."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from optim_engine.spec.errors import spec_error


def variant_names(variant: type[BaseModel]) -> tuple[str, ...]:
    """The registry keys a union variant answers to (the values of its ``name`` Literal)."""
    annotation: Any = variant.model_fields["name"].annotation
    return tuple(str(name) for name in typing.get_args(annotation))


class StrictModel(BaseModel):
    """No unknown keys, no silent coercion of strings to numbers or booleans, no NaN or infinity
    in a float field (``allow_inf_nan``): a bound such as ``le=1e4`` lets NaN fail with a
    misleading message, and inf passes ``gt=0``. A field where inf means something says so
    (``Unbounded``)."""

    # inf is a legitimate default (Prodigy's growth_rate); keep it through JSON as Infinity, not null.
    model_config = ConfigDict(extra="forbid", strict=True, ser_json_inf_nan="constants", allow_inf_nan=False)


def as_tuple(value: Any) -> Any:
    """JSON and YAML have no tuples; accept a list where torch takes a tuple."""
    return tuple(value) if isinstance(value, list) else value


def as_list(value: Any) -> Any:
    """One scheduler may be given bare; it is stored as a chain of one."""
    return [value] if isinstance(value, dict) else value


def reject_known(rejected: Mapping[str, str], kind: str) -> Any:
    """A before-validator that turns a known but unusable ``name`` into an error giving the reason.

    Without it such a name fails the discriminator with a bare list of the expected tags.
    ``rejected`` is read at validation time, so a mapping filled later (failed plugins) counts.
    """

    def check(value: Any) -> Any:
        name = value.get("name") if isinstance(value, dict) else None
        if isinstance(name, str) and name in rejected:  # a non-string name is the discriminator's to reject
            raise spec_error(f"{kind} {value['name']!r} is not supported: {rejected[value['name']]}")
        return value

    return BeforeValidator(check)


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Betas = Annotated[tuple[Beta, Beta], BeforeValidator(as_tuple)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]


def _not_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"must be a number, not {value!r}")
    return value


Unbounded = Annotated[float, Field(gt=0.0, allow_inf_nan=True), BeforeValidator(_not_nan)]
"""A positive float where inf is a value, meaning no bound (Prodigy's ``growth_rate``); never NaN."""
LearningRate = Annotated[float, Field(gt=0.0, le=1e4, description="Initial learning rate.")]
Implementation = Annotated[
    bool | None,
    Field(description="None lets the engine pick the fastest implementation for the device."),
]
Width = Annotated[int, Field(ge=1, le=65_536)]
