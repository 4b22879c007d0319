"""Sweeps: a base spec plus a search (grid, random, seeds) expanded into validated job specs.

Pure functions, no database or web code: the API validates every expansion before it creates
anything, and tests exercise the expansion directly.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from optim_engine.packing import pack_key, unpackable
from optim_engine.spec import JobSpec
from service.spec_codec import decode, encode

PATH = r"^[a-z_][a-z0-9_]*(\.([a-z_][a-z0-9_]*|[0-9]+))*$"
Path = Annotated[str, Field(pattern=PATH, description="Dotted spec path: optimizer.lr, scheduler.0.params.gamma")]


class Distribution(BaseModel):
    """One of: choice (a list), uniform [low, high], log_uniform [low, high] (low > 0), int [low, high]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    choice: Annotated[list[Any], Field(min_length=1)] | None = None
    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(default=None, alias="int", description="Inclusive integer range.")

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        kinds = [k for k in ("choice", "uniform", "log_uniform", "integer") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of choice, uniform, log_uniform, int (got {kinds or 'none'})")
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

    n: Annotated[int, Field(ge=1, le=100_000, description="Trials to sample.")]
    seed: int = Field(default=0, description="Sampler seed: the same seed draws the same trials.")
    params: Annotated[dict[Path, Distribution], Field(min_length=1)]


Grid = dict[Path, Annotated[list[Any], Field(min_length=1)]]


class SweepCreate(BaseModel):
    """A base spec and a search over dotted spec paths; every configuration runs once per seed."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=200)] | None = None
    base: dict[str, Any] = Field(description="A job spec; the search overrides its paths.")
    grid: Grid | list[Grid] | None = Field(
        default=None, description="Path → values, all combinations; a list of grids is their union."
    )
    random: RandomSearch | None = None
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=1000)] | None = (
        Field(default=None, description="Repeat every configuration with each seed (sets spec.seed).")
    )
    tags: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/=-]{1,64}$")]], Field(max_length=32)] = Field(
        default_factory=list
    )
    execution: Literal["auto", "packed", "separate"] = Field(
        default="auto",
        description=(
            "auto: jobs that can train together (same model, data, loss, batch size, epochs, device) run "
            "as packs of up to OPTIMLAB_PACK_MAX trials, the rest separately; packed: every job in a pack "
            "(a 422 says which cannot); separate: one task per job."
        ),
    )

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
                    mode="json", by_alias=True, exclude_none=True, exclude={"name", "base", "tags", "execution"}
                )
            )
        )


@dataclass(frozen=True)
class Trial:
    """One job of a sweep: its searched values, its seed and its validated spec."""

    config: dict[str, Any]
    seed: int
    spec: JobSpec
    config_hash: str


class SweepInvalid(ValueError):
    """Some expansion is not a valid spec; ``problems`` names each combination and field."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(problems)} invalid combination(s)")
        self.problems = problems


def count(sweep: SweepCreate) -> int:
    """How many jobs the sweep expands to, without expanding it."""
    grid_points = sum(math.prod(len(values) for values in grid.values()) for grid in sweep.grids())
    trials = sweep.random.n if sweep.random is not None else 1
    return grid_points * trials * len(sweep.seeds or [0])


def configurations(sweep: SweepCreate) -> Iterator[dict[str, Any]]:
    """Every configuration (path → value), grid points times random trials, in a stable order."""
    samples: list[dict[str, Any]] = [{}]
    if sweep.random is not None:
        rng = random.Random(sweep.random.seed)  # noqa: S311  (seeded on purpose: reproducible trials)
        samples = [
            {path: dist.sample(rng) for path, dist in sweep.random.params.items()} for _ in range(sweep.random.n)
        ]
    for grid in sweep.grids():
        paths = list(grid)
        for values in itertools.product(*(grid[p] for p in paths)):
            point = dict(zip(paths, values, strict=True))
            for sample in samples:
                yield copy.deepcopy(point) | sample


def expand(sweep: SweepCreate, max_problems: int = 10) -> list[Trial]:
    """Every job of the sweep, validated; ``SweepInvalid`` lists the combinations that fail."""
    trials: list[Trial] = []
    problems: list[dict[str, Any]] = []
    seeds: list[int | None] = list(sweep.seeds) if sweep.seeds else [None]
    for config in configurations(sweep):
        for seed in seeds:
            combination = config | ({"seed": seed} if seed is not None else {})
            try:
                spec_dict = apply(sweep.base, config)
                if seed is not None:
                    spec_dict["seed"] = seed
                spec = JobSpec.model_validate(decode(spec_dict))  # "Infinity" in a grid, as in a spec
            except (ValidationError, ValueError, TypeError) as exc:
                if len(problems) < max_problems:
                    problems.append({"combination": encode(combination), "errors": _errors(exc)})
                continue
            trials.append(Trial(config, spec.seed, spec, config_hash(spec)))
    if problems:
        raise SweepInvalid(problems)
    return trials


def apply(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each path set to its value (shallow paths first, so ``optimizer`` then
    ``optimizer.lr`` compose); a null value removes the key, leaving the spec's default."""
    spec = copy.deepcopy(dict(base))
    for path, value in sorted(config.items(), key=lambda item: item[0].count(".")):
        _set(spec, path.split("."), copy.deepcopy(value), path)
    return spec


def _set(node: Any, keys: list[str], value: Any, path: str) -> None:
    key, rest = keys[0], keys[1:]
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise_path(path, f"no item {key} in a list of {len(node)}")
        index = int(key)
        if rest:
            _set(node[index], rest, value, path)
        else:
            node[index] = value
        return
    if not isinstance(node, dict):
        raise_path(path, f"{key!r} is inside a value that is not an object")
    if rest:
        child = node.setdefault(key, [] if rest[0].isdigit() else {})
        if isinstance(child, str) and key in ("loss",):  # `loss: mse` shorthand
            child = node[key] = {"name": child}
        _set(child, rest, value, path)
    elif value is None:
        node.pop(key, None)
    else:
        node[key] = value


def raise_path(path: str, message: str) -> None:
    raise ValueError(f"{path}: {message}")


def config_hash(spec: JobSpec) -> str:
    """SHA-256 of the spec without its seed: jobs that differ only in seed share it."""
    data = spec.model_dump(mode="json")
    data.pop("seed", None)
    canonical = json.dumps(encode(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _errors(exc: Exception) -> list[dict[str, str]]:
    if isinstance(exc, ValidationError):
        out = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error.get("loc", ()))
            msg = str(error.get("msg", "")).removeprefix("Value error, ")
            if not field and ": " in msg:  # cross-field errors name their field first
                field, msg = msg.split(": ", 1)
            out.append({"field": f"spec.{field}" if field else "spec", "msg": msg})
        return out
    return [{"field": "search", "msg": str(exc)}]


def plan_packs(trials: Sequence[Trial], execution: str, pack_max: int) -> list[str | None]:
    """Each trial's pack id (None: it runs as its own task).

    Trials with the same pack key are split into packs of at most ``pack_max``, as evenly as
    possible (60 trials and a cap of 32 give two packs of 30, not 32 + 28). Under ``auto`` a
    trial that cannot pack, or is alone with its key, runs separately; under ``packed`` such a
    trial is a ``SweepInvalid`` naming it and why.
    """
    packs: list[str | None] = [None] * len(trials)
    if execution == "separate":
        return packs
    problems = []
    groups: dict[str, list[int]] = {}
    for i, trial in enumerate(trials):
        reasons = unpackable(trial.spec)
        if reasons:
            combination = encode(trial.config | {"seed": trial.seed})
            problems.append({"combination": combination, "errors": [_pack_error(r) for r in reasons]})
        else:
            groups.setdefault(pack_key(trial.spec), []).append(i)
    if execution == "packed" and problems:
        raise SweepInvalid(problems[:10])
    for members in groups.values():
        if len(members) < 2 and execution == "auto":
            continue
        n_packs = -(-len(members) // pack_max)
        for chunk in range(n_packs):
            pack_id = uuid.uuid4().hex
            for i in members[chunk::n_packs]:
                packs[i] = pack_id
    return packs


def _pack_error(reason: str) -> dict[str, str]:
    field, _, message = reason.partition(": ")
    return {"field": f"spec.{field}", "msg": f"cannot be packed: {message}"}
