"""Our trial records and an Optuna study, both ways: ``rebuild`` makes an in-memory study from the
records a database holds (the database stays the one record; Optuna's own storage is never
used), ``ask`` draws the next configuration and hands back what the sampler wrote, for the caller
to store with it."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from service.search.space import SearchParam, make_sampler, suggest, to_optuna, to_optuna_value

Direction = Literal["minimize", "maximize"]
RecordState = Literal["running", "complete", "pruned", "failed"]

STATES: dict[str, TrialState] = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}

STUDY_ATTRS = "optimlab:study_system_attrs"
"""The key, in the system attrs ``ask`` returns, of the study-level attrs that the ask changed.
Optuna's QMC sampler keeps its position in the sequence there (``qmc:<hash>``); a rebuilt study
that lost it would draw the sequence's first points again on every pass."""

STUDY_NAME = "optimlab-rebuilt"
"""The name of every study built here (Hyperband assigns brackets by study name and trial number)."""


class _QuietRebuilds(logging.Filter):
    """Drops the INFO line Optuna's in-memory storage logs for each new study, for our studies
    only: a controller rebuilds one on every pass, and the line would fill the API's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != f"A new study created in memory with name: {STUDY_NAME}"


logging.getLogger("optuna.storages._in_memory").addFilter(_QuietRebuilds())


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the database holds it: a configuration of the space, asked once, trained on
    each of the sweep's seeds.

    Attributes:
        number: the trial's place in the sweep (0, 1, ...); a rebuilt study orders trials by it.
        params: path → value, the active parameters only (as ``ask`` returned them).
        state: running until every seed ended; pruned or failed as the jobs ended.
        value: the objective, the mean over the configuration's seeds (the caller computes it);
            required when complete, None when running or failed. NaN marks a complete trial
            failed, as Optuna's own ``tell`` does (pass inf to make the sampler learn from it).
        intermediate: epoch → the metric's mean over seeds, what pruners and TPE read.
        system_attrs: what ``ask`` returned, stored as it is (JSON). It carries sampler state:
            CMA-ES's pickled optimizer (so only this code, never a user, may write it).
        user_attrs: free for the caller; kept as given.
    """

    number: int
    params: dict[str, Any]
    state: RecordState
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"trial {self.number}: state {self.state!r} is not one of {', '.join(STATES)}")
        if self.state == "complete" and self.value is None:
            raise ValueError(f"trial {self.number}: a complete trial needs its value")
        if self.state in ("running", "failed") and self.value is not None:
            raise ValueError(f"trial {self.number}: a {self.state} trial has no value (got {self.value})")


def sampler_seed(sweep_seed: int, n_trials_so_far: int) -> int:
    """The seed of the sampler for the pass that has ``n_trials_so_far`` trials recorded.

    A controller rebuilds the study and a fresh sampler on every pass, so the seed must be a
    function of what the database holds: a controller restarted after a crash rebuilds the
    same records, gets the same seed and asks the same next configuration. The sweep's seed
    alone would not do: every pass would replay the same random stream (a random sampler
    would ask the same configuration forever). Hashing rather than adding keeps neighbouring
    sweeps apart (seed 0 at pass 1 is not seed 1 at pass 0). The result fits numpy's seeds.
    """
    digest = hashlib.blake2b(f"optimlab.search:{sweep_seed}:{n_trials_so_far}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def rebuild(
    records: Iterable[TrialRecord],
    space: Mapping[str, SearchParam],
    direction: Direction,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """An in-memory study holding every record, in the order of their numbers (Optuna numbers
    its trials 0, 1, ... in that order: the same numbers when the records' run 0..N-1).

    Each record becomes a trial with its params (with the space's distributions, for the
    params it has), state (running ones too, so that TPE's constant liar and GP's batch
    acquisition see them), value, intermediate values, user attrs and system attrs (CMA-ES
    restores its optimizer from them). Pass a fresh sampler (``make_sampler(strategy,
    sampler_seed(...))``): a reused one carries caches from another study.

    Raises:
        ValueError: two records share a number, or a record's params do not fit the space.
    """
    ordered = sorted(records, key=lambda record: record.number)
    repeated = sorted(number for number, count in Counter(r.number for r in ordered).items() if count > 1)
    if repeated:
        raise ValueError(f"trial numbers repeat: {repeated}")
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=sampler, study_name=STUDY_NAME, direction=direction)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    study_attrs: dict[str, Any] = {}
    for record in ordered:
        study_attrs.update(record.system_attrs.get(STUDY_ATTRS, {}))
        study.add_trial(_frozen_trial(record, space))
    for key, value in study_attrs.items():
        storage.set_study_system_attr(study_id, key, value)
    return study


def _frozen_trial(record: TrialRecord, space: Mapping[str, SearchParam]) -> FrozenTrial:
    """The record as the trial Optuna would hold, had it asked and been told itself."""
    params: dict[str, Any] = {}
    distributions: dict[str, BaseDistribution] = {}
    for path, value in record.params.items():
        param = space.get(path)
        if param is None:
            raise ValueError(f"trial {record.number}: {path} is not a parameter of the space")
        distributions[path] = to_optuna(param)
        try:
            params[path] = to_optuna_value(path, param, value)
            distributions[path].to_internal_repr(params[path])
        except (ValueError, TypeError) as error:
            raise ValueError(f"trial {record.number}: {path} = {value!r} does not fit the space ({error})") from None
    intermediate = {int(step): float(value) for step, value in record.intermediate.items()}
    state, value = state_and_value(record.state, record.value, intermediate)
    try:
        return create_trial(
            state=state,
            value=value,
            params=params,
            distributions=distributions,
            user_attrs=copy.deepcopy(record.user_attrs),
            system_attrs={k: copy.deepcopy(v) for k, v in record.system_attrs.items() if k != STUDY_ATTRS},
            intermediate_values=intermediate,
        )
    except ValueError as error:
        raise ValueError(f"trial {record.number}: {error}") from None


def state_and_value(
    record_state: RecordState, record_value: float | None, intermediate: Mapping[int, float]
) -> tuple[TrialState, float | None]:
    """The Optuna state and value, as ``study.tell`` would have left them: a complete trial
    without a number fails; a pruned trial without a value takes its last intermediate value,
    if a number."""
    state = STATES[record_state]
    value = None if record_value is None else float(record_value)
    if state == TrialState.COMPLETE and (value is None or math.isnan(value)):
        return TrialState.FAIL, None
    if state == TrialState.PRUNED and (value is None or math.isnan(value)):
        last = intermediate[max(intermediate)] if intermediate else math.nan
        return state, None if math.isnan(last) else last
    return state, value


def ask(study: optuna.Study, space: Mapping[str, SearchParam]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ask one trial and suggest the space: returns (path → value for the active params, the
    system attrs to store with it, JSON as the sampler wrote them).

    The trial stays running in ``study``, so a second ask in the same pass sees it (TPE's
    constant liar, GP's batch acquisition). A crash must not change what is asked: all asks of
    a pass must be stored together (one transaction), since the next pass's seed depends on
    the number of trials stored.
    """
    # Optuna's public API reads neither study-level system attrs nor a live trial's; the
    # storage is where its samplers themselves read and write them.
    storage, study_id = study._storage, study._study_id
    before = storage.get_study_system_attrs(study_id)
    trial = study.ask()
    params = suggest(trial, space)
    system_attrs = copy.deepcopy(storage.get_trial_system_attrs(trial._trial_id))
    changed = {k: v for k, v in storage.get_study_system_attrs(study_id).items() if k not in before or before[k] != v}
    if changed:
        system_attrs[STUDY_ATTRS] = copy.deepcopy(changed)
    return params, system_attrs


def to_study(
    records: Iterable[TrialRecord],
    space: Mapping[str, SearchParam],
    direction: Direction,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """A sweep's trials as an Optuna study, for people (``client.study(sweep)``): Optuna's
    visualizations, ``trials_dataframe``, ``best_params``. It is a detached copy: asking or
    telling it changes nothing in optimlab. A choice of objects or lists shows as the index of
    its value (``space.uses_indices``). The sampler defaults to TPE seeded 0 (Optuna's default
    algorithm, deterministic), for anyone who wants to go on searching locally."""
    return rebuild(records, space, direction, sampler or make_sampler("tpe", 0))
