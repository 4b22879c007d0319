"""The sweep controller: creates an adaptive sweep's trials as the results of earlier ones come in.

It runs in every API process, on the dispatcher's thread before each send (``Controller.run_once``),
and in the request that creates an adaptive sweep (``first_pass``). A pass over one sweep:

1. takes or renews the sweep's lease in one guarded UPDATE, so that one replica does the work; a
   dead one's lease lapses after ``search_lease_s`` and another takes the search over;
2. reads the stored trials and what their jobs say (``records``), rebuilds Optuna's study from
   them with a fresh sampler seeded by the number of trials stored, asks for as many
   configurations as there are free slots, and builds each one's jobs (one per seed) the way a
   grid sweep's are built: a configuration that is no valid spec is a failed trial, without jobs;
3. stores the trials and their jobs in one transaction (``store_trials``).

Nothing is kept in memory between passes: a controller restarted after a crash rebuilds the same
records and asks exactly what the dead one would have. The primary key of ``sweep_trials`` keeps
a trial from being created twice: of two controllers that both insert trial N, one transaction
fails and takes its jobs with it. The ``gp`` strategy imports torch into this process at its first
modelled ask (after 10 complete trials): an API process that runs such a search grows by torch.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.admission import spec_problems
from service.db import trials as stored
from service.db.models import Sweep
from service.search.space import SearchParam, Strategy, make_sampler, parse_space
from service.search.study import Direction, TrialRecord, ask, rebuild, sampler_seed
from service.settings import Settings
from service.sweeps import repository
from service.sweeps.expansion import SweepInvalid, Trial, expand_configuration, plan_packs, problem
from service.sweeps.new_jobs import new_jobs

log = logging.getLogger("optimlab.search")


@dataclass(frozen=True)
class Search:
    """What a pass needs of an adaptive sweep, read from its row."""

    sweep: Sweep
    strategy: Strategy
    space: dict[str, SearchParam]
    objective: Mapping[str, str]
    seeds: list[int | None]

    @classmethod
    def of(cls, sweep: Sweep) -> Search:
        if sweep.budget is None or sweep.objective is None or sweep.space is None:
            raise ValueError(f"sweep {sweep.id} is not an adaptive sweep")
        seeds = sweep.search.get("seeds")
        strategy = cast(Strategy, sweep.strategy)
        return cls(sweep, strategy, parse_space(sweep.space), sweep.objective, list(seeds) if seeds else [None])

    @property
    def direction(self) -> Direction:
        return "maximize" if self.objective["direction"] == "maximize" else "minimize"

    @property
    def budget(self) -> int:
        return int(self.sweep.budget or 0)


# --- records: what the database says of each trial ---------------------------------------------


def records(session: Session, search: Search, *, curves: bool = True) -> list[TrialRecord]:
    """Every trial of the sweep as Optuna should see it: params and sampler attrs as stored, state
    and value from its jobs (``trials.outcome``), intermediate values = the objective metric's mean over
    its seeds per epoch (``curves``: read them; a sweep's best trial needs none). ``user_attrs``
    hold its job ids and, for an invalid one, its error."""
    sweep_id, metric = search.sweep.id, search.objective["metric"]
    # Trials first: a pass commits a trial with its jobs, so jobs read after it include its jobs
    # (PostgreSQL's statements each see what committed before them).
    trials = stored.stored_trials(session, sweep_id)
    jobs = stored.trial_jobs(session, sweep_id, f"{search.objective['which']}_{metric}")
    per_epoch = stored.intermediate(session, sweep_id, metric) if curves else {}
    found = []
    for trial in trials:
        mine = jobs.get(trial.number, [])
        state, value = stored.outcome(trial.error, mine, search.direction)
        attrs: dict[str, Any] = {"job_ids": [job.job_id for job in mine]}
        if trial.error is not None:
            attrs["error"] = trial.error
        curve = dict(per_epoch.get(trial.number, {}))
        found.append(TrialRecord(trial.number, trial.params, state, value, curve, trial.system_attrs, attrs))
    return found


# --- a pass: ask, then store -------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTrial:
    """A configuration asked in this pass, with its jobs, or the problems that leave it none."""

    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    jobs: list[Trial]
    problems: list[dict[str, Any]]

    @property
    def error(self) -> str | None:
        """The problems as the trial's stored error (None: it has its jobs)."""
        messages = [f"{error['field']}: {error['msg']}" for p in self.problems for error in p["errors"]]
        return "; ".join(dict.fromkeys(messages)) or None


def ask_trials(search: Search, known: Sequence[TrialRecord], count: int, settings: Settings) -> list[PlannedTrial]:
    """Ask ``count`` configurations after the ``known`` trials (numbered 0..N-1, the next ones
    N, N+1, ...), each with its jobs built and checked as a single job would be."""
    sampler = make_sampler(search.strategy, sampler_seed(int(search.sweep.sampler_seed or 0), len(known)))
    study = rebuild(known, search.space, search.direction, sampler)
    planned = []
    for number in range(len(known), len(known) + count):
        params, attrs = ask(study, search.space)
        planned.append(_build(search, number, params, attrs, settings))
    return planned


def _build(
    search: Search, number: int, params: dict[str, Any], attrs: dict[str, Any], settings: Settings
) -> PlannedTrial:
    """One configuration's jobs, one per seed: each a valid spec within this server's caps and
    host, packable if the sweep must pack; else the problems (the trial gets no job)."""
    jobs, problems = expand_configuration(search.sweep.template, params, search.seeds)
    for job in [] if problems else jobs:
        if found := spec_problems(job.spec, settings):
            problems.append(problem(job.combination(), [(("spec", *p.loc), p.msg) for p in found]))
    if not problems and search.sweep.execution == "packed":
        try:
            plan_packs(jobs, "packed", settings.pack_max)
        except SweepInvalid as exc:
            problems = exc.problems
    return PlannedTrial(number, params, attrs, [] if problems else jobs, problems)


def store_trials(session: Session, search: Search, planned: Sequence[PlannedTrial], settings: Settings) -> int | None:
    """Store a pass's trials and their jobs in the session's transaction (result-cache lookups
    and the pack plan over the pass's jobs, as at a sweep's creation); returns the jobs created,
    or None when the search was stopped meanwhile (nothing is written). A trial number stored by
    another controller first raises ``IntegrityError``: the caller rolls everything back."""
    sweep = search.sweep
    jobs = [job for trial in planned for job in trial.jobs]
    if not stored.extend(session, sweep.id, len(jobs)):
        return None
    stored.insert_trials(
        session, sweep.id, [stored.StoredTrial(t.number, t.params, t.system_attrs, t.error) for t in planned]
    )
    packs = plan_packs(jobs, sweep.execution, settings.pack_max)
    rows = new_jobs(
        session,
        jobs,
        packs,
        owner=sweep.owner,
        execution=sweep.execution,
        # A pruned sweep trains its trials: a cached run carries no pruning decisions (rung values
        # for the trials after it) and a pruned run is never cached, so a repeat would train more.
        use_cache=sweep.cache is not False and not sweep.pruner,
        settings=settings,
        trial_numbers=[trial.number for trial in planned for _ in trial.jobs],
    )
    repository.insert_jobs(session, sweep, rows)
    return len(rows)


def first_pass(session: Session, sweep: Sweep, settings: Settings) -> int:
    """The pass of a sweep's creation, in its transaction: ``min(parallelism, budget)`` trials.
    When every one of them is invalid the base or the space cannot give a valid spec, and the
    search would only spend its budget on failed trials: ``SweepInvalid`` names them instead
    (the caller creates nothing). Returns the jobs created."""
    search = Search.of(sweep)
    planned = ask_trials(search, [], min(int(sweep.parallelism or 1), search.budget), settings)
    if all(trial.problems for trial in planned):
        raise SweepInvalid([p for trial in planned for p in trial.problems][:10])
    return store_trials(session, search, planned, settings) or 0


# --- the controller ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """A prepared pass over one sweep: its trials asked and built, not yet stored."""

    search: Search
    trials: list[PlannedTrial]


class Controller:
    """The adaptive sweeps' controller of one process (``me``: host:pid:random, the lease holder's
    name). ``run_once`` is a pass over every sweep that may create trials."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self.me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def run_once(self) -> int:
        """One pass: for each adaptive sweep with a free slot, ``advance`` it; returns the trials
        created. A sweep whose pass fails is logged and left for the next pass."""
        with self._sessions() as session, session.begin():
            active = [search.sweep_id for search in stored.active_searches(session) if search.wanted > 0]
        created = 0
        for sweep_id in active:
            try:
                created += self.advance(sweep_id)
            except IntegrityError:
                log.info("sweep %s: another controller created these trials first", sweep_id)
            except OperationalError as exc:
                log.warning("sweep %s: search pass failed: %s", sweep_id, exc)
            except Exception:
                log.exception("sweep %s: search pass failed", sweep_id)
        return created

    def advance(self, sweep_id: int) -> int:
        """A pass over one sweep: ``prepare`` then ``commit``; returns the trials created."""
        prepared = self.prepare(sweep_id)
        return 0 if prepared is None else self.commit(prepared)

    def prepare(self, sweep_id: int) -> Pass | None:
        """Take the lease, read the records and ask the free slots' trials (None: the lease is
        another's, or nothing is free). Only reads: a pass that is never committed leaves no trace."""
        with self._sessions() as session, session.begin():
            if not stored.take_lease(session, sweep_id, self.me, self._settings.search_lease_s):
                return None
        with self._sessions() as session, session.begin():
            sweep = session.get(Sweep, sweep_id)
            assert sweep is not None  # leased just now; a sweep is never deleted while the API runs
            search = Search.of(sweep)
            known = records(session, search)
        in_flight = sum(record.state == "running" for record in known)
        wanted = min(int(sweep.parallelism or 1) - in_flight, search.budget - len(known))
        if wanted <= 0:
            return None
        return Pass(search, ask_trials(search, known, wanted, self._settings))

    def commit(self, prepared: Pass) -> int:
        """Store a prepared pass in one transaction; returns the trials created (0: the search
        was stopped meanwhile). A trial another controller stored first raises ``IntegrityError``,
        and the transaction, every job of the pass with it, rolls back."""
        with self._sessions() as session, session.begin():
            created = store_trials(session, prepared.search, prepared.trials, self._settings)
        return 0 if created is None else len(prepared.trials)
