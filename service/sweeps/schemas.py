"""Request and response bodies of /v1/sweeps: the search (grid, random, seeds) over a base spec,
sweeps with their counts, and the leaderboard."""

from __future__ import annotations

import copy
import datetime as dt
import math
import random
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    computed_field,
    field_validator,
    model_validator,
)

from optim_engine.results import METRIC_NAMES
from service.longpoll import sweep_token
from service.schemas import EXAMPLE_SPEC, INTEGRAL, JsonFloat, JsonInt, StorableJson, Text
from service.spec_codec import decode, encode

PATH = r"^[a-z_][a-z0-9_]*(\.([a-z_][a-z0-9_]*|[0-9]+))*$"
Path = Annotated[str, Field(pattern=PATH, description="Dotted spec path: optimizer.lr, scheduler.0.params.gamma")]


_COLUMN = "|".join(METRIC_NAMES)


def _distinct(columns: str) -> str:
    return ",".join(dict.fromkeys(name.strip() for name in columns.split(",") if name.strip()))


MetricColumns = Annotated[
    str,
    Field(
        pattern=rf"^ *(?:(?:{_COLUMN}) *(?:, *(?:{_COLUMN}) *)*)?$",
        max_length=1000,
        description=f"Comma-separated metric columns, each once: {', '.join(METRIC_NAMES)}.",
    ),
    AfterValidator(_distinct),
]
"""The ``columns`` of a sweep's bulk metrics: known names only (each a column of the query), a
bounded list, a repeated name once."""


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


class RandomSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: Annotated[StrictInt, Field(ge=1, le=100_000, description="Trials to sample."), INTEGRAL]
    seed: JsonInt = Field(default=0, description="Sampler seed: the same seed draws the same trials.")
    params: Annotated[dict[Path, Distribution], Field(min_length=1, json_schema_extra=ONLY_PATHS)]


ONLY_PATHS: dict[str, Any] = {"additionalProperties": False}
"""JSON Schema for a dict keyed by ``Path``: a key that does not match the pattern is invalid."""

Grid = Annotated[dict[Path, Annotated[list[Any], Field(min_length=1)]], Field(json_schema_extra=ONLY_PATHS)]
GridList = Annotated[list[Grid], Field(min_length=1)]


EXAMPLE: dict[str, Any] = {
    "name": "sgd lr",
    "base": EXAMPLE_SPEC,
    "grid": {"optimizer.lr": [0.01, 0.1]},
    "seeds": [0, 1],
}


class LrFrom(BaseModel):
    """Seed the sweep's learning rates from a finished LR range test: ``points`` log-spaced values
    from suggestion / factor to suggestion x factor become the grid's ``optimizer.lr``."""

    model_config = ConfigDict(extra="forbid")

    job_id: Annotated[StrictInt, Field(ge=1, le=2**31 - 1, description="The range test's job."), INTEGRAL]
    suggestion: Literal["valley", "steepest", "min_over_10"] = "valley"
    points: Annotated[StrictInt, Field(ge=1, le=50), INTEGRAL] = 5
    factor: Annotated[
        JsonFloat, Field(gt=1.0, le=1000.0, description="The grid spans suggestion/factor..x factor.")
    ] = 10.0

    def grid(self, suggested: float) -> list[float]:
        """The learning rates around ``suggested`` (6 significant digits)."""
        if self.points == 1:
            return [float(f"{suggested:.6g}")]
        low, high = math.log(suggested / self.factor), math.log(suggested * self.factor)
        steps = [low + (high - low) * i / (self.points - 1) for i in range(self.points)]
        return [float(f"{math.exp(step):.6g}") for step in steps]


class SweepCreate(BaseModel):
    """A base spec and a search over dotted spec paths; every configuration runs once per seed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    name: Annotated[Text, Field(max_length=200)] | None = None
    base: Annotated[dict[str, Any], StorableJson] = Field(description="A job spec; the search overrides its paths.")
    grid: Annotated[Grid | GridList | None, StorableJson] = Field(
        default=None, description="Path → values, all combinations; a list of grids is their union."
    )
    random: Annotated[RandomSearch | None, StorableJson] = None
    seeds: (
        Annotated[list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1), INTEGRAL]], Field(min_length=1, max_length=1000)]
        | None
    ) = Field(
        default=None,
        description="Repeat every configuration with each seed (sets spec.seed).",
        json_schema_extra={"uniqueItems": True},
    )
    tags: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/=-]{1,64}$")]], Field(max_length=32)] = Field(
        default_factory=list
    )
    lr_from: LrFrom | None = Field(
        default=None, description="Grid the learning rate around an LR range test's suggestion."
    )
    execution: Literal["auto", "packed", "separate"] = Field(
        default="auto",
        description=(
            "auto: jobs that can train together (same model, data, loss, batch size, epochs, device) run "
            "as packs of up to OPTIMLAB_PACK_MAX trials, the rest separately; packed: every job in a pack "
            "(a 422 says which cannot); separate: one task per job."
        ),
    )
    cache: StrictBool = Field(
        default=True,
        description=(
            "Serve each trial an identical earlier run of yours answers (same spec and seed, torch version, "
            "device kind and optimlab version, succeeded) from the result cache: created succeeded with "
            "cached_from, never trained or packed. false: train every trial."
        ),
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _some_grid(cls, grid: Any) -> Any:
        # Before the union: an empty list is one error naming grid, not one per union member.
        if isinstance(grid, list) and not grid:
            raise ValueError("an empty list of grids expands to no job; give at least one grid, or leave grid out")
        return grid

    @field_validator("base")
    @classmethod
    def _non_finite_names(cls, base: dict[str, Any]) -> dict[str, Any]:
        return dict(decode(base))

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    def grids(self) -> list[Grid]:
        if self.grid is None:
            return [{}]
        return self.grid if isinstance(self.grid, list) else [self.grid]

    def search_definition(self) -> dict[str, Any]:
        return dict(
            encode(
                self.model_dump(
                    mode="json",
                    by_alias=True,
                    exclude_none=True,
                    exclude={"name", "base", "tags", "execution", "cache"},
                )
            )
        )


class LeaderboardRow(BaseModel):
    rank: int
    config: dict[str, Any] = Field(description="The searched values this row's jobs share (seed excluded).")
    config_hash: str | None
    jobs: int
    n: int = Field(description="Succeeded jobs with a value: the statistics are over these.")
    mean: float | None
    std: float | None = Field(description="Sample standard deviation (n - 1).")
    ci95_low: float | None = Field(description="95% confidence interval of the mean, Student t with n - 1 df.")
    ci95_high: float | None
    min: float | None
    max: float | None
    diverged: int
    failed: int
    pending: int
    mean_wall_seconds: float | None


class Leaderboard(BaseModel):
    sweep_id: int
    metric: str
    mode: str
    which: str
    rows: list[LeaderboardRow]


class SweepOut(BaseModel):
    id: int
    owner: str = Field(description="The owner of the key that created it ('' : created with auth off).")
    name: str | None
    created_at: dt.datetime
    n_jobs: int
    counts: dict[str, int] = Field(description="Jobs per status.")
    cached: int = Field(description="Jobs served from the result cache instead of trained (counted as succeeded).")
    done: bool = Field(description="No job is queued or running.")
    best: LeaderboardRow | None = Field(description="The leaderboard's top configuration (val_loss, else train_loss).")
    template: dict[str, Any]
    search: dict[str, Any]
    execution: str = Field(description="auto, packed or separate (see POST /v1/sweeps).")

    @computed_field(  # type: ignore[prop-decorator]
        description=(
            "Changes whenever the counts (and so done) do; best only moves with them. Pass it as ?since= "
            "with ?wait_s= to GET /v1/sweeps/{id} to wait for the next change."
        )
    )
    @property
    def state_token(self) -> str:
        return sweep_token(self.counts)


class SweepPage(BaseModel):
    items: list[SweepOut]
    next_cursor: str | None
