"""What every kind of sweep searches over: dotted spec paths and the distributions a path's values
are drawn from (random search and the adaptive strategies' spaces).

Pydantic only, no web code: ``service.search`` builds its spaces on these, and the client reaches
them through it (``client.study``) without importing the API."""

from __future__ import annotations

import copy
import math
import random
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas import JsonFloat, JsonInt

PATH = r"^[a-z_][a-z0-9_]*(\.([a-z_][a-z0-9_]*|[0-9]+))*$"
Path = Annotated[str, Field(pattern=PATH, description="Dotted spec path: optimizer.lr, scheduler.0.params.gamma")]

ONLY_PATHS: dict[str, Any] = {"additionalProperties": False}
"""JSON Schema for a dict keyed by ``Path``: a key that does not match the pattern is invalid."""


def _exactly_one_kind(schema: dict[str, Any]) -> None:
    """The schema of a distribution states what ``_one_kind`` checks: one key, not null."""
    for name, field in schema["properties"].items():
        schema["properties"][name] = {k: v for k, v in field.items() if k != "anyOf"} | field["anyOf"][0]
    schema["minProperties"] = schema["maxProperties"] = 1


class Distribution(BaseModel):
    """One of: choice (a list), uniform [low, high], log_uniform [low, high] (low > 0), int [low, high]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra=_exactly_one_kind)

    choice: Annotated[list[Any], Field(min_length=1)] | None = None
    uniform: tuple[JsonFloat, JsonFloat] | None = None
    log_uniform: tuple[JsonFloat, JsonFloat] | None = None
    integer: tuple[JsonInt, JsonInt] | None = Field(default=None, alias="int", description="Inclusive integer range.")

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = sorted(self.model_fields_set)
        if len(given) != 1 or getattr(self, given[0]) is None:
            names = [type(self).model_fields[name].alias or name for name in given]
            raise ValueError(f"give exactly one of choice, uniform, log_uniform, int, not null (got {names or 'none'})")
        low, high = self.uniform or self.log_uniform or self.integer or (0, 1)
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"bounds must be finite with low <= high, got [{low}, {high}]")
        if self.log_uniform is not None and low <= 0:
            raise ValueError(f"log_uniform needs low > 0, got {low}")
        return self

    def sample(self, rng: random.Random) -> Any:
        if self.choice is not None:
            return copy.deepcopy(rng.choice(self.choice))
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.log_uniform is not None:
            low, high = self.log_uniform
            return min(max(math.exp(rng.uniform(math.log(low), math.log(high))), low), high)
        assert self.integer is not None
        return rng.randint(*self.integer)
