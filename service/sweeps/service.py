"""The rules of /v1/sweeps: the cap on a sweep's size, its expansion checked job by job like a
single job, its packing plan, creation in one transaction, cancellation, and the views over its
jobs (counts, best configuration, leaderboard, curves), each for one principal: it owns what it
creates and sees only its own sweeps unless it is an admin."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service import events
from service.admission import spec_problems
from service.auth.principal import Principal
from service.db import transitions
from service.db import trials as stored_trials
from service.db.models import JobStatus, Sweep
from service.dispatcher import Dispatcher
from service.errors import InvalidFields, field_error
from service.longpoll import TokenReader, sweep_token
from service.responses import etag_matches
from service.search import controller
from service.search.study import TrialRecord
from service.settings import Settings
from service.spec_codec import encode, load_spec, stored_spec
from service.sweeps import curves, repository
from service.sweeps.curves import Curves
from service.sweeps.expansion import SweepInvalid, Trial, count, expand, plan_packs, problem
from service.sweeps.new_jobs import new_jobs
from service.sweeps.schemas import (
    Leaderboard,
    LeaderboardRow,
    SweepCreate,
    SweepOut,
    SweepPage,
    SweepTrials,
    TrialOut,
    dump_space,
)

LEADERBOARD_METRICS = tuple(repository.BETTER)


def create_sweep(
    session: Session,
    body: SweepCreate,
    *,
    principal: Principal,
    settings: Settings,
    dispatcher: Dispatcher,
    idempotency_key: str | None = None,
) -> tuple[Sweep, bool]:
    """Check every job of the sweep (``plan``), then commit the sweep and all its jobs, queued, in
    one transaction and wake the dispatcher, which sends them; returns ``(sweep, created)`` (not
    created: the idempotency key's first request by the same owner made it). Trials the result
    cache answers are created succeeded, copies of their earlier runs; only the others are packed
    and sent. An adaptive sweep is created with its first pass's trials (``create_search``)."""
    if problems := body.search_problems():
        raise InvalidFields([field_error(("body", name), msg, kind) for name, msg, kind in problems])
    if body.adaptive:
        sweep, created = create_search(session, body, principal, settings, idempotency_key)
    else:
        if body.lr_from is not None:
            body = with_suggested_lrs(session, body, principal)
        trials, packs = plan(body, settings)
        jobs = new_jobs(
            session,
            trials,
            packs,
            owner=principal.owner,
            execution=body.execution,
            use_cache=body.cache,
            settings=settings,
        )
        sweep, created = repository.create_sweep(
            session, _definition(body, principal), jobs, idempotency_key=idempotency_key
        )
    session.commit()
    dispatcher.wake()  # a retry too: whatever the first request left unsent goes now
    return sweep, created


def create_search(
    session: Session, body: SweepCreate, principal: Principal, settings: Settings, idempotency_key: str | None
) -> tuple[Sweep, bool]:
    """An adaptive sweep and, in the same transaction, its first pass (``controller.first_pass``):
    the response shows its first trials queued. Its budget times its seeds is capped like a
    grid sweep's jobs; a first pass whose every trial is invalid is a 422 naming them."""
    assert body.budget is not None
    jobs = body.budget * len(body.seeds or [0])
    if jobs > settings.max_sweep_jobs:
        msg = f"{body.budget} trials x {len(body.seeds or [0])} seeds is {jobs} jobs; this server's cap is {settings.max_sweep_jobs}"
        raise InvalidFields([field_error(("body", "budget"), msg, "resource_cap")])
    sweep, created = repository.create_sweep(session, _definition(body, principal), [], idempotency_key=idempotency_key)
    if created:
        try:
            controller.first_pass(session, sweep, settings)
        except SweepInvalid as exc:
            raise InvalidFields(_combination_errors(exc.problems)) from exc
    return sweep, created


def _definition(body: SweepCreate, principal: Principal) -> repository.NewSweep:
    """The sweep's row as stored: an adaptive one with the search its controller runs."""
    adaptive: dict[str, Any] = {}
    if body.adaptive:
        assert body.space is not None
        adaptive = {
            "space": dump_space(body.space),
            "budget": body.budget,
            "parallelism": body.parallelism,
            "objective": body.objective.resolved(),
            "sampler_seed": body.sampler_seed,
            "pruner": body.pruner.model_dump(exclude_none=True) if body.pruner is not None else None,
        }
    return repository.NewSweep(
        owner=principal.owner,
        name=body.name,
        template=dict(encode(body.base)),
        search=body.search_definition(),
        execution=body.execution,
        tags=body.tags,
        cache=body.cache,
        strategy=body.strategy,
        adaptive=adaptive,
    )


def with_suggested_lrs(session: Session, body: SweepCreate, principal: Principal) -> SweepCreate:
    """``body`` with ``optimizer.lr`` gridded around its ``lr_from`` range test's suggestion."""
    assert body.lr_from is not None
    from service.analysis.service import lr_suggestion  # scipy stays out of the API's start-up

    searched = [path for grid in body.grids() for path in grid]
    searched += list(body.random.params) if body.random is not None else []
    # A whole optimizer object in the search brings its own lr, which lr_from would override.
    if "optimizer.lr" in searched or "optimizer" in searched:
        msg = "lr_from sets optimizer.lr; search neither optimizer.lr nor whole optimizer objects with it"
        raise InvalidFields([field_error(("body", "lr_from"), msg, "lr_conflict")])
    try:
        base: dict[str, Any] | None = stored_spec(load_spec(body.base))
    except ValueError:  # a base the search completes: plan() checks every expansion
        base = None
    suggested = lr_suggestion(session, body.lr_from.job_id, principal, body.lr_from.suggestion, base)
    lrs = body.lr_from.grid(suggested)
    grids = [{**grid, "optimizer.lr": lrs} for grid in body.grids()]
    return body.model_copy(update={"grid": grids if isinstance(body.grid, list) else grids[0]})


def plan(body: SweepCreate, settings: Settings) -> tuple[list[Trial], list[str | None]]:
    """Every job of the sweep and its pack id (None: it runs alone), each job checked as a single
    job would be (schema, resource caps, this host). Any problem is an ``InvalidFields`` naming
    the combinations (up to 10) and their fields; nothing is created."""
    total = count(body)
    if total > settings.max_sweep_jobs:
        msg = f"the sweep expands to {total} jobs; this server's cap is {settings.max_sweep_jobs}"
        raise InvalidFields([field_error(("body", "search"), msg, "resource_cap")])
    try:
        trials = expand(body)
        rejected = []
        for trial in trials:
            if problems := spec_problems(trial.spec, settings):
                rejected.append(problem(trial.combination(), [(("spec", *p.loc), p.msg) for p in problems]))
        if rejected:
            raise SweepInvalid(rejected[:10])
        return trials, plan_packs(trials, body.execution, settings.pack_max)
    except SweepInvalid as exc:
        raise InvalidFields(_combination_errors(exc.problems)) from exc


def _combination_errors(problems: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each failing combination's fields as 422 detail entries."""
    return [
        field_error(
            ("body", "search"),
            f"combination {json.dumps(p['combination'], sort_keys=True)}: {error['field']}: {error['msg']}",
            "invalid_combination",
            field=error["field"],
            combination=p["combination"],
        )
        for p in problems
        for error in p["errors"]
    ]


def describe(
    session: Session,
    sweep: Sweep,
    counts: dict[str, int] | None = None,
    *,
    with_best: bool = True,
    cached: int | None = None,
    trials: int | None = None,
) -> SweepOut:
    """The sweep with its jobs per status, how many the result cache served, and (``with_best``)
    its best configuration so far: the val_loss leaderboard's top row, else train_loss's; an
    adaptive one with its trials created (``trials``, counted here when not given) and its best
    trial."""
    best_trial = None
    if sweep.budget is not None and with_best:
        # The trials before the counts (see ``sweep_done``), and the row's n_jobs after them.
        trials, best_trial = _search_state(session, sweep)
        session.refresh(sweep, ["n_jobs"])
    elif sweep.budget is not None and trials is None:
        trials = stored_trials.trial_counts(session, [sweep.id])[sweep.id]
    if counts is None:
        counts = repository.status_counts(session, [sweep.id])[sweep.id]
    if cached is None:
        cached = repository.cached_counts(session, [sweep.id])[sweep.id]
    best = None
    # Only succeeded jobs have a mean: a sweep just created (the POST's answer) needs no query.
    for metric in ("val_loss", "train_loss") if with_best and counts.get(JobStatus.succeeded.value) else ():
        board = repository.leaderboard(session, sweep.id, repository.LeaderboardQuery(metric=metric))
        if board and board[0]["mean"] is not None:
            best = LeaderboardRow(**board[0])
            break
    return SweepOut(
        id=sweep.id,
        owner=sweep.owner,
        name=sweep.name,
        created_at=sweep.created_at,
        n_jobs=sweep.n_jobs,
        counts=counts,
        cached=cached,
        done=sweep_done(counts, sweep.budget, trials, sweep.search_stopped_at is not None),
        best=best,
        template=sweep.template,
        search=sweep.search,
        execution=sweep.execution,
        strategy=describe_strategy(sweep),
        budget=sweep.budget,
        trials=trials if sweep.budget is not None else None,
        parallelism=sweep.parallelism,
        objective=sweep.objective,
        search_stopped_at=sweep.search_stopped_at,
        best_trial=best_trial,
    )


def sweep_done(counts: dict[str, int], budget: int | None, trials: int | None, stopped: bool) -> bool:
    """No job is queued or running and, for an adaptive sweep, no trial is left to create: all
    of its budget was, or a cancel stopped its search. Between two passes of its controller an
    adaptive sweep has no job in flight and is not done.

    Read ``trials`` before ``counts``: a pass commits its trials with their jobs, so counts read
    after a trial count include that count's jobs. The other order (counts, then a pass commits,
    then trials) would see the last trials and none of their queued jobs: done too early (on
    PostgreSQL, where each statement sees what committed before it)."""
    idle = counts["queued"] + counts["running"] == 0
    return idle and (budget is None or stopped or (trials or 0) >= budget)


def _search_state(session: Session, sweep: Sweep) -> tuple[int, TrialOut | None]:
    """An adaptive sweep's trials created and its best trial: the complete one with the best
    finite value (the first of equals), with its curve (read for it alone), or None."""
    search = controller.Search.of(sweep)
    known = controller.records(session, search, curves=False)
    scored = [r for r in known if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
    if not scored:
        return len(known), None
    sign = -1.0 if search.direction == "maximize" else 1.0
    best = min(scored, key=lambda r: (sign * (r.value or 0.0), r.number))
    curve = stored_trials.intermediate(session, sweep.id, search.objective["metric"], number=best.number)
    return len(known), trial_out(dataclasses.replace(best, intermediate=dict(curve.get(best.number, {}))))


def trial_out(record: TrialRecord) -> TrialOut:
    """A trial as the API shows it: its value JSON-safe (a diverged mean is "Infinity")."""
    return TrialOut(
        number=record.number,
        params=record.params,
        state=record.state,  # type: ignore[arg-type]  # never pruned: no pruner yet
        value=encode(record.value),
        intermediate=record.intermediate,
        job_ids=record.user_attrs.get("job_ids", []),
        error=record.user_attrs.get("error"),
    )


def get_sweep(session: Session, sweep_id: int, principal: Principal, *, with_best: bool = True) -> SweepOut:
    return describe(session, repository.get_sweep(session, sweep_id, principal), with_best=with_best)


def trials(session: Session, sweep_id: int, principal: Principal) -> SweepTrials:
    """Every trial of an adaptive sweep as the controller sees it (none for a grid or random
    sweep): params, state, value, intermediate values, job ids; and its space and objective,
    from which ``client.study`` rebuilds an Optuna study."""
    sweep = repository.get_sweep(session, sweep_id, principal)
    if sweep.budget is None:
        return SweepTrials(sweep_id=sweep.id, strategy=describe_strategy(sweep), objective=None, space=None, trials=[])
    search = controller.Search.of(sweep)
    known = controller.records(session, search)
    return SweepTrials(
        sweep_id=sweep.id,
        strategy=describe_strategy(sweep),
        objective=sweep.objective,
        space=sweep.space,
        trials=[trial_out(record) for record in known],
    )


def describe_strategy(sweep: Sweep) -> str:
    """The strategy a sweep searches by: as named, else grid or random by its search."""
    return sweep.strategy or ("random" if "random" in sweep.search else "grid")


def watch(session: Session, sweep_id: int, principal: Principal) -> TokenReader:
    """A reader of the sweep's state token (one grouped count; an adaptive sweep's trials and
    whether it was stopped, one more) for a long-poll, once ``SweepNotFound`` is ruled out (its
    owner never changes). The request's session is committed and closed before the wait: it
    holds no pooled connection meanwhile, and the answer after the wait reads fresh rows, not
    objects loaded before it."""
    budget = repository.get_sweep(session, sweep_id, principal).budget
    session.commit()
    session.close()

    def read(each: Session) -> tuple[str, bool, int | None]:
        if budget is None:
            counts = repository.status_counts(each, [sweep_id])[sweep_id]
            unfinished = counts[JobStatus.queued.value] + counts[JobStatus.running.value]
            return sweep_token(counts), sweep_done(counts, None, None, False), unfinished
        trials, stopped = stored_trials.progress(each, sweep_id)  # before the counts: see sweep_done
        counts = repository.status_counts(each, [sweep_id])[sweep_id]
        return sweep_token(counts, trials), sweep_done(counts, budget, trials, stopped), None

    return read


def list_sweeps(
    session: Session, principal: Principal, *, owner: str | None = None, limit: int, cursor: str | None = None
) -> SweepPage:
    """The sweeps ``principal`` sees (of ``owner`` only, when given), newest first, with their
    counts (not their best configuration), one page at a time."""
    before = None
    if cursor is not None:
        before = repository.decode_cursor(cursor)
    sweeps = repository.list_sweeps(session, principal, owner=owner, limit=limit + 1, before_id=before)
    page = sweeps[:limit]
    ids = [sweep.id for sweep in page]
    trials = stored_trials.trial_counts(session, ids)  # before the counts: see sweep_done
    counts = repository.status_counts(session, ids)
    cached = repository.cached_counts(session, ids)
    return SweepPage(
        items=[
            describe(
                session, sweep, counts[sweep.id], with_best=False, cached=cached[sweep.id], trials=trials[sweep.id]
            )
            for sweep in page
        ],
        next_cursor=str(page[-1].id) if len(sweeps) > limit else None,
    )


def cancel_sweep(session: Session, sweep_id: int, principal: Principal) -> SweepOut:
    """Queued jobs never run; running ones stop at their next epoch boundary; finished ones stay;
    an adaptive sweep's search stops (first: on PostgreSQL a controller pass storing trials holds
    the sweep's row, and this waits for it, then cancels the jobs it created too)."""
    sweep = repository.get_sweep(session, sweep_id, principal)
    stored_trials.stop(session, sweep_id)
    transitions.cancel_sweep_jobs(session, sweep_id)
    session.commit()
    events.publish(session.get_bind().engine.url, events.CHANGED, [(sweep_id, None)])  # wakes its long-polls
    return describe(session, sweep)


def leaderboard(
    session: Session,
    sweep_id: int,
    principal: Principal,
    *,
    metric: str = "val_loss",
    mode: str | None = None,
    which: str = "best",
) -> Leaderboard:
    """Configurations ranked by the mean of the metric over seeds (see ``repository.leaderboard``)."""
    repository.get_sweep(session, sweep_id, principal)
    query = repository.LeaderboardQuery(metric=metric, mode=mode, which=which)
    rows = repository.leaderboard(session, sweep_id, query)
    return Leaderboard(
        sweep_id=sweep_id,
        metric=metric,
        mode=query.resolved_mode(),
        which=which,
        rows=[LeaderboardRow(**row) for row in rows],
    )


def sweep_metrics(
    session: Session,
    sweep_id: int,
    principal: Principal,
    columns: str,
    *,
    settings: Settings,
    as_csv: bool = False,
    if_none_match: str | None = None,
) -> Curves:
    """The metric ``columns`` (comma-separated) of every epoch of every job of the sweep, and (as
    JSON) each job's config, seed and status, to label its curve.

    The owner check comes first. A finished sweep's curves never change: they get a strong ETag
    (``If-None-Match`` naming it: not modified, no body) and are kept encoded in a cache bounded
    by ``curve_cache_bytes``; a running sweep's are read afresh each time, with no ETag. A sweep
    of more than ``curve_stream_rows`` rows streams, never held whole (nor cached).
    """
    repository.get_sweep(session, sweep_id, principal)
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    query = curves.CurveQuery(sweep_id, repository.curve_columns(wanted), as_csv)
    state = repository.curve_state(session, sweep_id)
    etag = query.etag(state) if state.finished else None
    if etag is not None and etag_matches(if_none_match, etag):
        return Curves(None, query.media_type, etag)
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    if state.rows > settings.curve_stream_rows:
        job_ids = repository.job_ids(session, sweep_id)
        session.commit()  # the stream reads on connections of its own; this one (SQLite: its lock) goes now
        return Curves(curves.stream(engine, query, job_ids), query.media_type, etag)
    cache = curves.cache_for(engine, settings.curve_cache_bytes)
    body = cache.get(etag) if etag is not None else None
    if body is None:
        body = curves.encode(repository.CurveReader.of_session(session), query, state)
        if etag is not None:
            cache.put(etag, body)
    return Curves(body, query.media_type, etag)
