"""The search space of an adaptive sweep (dotted spec paths to distributions, some searched only
while another parameter takes given values) and how Optuna sees it: its distributions, a
define-by-run ``suggest`` every sampler can drive, and the samplers themselves."""

from __future__ import annotations

import copy
import heapq
import importlib.util
import json
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, model_validator

from service.sweeps.distributions import ONLY_PATHS, Distribution, Path

KINDS = ("choice", "uniform", "log_uniform", "int")
"""The JSON names of ``Distribution``'s four kinds: a parameter gives exactly one."""

MAX_PARAMS = 256
"""Parameters in one space: far above any real search, a bound on the work validation does."""


def _one_kind_and_when(schema: dict[str, Any]) -> None:
    """The JSON Schema says what ``SearchParam`` checks: exactly one of the four kinds, not null,
    beside an optional ``when``. (``Distribution``'s own hook states one property in all, which
    ``when`` would break.)"""
    for name in KINDS:
        field = schema["properties"][name]
        schema["properties"][name] = {k: v for k, v in field.items() if k != "anyOf"} | field["anyOf"][0]
    schema["oneOf"] = [{"required": [name]} for name in KINDS]


Condition = Annotated[
    dict[Path, Annotated[list[Any], Field(min_length=1)]],
    Field(min_length=1, json_schema_extra=ONLY_PATHS),
]


class SearchParam(Distribution):
    """One searched path: a distribution (``{"choice": [...]}``, ``{"uniform": [lo, hi]}``,
    ``{"log_uniform": [lo, hi]}`` or ``{"int": [lo, hi]}``), searched only while every path in
    ``when`` (another parameter of the space, a choice) took one of the listed values."""

    model_config = ConfigDict(json_schema_extra=_one_kind_and_when)

    when: Condition = Field(
        default_factory=dict,
        description=(
            "Search this path only while each listed choice parameter takes one of its values: "
            '{"optimizer.name": ["sgd"]} searches momentum for sgd only.'
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        # Replaces Distribution's validator of the same name (pydantic keeps one per name, so
        # the parent's would count ``when`` as a second kind) and runs the parent's rule, with
        # its messages, on the four kinds alone.
        kinds = Distribution.model_construct(
            _fields_set=self.model_fields_set - {"when"},
            choice=self.choice,
            uniform=self.uniform,
            log_uniform=self.log_uniform,
            integer=self.integer,
        )
        kinds._one_kind()  # type: ignore[operator]  # pydantic's proxy calls through; mypy cannot see it
        return self


def canonical(value: Any) -> str:
    """One spelling per JSON value, to compare values the way JSON does: ``1``, ``1.0`` and
    ``true`` are three values here, where Python's ``==`` makes them one."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_conditions(space: dict[str, SearchParam]) -> dict[str, SearchParam]:
    """Every ``when`` names a choice parameter of the space and some of its values, and no chain
    of conditions comes back to where it started (``suggestion_order`` raises for a cycle)."""
    for path, param in space.items():
        for parent, allowed in param.when.items():
            other = space.get(parent)
            if other is None:
                raise ValueError(f"{path}: when refers to {parent}, which is not a parameter of the space")
            if other.choice is None:
                raise ValueError(
                    f"{path}: when refers to {parent}, which is not a choice; only choices can be conditions"
                )
            choices = {canonical(value) for value in other.choice}
            for value in allowed:
                if canonical(value) not in choices:
                    raise ValueError(f"{path}: when {parent} is {canonical(value)}, not one of {parent}'s choices")
    suggestion_order(space)
    return space


SearchSpace = Annotated[
    dict[Path, SearchParam],
    Field(min_length=1, max_length=MAX_PARAMS, json_schema_extra=ONLY_PATHS),
    AfterValidator(_check_conditions),
]
"""An adaptive sweep's space: path → parameter, conditions checked across the space (a broken
one is a ValueError naming its path, which pydantic reports as a 422 on the field)."""

SPACE = TypeAdapter(SearchSpace)


def parse_space(data: Any) -> dict[str, SearchParam]:
    """A space from its JSON form (a request body, or the copy a sweep stored), validated."""
    return SPACE.validate_python(data)


def suggestion_order(space: Mapping[str, SearchParam]) -> list[str]:
    """Every path after the paths its condition names (parents before children), ties in path
    order: the order must not depend on how a database returned the JSON object's keys (JSONB
    does not keep them), because the order in which a sampler draws decides what it draws."""
    waiting = {path: set(param.when) for path, param in space.items()}
    children: dict[str, list[str]] = {path: [] for path in space}
    for path, parents in waiting.items():
        for parent in parents & children.keys():
            children[parent].append(path)
    ready = [path for path, parents in waiting.items() if not parents]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        path = heapq.heappop(ready)
        order.append(path)
        for child in children[path]:
            waiting[child].discard(path)
            if not waiting[child]:
                heapq.heappush(ready, child)
    if len(order) < len(waiting):
        stuck = sorted(set(waiting) - set(order))
        raise ValueError(f"{stuck[0]}: its conditions form a cycle (through {', '.join(stuck)})")
    return order


def uses_indices(param: SearchParam) -> bool:
    """Whether Optuna sees this choice as the indices of its values: Optuna's categorical holds
    only None, bool, int, float and str (a dict, such as a whole optimizer object, or a list is
    not storable there), and its ``==`` lookup cannot tell ``1`` from ``true`` or ``1.0``."""
    choices = param.choice
    if choices is None:
        return False
    if any(value is not None and not isinstance(value, bool | int | float | str) for value in choices):
        return True
    return any(canonical(choices[choices.index(value)]) != canonical(value) for value in choices)


def to_optuna(param: SearchParam) -> BaseDistribution:
    """The Optuna distribution of a parameter: categorical (of the values, or of their indices,
    see ``uses_indices``), float (log for log_uniform) or int."""
    if param.choice is not None:
        return CategoricalDistribution(range(len(param.choice)) if uses_indices(param) else param.choice)
    if param.uniform is not None:
        return FloatDistribution(*param.uniform)
    if param.log_uniform is not None:
        return FloatDistribution(*param.log_uniform, log=True)
    assert param.integer is not None
    return IntDistribution(*param.integer)


def to_optuna_value(path: str, param: SearchParam, value: Any) -> Any:
    """A stored value as Optuna holds it (the index of an indexed choice)."""
    if not uses_indices(param):
        return value
    assert param.choice is not None
    key = canonical(value)
    for index, choice in enumerate(param.choice):
        if canonical(choice) == key:
            return index
    raise ValueError(f"{path}: {key} is not one of its choices")


def from_optuna_value(param: SearchParam, value: Any) -> Any:
    """The value Optuna suggested, as the spec takes it (an indexed choice's value, a copy)."""
    if uses_indices(param):
        assert param.choice is not None
        return copy.deepcopy(param.choice[value])
    return value


def is_active(param: SearchParam, values: Mapping[str, Any]) -> bool:
    """Whether a parameter is searched, given the values already chosen: each parent of its
    condition was chosen (so was active itself) and took one of the listed values."""
    return all(
        parent in values and canonical(values[parent]) in {canonical(value) for value in allowed}
        for parent, allowed in param.when.items()
    )


def suggest(trial: optuna.Trial, space: Mapping[str, SearchParam]) -> dict[str, Any]:
    """Define-by-run: suggest each active parameter, parents first, and return path → value for
    the active ones only (an inactive path is absent, never None).

    Works with every sampler because Optuna splits sampling in two: a sampler's relative search
    space (what it models jointly) is inferred from past trials, and every parameter outside it
    is drawn by ``sample_independent``. CMA-ES and GP take the intersection of past trials'
    spaces, numeric only for CMA-ES, so a conditional or categorical parameter falls back to
    their independent sampler (random); TPE with ``group=True`` models each sub-space that
    conditions create. See Optuna's BaseSampler ("relative sampling ... independent sampling")
    https://optuna.readthedocs.io/en/stable/reference/samplers/generated/optuna.samplers.BaseSampler.html,
    GPSampler's ``independent_sampler`` ("for conditional parameters")
    https://optuna.readthedocs.io/en/stable/reference/samplers/generated/optuna.samplers.GPSampler.html,
    and CmaEsSampler (categorical unsupported) in the same reference; Optuna 5.0's
    ``samplers/_cmaes.py`` ``infer_relative_search_space`` and ``sample_independent`` do it so.
    """
    values: dict[str, Any] = {}
    for path in suggestion_order(space):
        param = space[path]
        if not is_active(param, values):
            continue
        distribution = to_optuna(param)
        raw: Any
        if isinstance(distribution, CategoricalDistribution):
            raw = trial.suggest_categorical(path, distribution.choices)
        elif isinstance(distribution, FloatDistribution):
            raw = trial.suggest_float(path, distribution.low, distribution.high, log=distribution.log)
        else:
            assert isinstance(distribution, IntDistribution)
            raw = trial.suggest_int(path, distribution.low, distribution.high)
        values[path] = from_optuna_value(param, raw)
    return values


Strategy = Literal["random", "tpe", "cmaes", "gp", "qmc"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

_NEEDS: dict[str, tuple[str, ...]] = {"cmaes": ("cmaes",), "gp": ("torch", "scipy"), "qmc": ("scipy",)}
"""The packages a strategy needs beyond Optuna's own (Optuna imports them lazily, at first use)."""

_STARTUP: dict[str, int] = {"tpe": 10, "cmaes": 1, "gp": 10}
"""Optuna 5.0's own defaults for ``n_startup_trials``, kept when the caller gives none."""


def missing_packages(strategy: Strategy) -> list[str]:
    """The packages ``strategy`` needs that this host lacks, found without importing them."""
    return [name for name in _NEEDS.get(strategy, ()) if importlib.util.find_spec(name) is None]


def available_strategies() -> tuple[Strategy, ...]:
    """The strategies this host can run: what an API can accept without failing later."""
    return tuple(strategy for strategy in STRATEGIES if not missing_packages(strategy))


def make_sampler(strategy: Strategy, seed: int, n_startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """A fresh, seeded Optuna sampler for one controller pass (pass ``study.sampler_seed``).

    - ``random``: RandomSampler.
    - ``tpe``: TPESampler(multivariate=True, group=True, constant_liar=True): models parameters
      jointly, per sub-space of a conditional space, and counts trials still running as the
      worst results so that parallel asks spread out (all three flags exist in Optuna 5.0;
      ``group`` is experimental there).
    - ``cmaes``: CmaEsSampler (needs the ``cmaes`` package); categorical and conditional
      parameters are drawn at random, and so is everything once the numeric space changes
      dimension, so it suits fixed numeric spaces.
    - ``gp``: GPSampler. Constructing it imports nothing heavy, but its first modelled ask (after
      ``n_startup_trials`` complete) imports torch into this process (measured on the 2-core
      dev machine: 1.3-2.5 s, +260 MB resident), then fits a GP on every ask (0.1-0.5 s with
      5 parameters and under 10 trials; the fit grows cubically with trials); it limits
      torch's threads to 1 only while it fits. Without the greenlet package, Optuna logs once
      that it optimizes the acquisition sequentially.
    - ``qmc``: QMCSampler over an unscrambled Sobol sequence: a scrambled one is keyed by its
      seed, which changes every pass, so the sequence would restart each pass; the position in
      the sequence is a study attribute that ``study.ask`` hands back for storage.

    ``n_startup_trials`` (random trials before modelling) applies to tpe, cmaes and gp; None
    keeps Optuna's default (10, 1, 10). Sampler warnings about falling back to independent
    sampling are off: a conditional space makes that expected, not a problem.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    missing = missing_packages(strategy)
    if missing:
        raise ValueError(f"strategy {strategy} needs {', '.join(missing)}, not installed on this host")
    startup = _STARTUP.get(strategy, 0) if n_startup_trials is None else n_startup_trials
    samplers = optuna.samplers
    # QMCSampler and TPESampler's ``group`` are experimental in Optuna 5.0 and warn at every
    # construction, once per pass. The filter lives for the constructor call only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if strategy == "random":
            return samplers.RandomSampler(seed=seed)
        if strategy == "tpe":
            return samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=startup
            )
        if strategy == "cmaes":
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup)
        if strategy == "gp":
            return samplers.GPSampler(seed=seed, warn_independent_sampling=False, n_startup_trials=startup)
        return samplers.QMCSampler(qmc_type="sobol", scramble=False, seed=seed, warn_independent_sampling=False)
