"""Pruning decisions with Optuna's own pruners, from our records.

A pruner reads the study it is asked about: other trials' intermediate values and states, and
(successive halving, Hyperband) the rung values each trial recorded in its system attrs when it
was itself asked. Here that study is built in memory from the sweep's trials as the database
holds them (``PruneTrial``), the pruner is asked about the trials in training, and the rung
attrs each decision wrote come back to be stored with the trial: the next decision, in any
process, sees them, exactly as Optuna's shared storage would make it see them. Decisions then
equal Optuna's own for trials asked in the same order (tests/service/test_search_pruners.py).

Names and parameters are Optuna's; ``max_resource`` (Hyperband) defaults to the trials' epochs
rather than Optuna's "auto", which waits for a first complete trial to guess it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    WilcoxonPruner,
)
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState, create_trial
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from service.schemas import INTEGRAL, JsonFloat
from service.search.study import STUDY_NAME, RecordState, state_and_value

PrunerName = Literal["median", "percentile", "successive_halving", "asha", "hyperband", "wilcoxon"]
"""``asha`` is ``successive_halving`` (Optuna's is the asynchronous variant, ASHA)."""

Count = Annotated[StrictInt, Field(ge=0, le=1_000_000), INTEGRAL]
Positive = Annotated[StrictInt, Field(ge=1, le=1_000_000), INTEGRAL]

_PARAMS: dict[str, frozenset[str]] = {
    "median": frozenset({"n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"}),
    "percentile": frozenset({"percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"}),
    "successive_halving": frozenset({"min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"}),
    "asha": frozenset({"min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"}),
    "hyperband": frozenset({"min_resource", "max_resource", "reduction_factor", "bootstrap_count"}),
    "wilcoxon": frozenset({"p_threshold", "n_startup_steps"}),
}
"""The parameters each pruner takes (Optuna's names): any other is a 422 naming it."""


class PrunerConfig(BaseModel):
    """A sweep's pruner: Optuna's, by name, with its parameters (Optuna's defaults otherwise).

    ``median``/``percentile`` compare a trial's value at an epoch with the other trials' at the
    same epoch; ``successive_halving`` (asynchronous, ASHA) and ``hyperband`` keep the best
    1/``reduction_factor`` at epochs min_resource x reduction_factor^k; ``wilcoxon`` compares a
    configuration's seeds, paired, with the best configuration's and stops it once they lose.
    """

    model_config = ConfigDict(extra="forbid")

    name: PrunerName
    n_startup_trials: Count | None = None
    n_warmup_steps: Count | None = None
    interval_steps: Positive | None = None
    n_min_trials: Positive | None = None
    percentile: Annotated[JsonFloat, Field(ge=0, le=100)] | None = None
    min_resource: Positive | None = None
    max_resource: Positive | None = None
    reduction_factor: Annotated[StrictInt, Field(ge=2, le=100), INTEGRAL] | None = None
    min_early_stopping_rate: Count | None = None
    bootstrap_count: Count | None = None
    p_threshold: Annotated[JsonFloat, Field(ge=0, le=1)] | None = None
    n_startup_steps: Count | None = None

    @model_validator(mode="after")
    def _params_of_its_pruner(self) -> PrunerConfig:
        given = {name for name in self.model_fields_set if name != "name" and getattr(self, name) is not None}
        foreign = sorted(given - _PARAMS[self.name])
        if foreign:
            allowed = ", ".join(sorted(_PARAMS[self.name]))
            raise ValueError(f"{', '.join(foreign)}: not a parameter of the {self.name} pruner (it takes {allowed})")
        if self.name == "percentile" and self.percentile is None:
            raise ValueError("percentile: the percentile pruner needs it (0-100)")
        return self

    def params(self) -> dict[str, Any]:
        """The parameters given, as Optuna's keyword arguments."""
        return {name: getattr(self, name) for name in sorted(_PARAMS[self.name]) if getattr(self, name) is not None}


def make_pruner(config: PrunerConfig, max_resource: int) -> BasePruner:
    """The Optuna pruner ``config`` names; ``max_resource`` (the trials' epochs) is Hyperband's
    unless given. Successive halving starts its rungs at epoch 1 unless ``min_resource`` says
    otherwise (Optuna's "auto" would wait for a complete trial to guess it)."""
    params = config.params()
    if config.name == "median":
        return MedianPruner(**params)
    if config.name == "percentile":
        return PercentilePruner(**params)
    if config.name in ("successive_halving", "asha"):
        return SuccessiveHalvingPruner(**({"min_resource": 1} | params))
    if config.name == "hyperband":
        return HyperbandPruner(**({"max_resource": max_resource} | params))
    with warnings.catch_warnings():  # experimental in Optuna 5 (since 3.6), its interface is what we use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return WilcoxonPruner(**params)


PruneState = RecordState


@dataclass(frozen=True)
class PruneTrial:
    """A sweep's trial as pruning sees it.

    Attributes:
        number: its place in the sweep (0, 1, ...): trials are given densely, in order.
        state: running while any seed trains; complete, pruned or failed once all ended.
        value: the objective of a complete trial (the mean over its seeds).
        intermediate: step → value: epoch → the metric's mean over the seeds trained so far
            (Wilcoxon: seed index → that seed's final value).
        attrs: what earlier decisions about it wrote (successive halving's rung values).
    """

    number: int
    state: PruneState
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def decide(
    pruner: BasePruner, direction: Literal["minimize", "maximize"], trials: Sequence[PruneTrial], asked: Sequence[int]
) -> dict[int, tuple[bool, dict[str, Any]]]:
    """Ask ``pruner`` about the running trials numbered ``asked``, in that order, each at its
    last step: trial number → (prune it, its attrs after the decision). ``trials`` are every
    trial of the sweep, numbered 0..n-1. A later decision sees the attrs an earlier one wrote,
    as trials reaching a rung one after the other do in Optuna."""
    numbers = [t.number for t in trials]
    if numbers != list(range(len(trials))):
        raise ValueError(f"trials must be numbered 0..{len(trials) - 1} in order, got {numbers[:10]}")
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, pruner=pruner)
    for trial in trials:
        study.add_trial(_frozen(trial))
    decisions: dict[int, tuple[bool, dict[str, Any]]] = {}
    for number in asked:
        if trials[number].state != "running":
            raise ValueError(f"trial {number} is {trials[number].state}: only running trials are asked")
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        prune = bool(pruner.prune(study, storage.get_trial(trial_id)))
        decisions[number] = (prune, dict(storage.get_trial(trial_id).system_attrs))
    return decisions


def _frozen(trial: PruneTrial) -> optuna.trial.FrozenTrial:
    """The record as Optuna's trial, its state and value as ``study.tell`` would leave them
    (``study.state_and_value``)."""
    state, value = state_and_value(trial.state, trial.value, trial.intermediate)
    return create_trial(
        state=state,
        value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        intermediate_values=dict(trial.intermediate),
        system_attrs=dict(trial.attrs),
        params={},
        distributions={},
    )
