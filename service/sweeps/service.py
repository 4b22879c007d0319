"""The rules of /v1/sweeps: the cap on a sweep's size, its expansion checked job by job like a
single job, its packing plan, creation in one transaction, cancellation, and the views over its
jobs (counts, best configuration, leaderboard, curves), each for one principal: it owns what it
creates and sees only its own sweeps unless it is an admin."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from optim_engine.spec import variant_names
from service import broker, cache
from service.admission import spec_problems
from service.auth.principal import Principal
from service.db import result_cache, transitions
from service.db.models import Sweep
from service.dispatcher import Dispatcher
from service.errors import InvalidFields, field_error
from service.longpoll import TokenReader, sweep_token
from service.responses import etag_matches
from service.settings import Settings
from service.spec_codec import encode, load_spec, stored_spec
from service.sweeps import curves, repository
from service.sweeps.curves import Curves
from service.sweeps.expansion import SweepInvalid, Trial, count, expand, plan_packs, problem
from service.sweeps.schemas import Leaderboard, LeaderboardRow, SweepCreate, SweepOut, SweepPage

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
    cache answers (``cached``) are created succeeded, copies of their earlier runs; only the
    others are packed and sent."""
    if body.lr_from is not None:
        body = with_suggested_lrs(session, body, principal)
    trials, packs = plan(body, settings)
    keys, sources = cached(session, trials, body, principal, settings)
    if sources:
        packs = _packs_of_misses(trials, packs, [key in sources for key in keys], body.execution, settings)
    definition = repository.NewSweep(
        owner=principal.owner,
        name=body.name,
        template=dict(encode(body.base)),
        search=body.search_definition(),
        execution=body.execution,
        tags=body.tags,
    )
    jobs = [
        repository.NewJob(
            spec=stored_spec(trial.spec),
            spec_hash=trial.spec.spec_hash(),
            optimizer=variant_names(type(trial.spec.optimizer))[0],
            queue=broker.queue_for(trial.spec.device, settings),
            config=dict(encode(trial.config)),
            config_hash=trial.config_hash,
            pack_id=pack_id,
            cached_from=sources.get(key) if key is not None else None,
            cache_key=key if key in sources else None,
        )
        for trial, pack_id, key in zip(trials, packs, keys, strict=True)
    ]
    sweep, created = repository.create_sweep(session, definition, jobs, idempotency_key=idempotency_key)
    session.commit()
    dispatcher.wake()  # a retry too: whatever the first request left unsent goes now
    return sweep, created


def cached(
    session: Session, trials: Sequence[Trial], body: SweepCreate, principal: Principal, settings: Settings
) -> tuple[list[str | None], dict[str, int]]:
    """Each trial's result-cache key (None: no lookup: ``cache`` off for the sweep or the server,
    or torch not installed here) and, by key, the earlier run of the same owner that answers it."""
    installed = cache.installed() if body.cache and settings.result_cache else None
    if installed is None:
        return [None] * len(trials), {}
    keys: list[str | None] = [
        installed.expected(t.spec.spec_hash(), t.spec.device, broker.queue_for(t.spec.device, settings)) for t in trials
    ]
    return keys, result_cache.find_sources(session, principal.owner, keys)


def _packs_of_misses(
    trials: Sequence[Trial], packs: Sequence[str | None], hit: Sequence[bool], execution: str, settings: Settings
) -> list[str | None]:
    """The pack plan redone over the trials that train (a served trial is in no pack): packs
    are filled with the misses only (under ``auto``, a miss left alone with its pack key runs alone)."""
    misses = [i for i, served in enumerate(hit) if not served]
    planned = plan_packs([trials[i] for i in misses], execution, settings.pack_max)
    repacked: list[str | None] = [None] * len(packs)
    for i, pack_id in zip(misses, planned, strict=True):
        repacked[i] = pack_id
    return repacked


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
) -> SweepOut:
    """The sweep with its jobs per status, how many the result cache served, and (``with_best``)
    its best configuration so far: the val_loss leaderboard's top row, else train_loss's."""
    if counts is None:
        counts = repository.status_counts(session, [sweep.id])[sweep.id]
    if cached is None:
        cached = repository.cached_counts(session, [sweep.id])[sweep.id]
    best = None
    for metric in ("val_loss", "train_loss") if with_best else ():
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
        done=counts["queued"] + counts["running"] == 0,
        best=best,
        template=sweep.template,
        search=sweep.search,
        execution=sweep.execution,
    )


def get_sweep(session: Session, sweep_id: int, principal: Principal) -> SweepOut:
    return describe(session, repository.get_sweep(session, sweep_id, principal))


def watch(session: Session, sweep_id: int, principal: Principal) -> TokenReader:
    """A reader of the sweep's state token (one grouped count) for a long-poll, once
    ``SweepNotFound`` is ruled out (its owner never changes). The request's session is committed
    and closed before the wait: it holds no pooled connection meanwhile, and the answer after the
    wait reads fresh rows, not objects loaded before it."""
    repository.get_sweep(session, sweep_id, principal)
    session.commit()
    session.close()

    def read(each: Session) -> tuple[str, bool]:
        counts = repository.status_counts(each, [sweep_id])[sweep_id]
        return sweep_token(counts), counts["queued"] + counts["running"] == 0

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
    counts = repository.status_counts(session, [sweep.id for sweep in page])
    cached = repository.cached_counts(session, [sweep.id for sweep in page])
    return SweepPage(
        items=[describe(session, sweep, counts[sweep.id], with_best=False, cached=cached[sweep.id]) for sweep in page],
        next_cursor=str(page[-1].id) if len(sweeps) > limit else None,
    )


def cancel_sweep(session: Session, sweep_id: int, principal: Principal) -> SweepOut:
    """Queued jobs never run; running ones stop at their next epoch boundary; finished ones stay."""
    sweep = repository.get_sweep(session, sweep_id, principal)
    transitions.cancel_sweep_jobs(session, sweep_id)
    session.commit()
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
