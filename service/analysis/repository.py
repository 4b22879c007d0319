"""SQL for the analysis routes: each job of a sweep with the one value a view needs (a summary
column, never the epoch rows) and, for time-to-target, the epoch rows of a set of sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import EpochMetric, Job


@dataclass(frozen=True)
class JobValue:
    """A job of a sweep as the analyses see it: its configuration, seed, optimizer (name and
    learning rate), status, and the requested summary value (None: not finished, or non-finite)."""

    job_id: int
    config_hash: str | None
    config: dict[str, Any]
    seed: int
    optimizer: str
    lr: float | None
    status: str
    value: float | None
    packed: bool = False


def job_values(session: Session, sweep_id: int, column: str) -> list[JobValue]:
    """Every job of the sweep with its ``column`` (a summary column such as ``best_val_loss``),
    in id order. The caller has checked that the sweep exists and is visible."""
    rows = session.execute(
        select(
            Job.id,
            Job.config_hash,
            Job.config,
            Job.spec["seed"].label("seed"),
            Job.spec["optimizer"].label("optimizer_spec"),
            Job.optimizer,
            Job.status,
            Job.pack_id,
            getattr(Job, column).label("value"),
        )
        .where(Job.sweep_id == sweep_id)
        .order_by(Job.id)
    )
    return [
        JobValue(
            job_id=r.id,
            config_hash=r.config_hash,
            config=r.config or {},
            seed=int(r.seed or 0),
            optimizer=r.optimizer,
            lr=_float((r.optimizer_spec or {}).get("lr")),
            status=r.status,
            value=r.value,
            packed=r.pack_id is not None,
        )
        for r in rows
    ]


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def epoch_curves(session: Session, job_ids: Sequence[int], metric: str) -> dict[int, list[tuple[int, float, Any]]]:
    """Each job's (epoch, epoch_seconds, metric value) rows, in epoch order."""
    curves: dict[int, list[tuple[int, float, Any]]] = {job_id: [] for job_id in job_ids}
    column = EpochMetric.__table__.c[metric]
    table = EpochMetric.__table__
    for start in range(0, len(job_ids), 5000):  # bounded IN lists
        chunk = list(job_ids[start : start + 5000])
        rows = session.execute(
            select(table.c.job_id, table.c.epoch, table.c.epoch_seconds, column)
            .where(table.c.job_id.in_(chunk))
            .order_by(table.c.job_id, table.c.epoch)
        )
        for job_id, epoch, seconds, value in rows:
            curves[job_id].append((epoch, float(seconds or 0.0), value))
    return curves


def job_results(session: Session, sweep_id: int) -> dict[int, tuple[dict[str, Any] | None, dict[str, Any]]]:
    """Each job of the sweep's result (``TrainResult.artifacts``) and dataset spec, by job id."""
    rows = session.execute(select(Job.id, Job.result, Job.spec["dataset"]).where(Job.sweep_id == sweep_id))
    return {job_id: (result, dataset or {}) for job_id, result, dataset in rows}
