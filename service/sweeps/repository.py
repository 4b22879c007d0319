"""SQL for /v1/sweeps: atomic creation of a sweep's jobs, reads (limited to what the principal
may see, ``visible_to``) and status counts, the leaderboard computed in the database, and bulk
curves read through the driver's cursor."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, case, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from optim_engine.results import METRIC_NAMES, SUMMARY_METRICS
from service.auth.principal import Principal, visible_to
from service.db import result_cache
from service.db.models import Job, JobStatus, JobTag, Sweep
from service.db.session import utcnow
from service.errors import IdempotencyConflict, InvalidFields, InvalidRequest, SweepNotFound, field_error
from service.schemas import MAX_ID


@dataclass(frozen=True)
class NewSweep:
    """A sweep to insert: its owner (its jobs get the same) and its definition, as stored; an
    adaptive one with the search its controller runs (``adaptive``: the columns of
    ``Sweep.strategy`` to ``Sweep.sampler_seed``)."""

    owner: str
    name: str | None
    template: dict[str, Any]
    search: dict[str, Any]
    execution: str
    tags: Sequence[str] = ()
    cache: bool = True
    strategy: str | None = None
    adaptive: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewJob:
    """One of a new sweep's jobs, as stored (spec and config JSON-safe)."""

    spec: dict[str, Any]
    spec_hash: str
    optimizer: str
    queue: str
    config: dict[str, Any]
    config_hash: str
    pack_id: str | None = None
    cached_from: int | None = None  # a result-cache hit: created succeeded, a copy of this job
    cache_key: str | None = None
    trial_number: int | None = None  # an adaptive sweep's trial


def create_sweep(
    session: Session, sweep: NewSweep, jobs: Sequence[NewJob], *, idempotency_key: str | None = None
) -> tuple[Sweep, bool]:
    """Insert the sweep and all its jobs (queued, not yet sent; those with ``cached_from``
    succeeded, with copies of their source's results) in the session's transaction; returns
    ``(sweep, created)``. Not created: the idempotency key names an existing sweep of the
    same owner with the same definition (a different one is an ``IdempotencyConflict``)."""
    existing = _by_idempotency_key(session, idempotency_key, sweep)
    if existing is not None:
        return existing, False
    now = utcnow()
    row = Sweep(
        owner=sweep.owner,
        name=sweep.name,
        template=sweep.template,
        search=sweep.search,
        created_at=now,
        n_jobs=len(jobs),
        idempotency_key=idempotency_key,
        execution=sweep.execution,
        tags=list(sweep.tags),
        cache=sweep.cache,
        strategy=sweep.strategy,
        **sweep.adaptive,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # a concurrent POST with the same key won
        return create_sweep(session, sweep, jobs, idempotency_key=idempotency_key)
    insert_jobs(session, row, jobs, now)
    return row, True


def insert_jobs(session: Session, sweep: Sweep, jobs: Sequence[NewJob], now: dt.datetime | None = None) -> list[int]:
    """Insert jobs of ``sweep`` (queued, not yet sent; those with ``cached_from`` succeeded, with
    copies of their source's results), with the sweep's owner, name and tags; returns their ids.
    The caller counts them into ``sweep.n_jobs``."""
    if not jobs:
        return []
    now = now or utcnow()
    fixed = {"sweep_id": sweep.id, "owner": sweep.owner, "name": sweep.name, "created_at": now, "enqueued_at": None}
    fixed |= {"attempt": 0, "cancel_requested": False, "epochs_done": 0}
    # One batched INSERT ... RETURNING, not a flush per job. Each job's fields as they are: asdict()
    # deep-copied every spec, a third of a 60-job sweep's POST.
    ids = session.scalars(
        insert(Job).returning(Job.id, sort_by_parameter_order=True),
        [fixed | vars(job) | result_cache.created_state(job.cached_from, now) for job in jobs],
    ).all()
    result_cache.copy_results(session, [i for i, job in zip(ids, jobs, strict=True) if job.cached_from is not None])
    if sweep.tags:
        tags = dict.fromkeys(sweep.tags)
        session.execute(insert(JobTag), [{"job_id": job_id, "tag": tag} for job_id in ids for tag in tags])
    return list(ids)


def _by_idempotency_key(session: Session, key: str | None, sweep: NewSweep) -> Sweep | None:
    if key is None:
        return None
    existing = session.scalars(
        select(Sweep).where(Sweep.owner == sweep.owner, Sweep.idempotency_key == key)
    ).one_or_none()
    if existing is not None and (existing.template, existing.search, existing.execution) != (
        sweep.template,
        sweep.search,
        sweep.execution,
    ):
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for sweep {existing.id}")
    return existing


def get_sweep(session: Session, sweep_id: int, principal: Principal) -> Sweep:
    """The sweep, if ``principal`` may see it; else ``SweepNotFound``, as if it did not exist.
    Its jobs share its owner, so a sweep seen is a sweep whose jobs may be read."""
    query = select(Sweep).where(Sweep.id == sweep_id, visible_to(principal, Sweep.owner))
    sweep = session.scalars(query).one_or_none()
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def decode_cursor(cursor: str) -> int:
    """The id a next-page cursor of ``list_sweeps`` carries (the last id of the page before);
    anything else is a 422 naming the cursor, never a query that fails in the database."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 10 and 1 <= int(cursor) <= MAX_ID):
        raise InvalidFields([field_error(("query", "cursor"), "not a cursor from this list", "invalid_cursor")])
    return int(cursor)


def list_sweeps(
    session: Session, principal: Principal, *, owner: str | None = None, limit: int, before_id: int | None
) -> list[Sweep]:
    """Newest first, those ``principal`` sees (of ``owner`` only, when given)."""
    query = select(Sweep).where(visible_to(principal, Sweep.owner)).order_by(Sweep.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(Sweep.owner == owner)
    if before_id is not None:
        query = query.where(Sweep.id < before_id)
    return list(session.scalars(query))


def status_counts(session: Session, sweep_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Jobs per status of each sweep, in one grouped query for a whole page of sweeps."""
    rows = session.execute(
        select(Job.sweep_id, Job.status, func.count())
        .where(Job.sweep_id.in_(list(sweep_ids)))
        .group_by(Job.sweep_id, Job.status)
    )
    found = {(sweep_id, status): n for sweep_id, status, n in rows}
    return {
        sweep_id: {status.value: found.get((sweep_id, status.value), 0) for status in JobStatus}
        for sweep_id in sweep_ids
    }


def cached_counts(session: Session, sweep_ids: Sequence[int]) -> dict[int, int]:
    """How many jobs of each sweep the result cache served (they count as succeeded too)."""
    rows = session.execute(
        select(Job.sweep_id, func.count(Job.cached_from))
        .where(Job.sweep_id.in_(list(sweep_ids)), Job.status == JobStatus.succeeded)
        .group_by(Job.sweep_id)
    )
    found = {sweep_id: int(n) for sweep_id, n in rows}
    return {sweep_id: found.get(sweep_id, 0) for sweep_id in sweep_ids}


# --- the leaderboard ---------------------------------------------------------------------------

BETTER: Mapping[str, str] = {m.name: m.best for m in SUMMARY_METRICS if m.best is not None}
"""Each summary metric's better direction (min or max): the leaderboard's metrics."""


@dataclass(frozen=True)
class LeaderboardQuery:
    metric: str = "val_loss"
    mode: str | None = None  # default: the metric's better direction
    which: str = "best"  # best epoch's value or final epoch's

    def resolved_mode(self) -> str:
        return self.mode or BETTER[self.metric]


def leaderboard(session: Session, sweep_id: int, query: LeaderboardQuery) -> list[dict[str, Any]]:
    """One row per configuration (jobs that differ only in seed), ranked by the mean.

    The statistics over succeeded jobs come from one GROUP BY over the jobs' summary columns
    (best_* / final_*), never from loading epoch rows. The caller has checked that the sweep
    exists.
    """
    if query.metric not in BETTER or query.which not in ("best", "final"):
        raise InvalidRequest(f"metric: use one of {sorted(BETTER)}, which: best or final")
    column = getattr(Job, f"{query.which}_{query.metric}")
    value = case((Job.status == JobStatus.succeeded, column))
    status = Job.status
    rows = session.execute(
        select(
            Job.config_hash,
            func.min(Job.id).label("first_job"),
            func.count().label("jobs"),
            func.count(value).label("n"),
            func.avg(value).label("mean"),
            func.sum(value * value).label("sum_sq"),
            func.min(value).label("min"),
            func.max(value).label("max"),
            func.sum(case((status == JobStatus.diverged, 1), else_=0)).label("diverged"),
            func.sum(case((status == JobStatus.failed, 1), else_=0)).label("failed"),
            func.sum(case((status == JobStatus.pruned, 1), else_=0)).label("pruned"),
            func.sum(case((status.in_([JobStatus.queued, JobStatus.running]), 1), else_=0)).label("pending"),
            func.avg(case((status == JobStatus.succeeded, Job.wall_seconds))).label("mean_wall_seconds"),
        )
        .where(Job.sweep_id == sweep_id)
        .group_by(Job.config_hash)
    ).all()
    first_jobs = session.execute(select(Job.id, Job.config).where(Job.id.in_([r.first_job for r in rows])))
    configs: dict[int, dict[str, Any]] = {job_id: config for job_id, config in first_jobs}
    board = [_statistics(row, configs.get(row.first_job) or {}) for row in rows]
    descending = query.resolved_mode() == "max"
    # A configuration a pruner stopped ranks after every one that was not, whatever the mean of
    # its seeds that happened to finish: it was tried and lost.
    board.sort(
        key=lambda r: (r["mean"] is None, r["pruned"] > 0, -(r["mean"] or 0) if descending else (r["mean"] or 0))
    )
    for rank, row in enumerate(board, start=1):
        row["rank"] = rank
    return board


def _statistics(row: Any, config: dict[str, Any]) -> dict[str, Any]:
    n, mean = int(row.n), row.mean
    std = ci = None
    if n >= 2 and mean is not None:
        variance = max((float(row.sum_sq) - n * float(mean) ** 2) / (n - 1), 0.0)
        std = math.sqrt(variance)
        ci = student_t_975(n - 1) * std / math.sqrt(n)
    return {
        "config": config,
        "config_hash": row.config_hash,
        "jobs": int(row.jobs),
        "n": n,
        "mean": float(mean) if mean is not None else None,
        "std": std,
        "ci95_low": float(mean) - ci if ci is not None else None,
        "ci95_high": float(mean) + ci if ci is not None else None,
        "min": row.min,
        "max": row.max,
        "diverged": int(row.diverged or 0),
        "failed": int(row.failed or 0),
        "pruned": int(row.pruned or 0),
        "pending": int(row.pending or 0),
        "mean_wall_seconds": float(row.mean_wall_seconds) if row.mean_wall_seconds is not None else None,
    }


@lru_cache(maxsize=1024)
def student_t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95% CI)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


# --- curves in bulk ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveState:
    """What a sweep's bulk curves depend on, read from its jobs in one aggregate (never from its
    epoch rows): how many jobs and which ids, how many epoch rows they wrote (``epochs_done`` is
    each job's last epoch, written 1..N), when the last one finished, and how many still run."""

    jobs: int
    unfinished: int
    first_job: int | None
    last_job: int | None
    rows: int
    finished_at: Any

    @property
    def finished(self) -> bool:
        """No job queued or running: the curves are final. A terminal status never moves
        (``transitions.LEGAL``) and a stale attempt's writes are fenced off, so nothing writes
        the sweep's rows again; the other fields change if a job is added or rows are rewritten
        through ``epochs.refresh_summary``."""
        return self.unfinished == 0

    def fingerprint(self) -> str:
        return f"{self.jobs}:{self.first_job}:{self.last_job}:{self.rows}:{self.finished_at}"


def curve_state(session: Session, sweep_id: int) -> CurveState:
    """The sweep's ``CurveState`` (its jobs only: under a millisecond for 500 jobs)."""
    pending = case((Job.status.in_([JobStatus.queued, JobStatus.running]), 1), else_=0)
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(pending), 0),
            func.min(Job.id),
            func.max(Job.id),
            func.coalesce(func.sum(Job.epochs_done), 0),
            func.max(Job.finished_at),
        ).where(Job.sweep_id == sweep_id)
    ).one()
    jobs, unfinished, first, last, rows, finished_at = row
    return CurveState(int(jobs), int(unfinished), first, last, int(rows), finished_at)


def job_ids(session: Session, sweep_id: int) -> list[int]:
    """The sweep's job ids, ascending (a streamed answer's chunks are ranges of them)."""
    return list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id).order_by(Job.id)))


def curve_columns(columns: Sequence[str]) -> list[str]:
    """The columns of a bulk-curves row: job id, epoch, then ``columns``, each a known metric
    (they are spliced into SQL, so this allow-list is what keeps it safe)."""
    bad = [c for c in columns if c not in METRIC_NAMES]
    if bad:
        raise InvalidRequest(f"columns: unknown {bad}; use {list(METRIC_NAMES)}")
    return ["job_id", "epoch", *columns]


# The jobs' labels as a JSON array the database writes: the same keys and values as loading the
# rows and encoding them here (tests/service/test_sweep_curves.py holds the two equal).
_JOBS_JSON = {
    "postgresql": (
        "SELECT json_agg(json_build_object('job_id', id, 'config_hash', config_hash, 'config', config, "
        "'status', status, 'seed', spec -> 'seed') ORDER BY id)::text "
        "FROM jobs WHERE sweep_id = %s AND id BETWEEN %s AND %s"
    ),
    "sqlite": (
        "SELECT json_group_array(json_object('job_id', id, 'config_hash', config_hash, 'config', json(config), "
        "'status', status, 'seed', json_extract(spec, '$.seed'))) "
        "FROM (SELECT * FROM jobs WHERE sweep_id = ? AND id BETWEEN ? AND ? ORDER BY id)"
    ),
}


# Which epoch rows: of the jobs a subquery lists, wanted in the primary key's order, which one
# index scan of epoch_metrics' key gives for free. PostgreSQL plans "IN (subquery)" over 50,000
# rows as a hash join and a sort that spills to disk; "= ANY(ARRAY(subquery))" is that index scan
# once the tables are analyzed, and with enable_sort off (CurveReader.rows) also before: 6.6 ms
# against 21 on the server for a freshly written sweep. SQLite walks the key for "IN (subquery)".
_ROWS_OF_JOBS = {
    "postgresql": "job_id = ANY(ARRAY(SELECT id FROM jobs WHERE sweep_id = %s AND id BETWEEN %s AND %s))",
    "sqlite": "job_id IN (SELECT id FROM jobs WHERE sweep_id = ? AND id BETWEEN ? AND ?)",
}


class CurveReader:
    """Reads bulk curves through the driver's own cursor, past SQLAlchemy's result processing
    (for 50,000 rows it costs more than the query itself).

    Rows come in ``epoch_metrics``' primary key order, no sort step (``_ROWS_OF_JOBS``).
    PostgreSQL sends them in binary: a float8 arrives as the exact double, no text to parse,
    which measured faster than the server writing the JSON (json_agg or string_agg: its float8
    output and the text cost more than orjson here). SQLite's ``json_array`` writes a REAL with
    15 significant digits, which loses precision, so its rows are tuples too; only the jobs'
    labels come as JSON text from both.
    """

    def __init__(self, connection: Any, dialect: str) -> None:
        self.connection = connection  # a DBAPI connection (sqlite3 or psycopg)
        self.dialect = dialect

    @classmethod
    def of_session(cls, session: Session) -> CurveReader:
        connection = session.connection()
        return cls(connection.connection, connection.dialect.name)

    def rows(self, sweep_id: int, names: Sequence[str], first: int, last: int) -> list[tuple[Any, ...]]:
        """The epoch rows (``names``, from ``curve_columns``) of the sweep's jobs with ids from
        ``first`` to ``last``, ordered by job and epoch; NULL (a non-finite value) is None."""
        of_jobs = _ROWS_OF_JOBS[self.dialect]
        sql = f"SELECT {', '.join(names)} FROM epoch_metrics WHERE {of_jobs} ORDER BY job_id, epoch"  # noqa: S608
        postgresql = self.dialect == "postgresql"
        cursor = self.connection.cursor(**({"binary": True} if postgresql else {}))
        try:
            if postgresql:  # for this transaction only: the request's, or the stream's chunk's
                cursor.execute("SET LOCAL enable_sort = off")
            cursor.execute(sql, (sweep_id, first, last))
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def jobs_json(self, sweep_id: int, first: int, last: int) -> bytes:
        """A JSON array of the jobs with ids from ``first`` to ``last``: each one's ``job_id``,
        ``config_hash``, ``config``, ``status`` and ``seed`` (to label its curve), by id."""
        cursor = self.connection.cursor()
        try:
            cursor.execute(_JOBS_JSON[self.dialect], (sweep_id, first, last))
            (text,) = cursor.fetchone()
        finally:
            cursor.close()
        return text.encode() if text is not None else b"[]"


@contextmanager
def curve_reader(engine: Engine) -> Iterator[CurveReader]:
    """A reader on a pooled connection of its own, outside any session: a streamed answer reads
    after its request's session is done. No ``BEGIN IMMEDIATE`` either: on SQLite each read is
    its own read transaction and never holds the writers' lock while a client downloads."""
    connection = engine.raw_connection()
    try:
        yield CurveReader(connection, engine.dialect.name)
    finally:
        connection.close()  # back to the pool, rolled back
