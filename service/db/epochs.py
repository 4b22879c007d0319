"""Epoch rows and the job summary derived from them.

Rows are upserts keyed by (job, epoch), so a resumed attempt or a redelivered task never
duplicates an epoch. A job's summary columns (``epochs_done``, ``final_*``, ``best_*``,
``best_loss``/``best_epoch``) are derived from its stored rows here and nowhere else, so they
always equal what the rows say, whatever order or batches the rows arrived in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import ScalarSelect, Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from optim_engine.results import METRIC_NAMES, SUMMARY_METRICS
from service.db.models import EpochMetric, Job
from service.db.session import utcnow

EPOCHS: Table = EpochMetric.__table__  # type: ignore[assignment]
JOBS: Table = Job.__table__  # type: ignore[assignment]
"""The jobs table, for statements that need no ORM object (the job path's hot UPDATEs)."""


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def record(session: Session, rows: Mapping[int, Sequence[Mapping[str, Any]]]) -> None:
    """Upsert epoch rows (job id → its rows); non-finite values are stored as NULL."""
    now = utcnow()
    cleaned = [
        {"job_id": job_id, "epoch": int(row["epoch"]), "recorded_at": now}
        | {name: _finite(row.get(name)) for name in METRIC_NAMES}
        for job_id, job_rows in rows.items()
        for row in job_rows
    ]
    if cleaned:  # one cached statement, executed for many rows (SQLAlchemy batches the VALUES)
        session.execute(_upsert(session.get_bind().dialect.name), cleaned)


@cache
def _upsert(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(EPOCHS)
    return statement.on_conflict_do_update(
        index_elements=["job_id", "epoch"],
        set_={name: statement.excluded[name] for name in (*METRIC_NAMES, "recorded_at")},
    )


def refresh_summary(session: Session, job_ids: Sequence[int]) -> None:
    """Set the summary columns of ``job_ids`` from their stored rows, in one UPDATE."""
    if job_ids:
        session.execute(_refresh_statement(), {"ids": list(job_ids)})


@cache
def _refresh_statement() -> Any:
    """``refresh_summary``'s UPDATE, built once (an epoch flush runs it; building and keying it
    each time cost three times what running it does)."""
    return update(JOBS).where(JOBS.c.id.in_(bindparam("ids", expanding=True))).values(**summary_values())


@cache
def summary_values() -> dict[str, Any]:
    """Correlated subqueries over ``epoch_metrics`` for each summary column of the row updated
    (built once: expressions are immutable, and every job's final write runs them): the values
    of an UPDATE of ``jobs`` that sets its summary from its stored rows."""
    rows = EPOCHS.c
    of_job = rows.job_id == JOBS.c.id

    def last(column: Any) -> ScalarSelect[Any]:
        return select(column).where(of_job).order_by(rows.epoch.desc()).limit(1).scalar_subquery()

    def best_row(column: Any) -> Any:  # the earliest epoch with the best value
        return select(rows.epoch).where(of_job, column.is_not(None)).order_by(column, rows.epoch).limit(1)

    values: dict[str, Any] = {
        "epochs_done": func.coalesce(select(func.max(rows.epoch)).where(of_job).scalar_subquery(), 0)
    }
    for metric in SUMMARY_METRICS:
        column = rows[metric.name]
        pick = func.min if metric.best == "min" else func.max
        values[f"final_{metric.name}"] = last(column)
        values[f"best_{metric.name}"] = select(pick(column)).where(of_job).scalar_subquery()
    # The monitored loss: validation loss when the job has a validation set, else training loss.
    values["best_loss"] = func.coalesce(
        select(func.min(rows.val_loss)).where(of_job).scalar_subquery(),
        select(func.min(rows.train_loss)).where(of_job).scalar_subquery(),
    )
    values["best_epoch"] = func.coalesce(
        best_row(rows.val_loss).scalar_subquery(), best_row(rows.train_loss).scalar_subquery()
    )
    return values
