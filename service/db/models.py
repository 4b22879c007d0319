"""SQLAlchemy models: sweeps (and an adaptive sweep's trials), jobs (with summary columns for sorting), one
row per epoch, and API keys."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from optim_engine.results import METRIC_NAMES, SUMMARY_METRICS


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    diverged = "diverged"
    cancelled = "cancelled"
    pruned = "pruned"  # an adaptive sweep's pruner stopped it after an epoch; its rows stay


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.diverged, JobStatus.cancelled, JobStatus.pruned})


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps stored as naive UTC on every backend and read back as aware UTC.

    SQLite has no time zones; storing naive UTC everywhere keeps comparisons (heartbeat
    staleness, cursors) identical on SQLite and PostgreSQL.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None else None


JSONType = JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Sweep(Base):
    """A set of jobs expanded from one template spec and a search definition."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_sweeps_owner_idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Who created it: an API key's owner ('' while auth is off); only they and admins see it.
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    name: Mapped[str | None] = mapped_column(String(200))
    template: Mapped[dict[str, Any]]
    search: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime]
    n_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))  # unique per owner
    # How its jobs run: auto (packed where they can be), packed, or separate.
    execution: Mapped[str] = mapped_column(String(16), default="separate", server_default="separate")
    # The strategy the request named (null: grid or random, by its search). An adaptive search
    # (service/search/controller.py) has a space: its trials are created as results come in, up to
    # ``budget``, ``parallelism`` at a time, told the ``objective`` and sampled from ``sampler_seed``;
    # they get the sweep's ``tags`` and the result cache unless ``cache`` is false. ``controller``
    # holds the lease to create them until ``lease_until``; a cancel sets ``search_stopped_at``.
    strategy: Mapped[str | None] = mapped_column(String(16))
    space: Mapped[dict[str, Any] | None]
    budget: Mapped[int | None] = mapped_column(Integer)
    parallelism: Mapped[int | None] = mapped_column(Integer)
    objective: Mapped[dict[str, Any] | None]
    sampler_seed: Mapped[int | None] = mapped_column(Integer)
    tags: Mapped[list[str] | None] = mapped_column(JSONType)
    cache: Mapped[bool | None] = mapped_column(Boolean)
    controller: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[dt.datetime | None]
    search_stopped_at: Mapped[dt.datetime | None]
    # The pruner (service.search.pruners.PrunerConfig as JSON) the workers ask after each epoch.
    pruner: Mapped[dict[str, Any] | None]


class SweepTrial(Base):
    """One trial of an adaptive sweep: a configuration its controller asked Optuna for, trained once
    per seed by the jobs that carry its number. ``system_attrs`` is what the sampler wrote with it
    (``service.search.study.ask``). ``error`` says why a trial has no jobs: its configuration is not
    a valid spec. The primary key is the guard against a trial created twice: of two controllers
    that insert trial N, one transaction fails, and with it every job it would have created."""

    __tablename__ = "sweep_trials"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[dict[str, Any]]
    system_attrs: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]


SUMMARY_COLUMNS: tuple[str, ...] = tuple(
    f"{kind}_{metric.name}" for kind in ("final", "best") for metric in SUMMARY_METRICS
)
"""The job columns each summary metric gets: its last epoch's value and its best epoch's."""

# A declarative mixin with one nullable float column per summary column.
_SummaryColumns: type = type("_SummaryColumns", (), {name: mapped_column(Float) for name in SUMMARY_COLUMNS})


class Job(_SummaryColumns, Base):
    """One training run: its spec, where it is in its life, and a summary for fast sorting."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in JobStatus)})", name="status"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_sweep_status", "sweep_id", "status"),
        Index("ix_jobs_optimizer", "optimizer"),
        Index("ix_jobs_best_loss", "best_loss", "id"),
        Index("ix_jobs_final_val_loss", "final_val_loss", "id"),
        Index("ix_jobs_final_train_loss", "final_train_loss", "id"),
        Index("ix_jobs_final_val_accuracy", "final_val_accuracy", "id"),
        Index("ix_jobs_sweep_config", "sweep_id", "config_hash"),
        Index("ix_jobs_finished_at", "finished_at"),
        Index("ix_jobs_pack_id", "pack_id"),
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),  # the outbox: queued and not yet sent
        Index("ix_jobs_owner_created", "owner", "created_at"),  # a user's own jobs, newest first
        Index("ix_jobs_cache_key", "cache_key", "owner", "status"),  # the result cache's lookup
        Index("ix_jobs_sweep_trial", "sweep_id", "trial_number"),  # an adaptive sweep's trials
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Who created it (a sweep's jobs: the sweep's owner); '' while auth is off.
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    # Jobs with the same pack_id train together in one worker task (optim_engine.train_packed).
    pack_id: Mapped[str | None] = mapped_column(String(32))
    # A sweep's configuration: the searched values (seed excluded) and a hash of the spec without
    # its seed, so jobs that differ only in seed group together in the leaderboard.
    config: Mapped[dict[str, Any] | None]
    config_hash: Mapped[str | None] = mapped_column(String(64))
    # An adaptive sweep's trial (sweep_trials.number) this job trains one seed of.
    trial_number: Mapped[int | None] = mapped_column(Integer)
    # What the sweep's pruner wrote when asked about this job's trial (successive halving's rung
    # values): read back by the next decision in any worker (workers/pruning.py).
    prune_attrs: Mapped[dict[str, Any] | None]
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    optimizer: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))  # unique per owner
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[dict[str, Any] | None]
    # What a run reports beyond its epochs (TrainResult.artifacts): an LR range test's curve and
    # suggestions, a 2-D test function's trajectory; NULL for plain training runs.
    result: Mapped[dict[str, Any] | None]
    # The result cache (service/cache.py): a succeeded run's key (spec hash, torch, device kind,
    # optimlab version), and for a job served from the cache instead of trained, the run it copies.
    cache_key: Mapped[str | None] = mapped_column(String(64))
    cached_from: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))

    created_at: Mapped[dt.datetime]
    enqueued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]

    # Summary, derived from the epoch rows (service.db.epochs) so lists sort without touching
    # them; final_<metric> and best_<metric> come from _SummaryColumns.
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    best_loss: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    diverged_epoch: Mapped[int | None] = mapped_column(Integer)
    resumed_from_epoch: Mapped[int | None] = mapped_column(Integer)

    tags: Mapped[list[JobTag]] = relationship(
        back_populates="job", cascade="all, delete-orphan", lazy="selectin", order_by="JobTag.tag"
    )


class JobTag(Base):
    __tablename__ = "job_tags"
    __table_args__ = (Index("ix_job_tags_tag_job", "tag", "job_id"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    job: Mapped[Job] = relationship(back_populates="tags")


class EpochMetric(Base):
    """One row per (job, epoch); written by upsert so a redelivered task never duplicates an epoch.

    One float column per metric of ``optim_engine.results.METRICS``. Non-finite values (a
    diverged run's NaN/inf losses) are stored as NULL: SQLite cannot store NaN, JSON cannot
    carry either, and NULL keeps SQL aggregates from turning into NaN. The job's ``diverged``
    status and ``diverged_epoch`` say what happened.
    """

    __table__ = Table(
        "epoch_metrics",
        Base.metadata,
        Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        Column("epoch", Integer, primary_key=True),
        *(Column(name, Float) for name in METRIC_NAMES),
        Column("recorded_at", UTCDateTime(), nullable=False),
    )


class ApiKey(Base):
    """A bearer key: only the sha256 of its token is stored (the token is shown once, at creation);
    ``prefix`` lets people tell their keys apart. A revoked key stays, for the record."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]


METRIC_COLUMNS = METRIC_NAMES
