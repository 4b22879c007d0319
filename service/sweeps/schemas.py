"""Request and response bodies of /v1/sweeps: the search (grid, random, seeds) over a base spec,
sweeps with their counts, and the leaderboard."""

from __future__ import annotations

import datetime as dt
import math
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
)

from optim_engine.results import METRIC_NAMES, SUMMARY_METRICS
from service.longpoll import sweep_token
from service.schemas import EXAMPLE_SPEC, INTEGRAL, JsonFloat, JsonInt, StorableJson, Text
from service.search.pruners import PrunerConfig
from service.search.space import STRATEGIES, SearchParam, SearchSpace, missing_packages
from service.spec_codec import decode, encode
from service.sweeps.distributions import ONLY_PATHS, Distribution, Path

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


class RandomSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: Annotated[StrictInt, Field(ge=1, le=100_000, description="Trials to sample."), INTEGRAL]
    seed: JsonInt = Field(default=0, description="Sampler seed: the same seed draws the same trials.")
    params: Annotated[dict[Path, Distribution], Field(min_length=1, json_schema_extra=ONLY_PATHS)]


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


MODELLED = ("tpe", "cmaes", "gp", "qmc")
"""The strategies that model earlier results: they search a ``space`` only (``random`` may too)."""
ADAPTIVE_ONLY = ("budget", "parallelism", "objective", "sampler_seed", "pruner")
"""The fields only an adaptive search reads: given without a space, they are a 422, never ignored."""
DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {
    m.name: "minimize" if m.best == "min" else "maximize" for m in SUMMARY_METRICS
}
"""Each summary metric's better direction: an objective's default."""


class Objective(BaseModel):
    """What an adaptive search optimizes: a summary metric of each job (its final epoch's value,
    or its best epoch's), averaged over a trial's seeds."""

    model_config = ConfigDict(extra="forbid")

    metric: Annotated[str, Field(pattern=f"^({'|'.join(DIRECTIONS)})$")] = Field(
        default="val_loss", description=f"One of {', '.join(DIRECTIONS)}."
    )
    which: Literal["final", "best"] = Field(default="final", description="The final epoch's value or the best epoch's.")
    direction: Literal["minimize", "maximize"] | None = Field(
        default=None, description="Default: the metric's better direction (minimize losses, maximize accuracy)."
    )

    def resolved(self) -> dict[str, str]:
        """The objective as stored and shown: every field set."""
        return {"metric": self.metric, "which": self.which, "direction": self.direction or DIRECTIONS[self.metric]}


def dump_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    """A parsed space in its JSON form (what ``parse_space`` reads back): each parameter's kind,
    and its condition when it has one."""
    return {path: param.model_dump(mode="json", by_alias=True, exclude_defaults=True) for path, param in space.items()}


SearchProblem = tuple[str, str, str]
"""A rule an adaptive search's fields break: (field, message, error type)."""


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
    strategy: Literal["grid", "random", "tpe", "cmaes", "gp", "qmc"] | None = Field(
        default=None,
        description=(
            "grid or random (or left out): every job is created at once from grid / random. tpe, cmaes, gp, qmc, "
            "or random with a space: an adaptive search, whose controller asks Optuna for `budget` configurations, "
            "`parallelism` at a time, each told the results of those before it."
        ),
    )
    space: Annotated[SearchSpace | None, StorableJson] = Field(
        default=None,
        description=(
            "An adaptive search's space: path → one distribution (choice, uniform, log_uniform, int), with an "
            'optional condition: {"optimizer.params.momentum": {"uniform": [0, 0.99], "when": '
            '{"optimizer.name": ["sgd"]}}}.'
        ),
    )
    budget: Annotated[StrictInt, Field(ge=1, le=10_000), INTEGRAL] | None = Field(
        default=None, description="An adaptive search's trials in all (configurations; each runs once per seed)."
    )
    parallelism: Annotated[StrictInt, Field(ge=1, le=256), INTEGRAL] = Field(
        default=4, description="An adaptive search's trials in flight at once."
    )
    objective: Objective = Field(
        default_factory=Objective,
        description="What an adaptive search optimizes, averaged over each trial's seeds (a diverged seed is the worst).",
    )
    sampler_seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), INTEGRAL] = Field(
        default=0, description="Seeds an adaptive search's sampler: the same seed and results ask the same trials."
    )
    pruner: PrunerConfig | None = Field(
        default=None,
        description=(
            "Stop an adaptive search's losing trials early, after an epoch: median, percentile, successive_halving "
            "(asha), hyperband, or wilcoxon (a trial's seeds paired with the best trial's); a name, or an object "
            'with the name and Optuna\'s parameters: {"name": "asha", "reduction_factor": 3}. A stopped trial\'s '
            "jobs end pruned, with their epochs."
        ),
    )

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, pruner: Any) -> Any:
        return {"name": pruner} if isinstance(pruner, str) else pruner

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

    @property
    def adaptive(self) -> bool:
        """Whether a controller creates the trials as results come in (else all jobs at once)."""
        return self.strategy in MODELLED or (self.strategy == "random" and self.space is not None)

    def search_definition(self) -> dict[str, Any]:
        """The search as stored (and compared for an idempotent retry): an adaptive one with its
        objective resolved; a grid or random one without the adaptive fields' defaults."""
        exclude = {"name", "base", "tags", "execution", "cache", "space", "objective", "pruner"}
        if not self.adaptive:
            exclude |= set(ADAPTIVE_ONLY)
        definition = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)
        if self.adaptive:
            assert self.space is not None
            definition |= {"space": dump_space(self.space), "objective": self.objective.resolved()}
            if self.pruner is not None:
                definition["pruner"] = self.pruner.model_dump(exclude_none=True)
        return dict(encode(definition))

    def search_problems(self) -> list[SearchProblem]:
        """The rules between the search fields that no JSON Schema states: a space goes with an
        adaptive strategy and a budget and without grid, random or lr_from; the strategy must run
        on this host, and CMA-ES only models fixed numeric spaces."""
        if self.space is None:
            return self._without_space()
        problems: list[SearchProblem] = []
        if not self.adaptive:
            msg = "a space is searched by an adaptive strategy: set strategy to tpe, cmaes, gp, qmc or random"
            problems.append(("strategy", msg, "search_conflict"))
        if self.budget is None:
            problems.append(("budget", "an adaptive search needs a budget: how many trials in all", "search_conflict"))
        for name in ("grid", "random", "lr_from"):
            if getattr(self, name) is not None:
                msg = f"{name} does not combine with a space: search its paths in the space instead"
                problems.append((name, msg, "search_conflict"))
        if self.strategy in STRATEGIES and (missing := missing_packages(self.strategy)):
            msg = f"strategy {self.strategy} needs {', '.join(missing)}, not installed on this server"
            problems.append(("strategy", msg, "unavailable_on_host"))
        if self.pruner is not None and self.pruner.name == "wilcoxon":
            n, threshold = len(self.seeds or [0]), self.pruner.p_threshold or 0.1
            if 0.5**n >= threshold:  # the smallest one-sided p-value of n paired differences
                msg = f"wilcoxon pairs each trial's seeds; with {n} the smallest p-value is {0.5**n:g}, never under p_threshold {threshold:g}: give more seeds"
                problems.append(("pruner", msg, "search_conflict"))
        if self.strategy == "cmaes":
            for path, param in self.space.items():
                if param.choice is not None or param.when:
                    why = "a choice" if param.choice is not None else "searched under a condition"
                    msg = f"cmaes models a fixed numeric space, and {path} is {why}; use tpe, gp, qmc or random"
                    problems.append(("strategy", msg, "strategy_space"))
                    break
        return problems

    def _without_space(self) -> list[SearchProblem]:
        """The rules of a sweep without a space: a modelling strategy needs one, the adaptive
        fields mean nothing, strategy grid samples nothing and strategy random needs random."""
        problems: list[SearchProblem] = []
        if self.strategy in MODELLED:
            problems.append(
                ("space", f"strategy {self.strategy} searches a space: give space and budget", "search_conflict")
            )
        elif self.strategy == "grid" and self.random is not None:
            msg = "strategy grid expands the grid only; leave strategy out (or set it to random) to sample"
            problems.append(("random", msg, "search_conflict"))
        elif self.strategy == "random" and self.random is None:
            msg = "strategy random needs random (n, params), or a space and a budget for a controller-driven search"
            problems.append(("random", msg, "search_conflict"))
        for name in ADAPTIVE_ONLY:
            if name in self.model_fields_set:
                msg = f"{name} belongs to an adaptive search: give a space with strategy tpe, cmaes, gp, qmc or random"
                problems.append((name, msg, "search_conflict"))
        return problems


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
    pruned: int = Field(description="Jobs an adaptive sweep's pruner stopped: tried, not failed; not in n.")
    pending: int
    mean_wall_seconds: float | None


class Leaderboard(BaseModel):
    sweep_id: int
    metric: str
    mode: str
    which: str
    rows: list[LeaderboardRow]


class TrialOut(BaseModel):
    """One trial of an adaptive sweep: a configuration, trained once per seed."""

    number: int = Field(description="0, 1, ... in the order the controller asked them (Optuna's numbers).")
    params: dict[str, Any] = Field(
        description="The searched paths' values (a parameter its condition left out is absent)."
    )
    state: Literal["running", "complete", "pruned", "failed"] = Field(
        description=(
            "running while a job is queued or running; complete when every job succeeded or diverged; pruned when the "
            "sweep's pruner stopped it (its jobs ended pruned, with their epochs); failed when "
            "one failed or was cancelled, a succeeded one has no value of the metric, or the configuration is no "
            "valid spec (no jobs, see error)."
        )
    )
    value: float | Literal["Infinity", "-Infinity"] | None = Field(
        description=(
            "Complete: the objective's mean over the trial's seeds, a diverged seed counted as the worst "
            '("Infinity" minimizing, "-Infinity" maximizing); else null.'
        )
    )
    intermediate: dict[int, float] = Field(
        description="Epoch → the objective metric's mean over the seeds with a finite value at that epoch."
    )
    job_ids: list[int] = Field(description="The trial's jobs, one per seed.")
    error: str | None = Field(description="Why the trial has no jobs: its configuration is not a valid spec.")


class SweepTrials(BaseModel):
    sweep_id: int
    strategy: str
    objective: dict[str, str] | None = Field(
        description="metric, which and direction; null for grid and random sweeps."
    )
    space: dict[str, Any] | None = Field(description="The searched space; null for grid and random sweeps.")
    trials: list[TrialOut] = Field(
        description="Every trial created so far, by number (none for grid and random sweeps)."
    )


class SweepOut(BaseModel):
    id: int
    owner: str = Field(description="The owner of the key that created it ('' : created with auth off).")
    name: str | None
    created_at: dt.datetime
    n_jobs: int
    counts: dict[str, int] = Field(description="Jobs per status.")
    cached: int = Field(description="Jobs served from the result cache instead of trained (counted as succeeded).")
    done: bool = Field(
        description=(
            "No job is queued or running and, for an adaptive sweep, every trial of its budget was created or "
            "its search was stopped (cancelled)."
        )
    )
    best: LeaderboardRow | None = Field(description="The leaderboard's top configuration (val_loss, else train_loss).")
    template: dict[str, Any]
    search: dict[str, Any]
    execution: str = Field(description="auto, packed or separate (see POST /v1/sweeps).")
    strategy: str = Field(description="grid, random, tpe, cmaes, gp or qmc.")
    budget: int | None = Field(description="An adaptive sweep's trials in all; null for grid and random sweeps.")
    trials: int | None = Field(description="An adaptive sweep's trials created so far (GET .../trials lists them).")
    parallelism: int | None = Field(description="An adaptive sweep's trials in flight at once.")
    objective: dict[str, str] | None = Field(description="What an adaptive sweep optimizes: metric, which, direction.")
    search_stopped_at: dt.datetime | None = Field(description="When a cancel stopped an adaptive sweep's search.")
    best_trial: TrialOut | None = Field(
        description="An adaptive sweep's complete trial with the best finite value so far (not in lists)."
    )

    @computed_field(  # type: ignore[prop-decorator]
        description=(
            "Changes whenever the counts or an adaptive sweep's trials (and so done) do; best only moves with "
            "them. Pass it as ?since= with ?wait_s= to GET /v1/sweeps/{id} to wait for the next change."
        )
    )
    @property
    def state_token(self) -> str:
        return sweep_token(self.counts, self.trials)


class SweepPage(BaseModel):
    items: list[SweepOut]
    next_cursor: str | None
