"""Factories for service test objects: specs to post, and jobs moved through their states the
way a worker moves them (through the same job operations), so no test hand-builds rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import jobs as job_ops
from service.db.models import JobStatus
from tests.conftest import seed_spec


def job_body(spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"spec": spec if spec is not None else seed_spec({"name": "sgd", "lr": 0.01}), **extra}


def epoch_row(epoch: int, loss: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": loss,
        "val_loss": loss * 1.1 if math.isfinite(loss) else loss,
        "val_accuracy": 1 / (1 + loss) if math.isfinite(loss) else None,  # falls as the loss rises
        "lr": 0.01,
        "grad_norm": 1.0,
        "epoch_seconds": 0.01,
        "samples_per_second": 1000.0,
    }


def advance(
    sessions: sessionmaker[Session],
    job_id: int,
    *,
    losses: Sequence[float] = (),
    status: JobStatus | None = None,
    worker: str = "test-worker:1",
) -> None:
    """Claim a job, record one epoch per loss, then finish it with ``status`` (or leave it running)."""
    with sessions() as session, session.begin():
        claim = job_ops.claim(session, job_id, worker=worker, stale_after_s=60)
        assert claim is not None, f"job {job_id} is not claimable"
    for epoch, loss in enumerate(losses, start=1):
        with sessions() as session, session.begin():
            assert job_ops.record_epochs(session, job_id, claim.attempt, [epoch_row(epoch, loss)]).owned
    if status is not None:
        with sessions() as session, session.begin():
            assert job_ops.finish(session, job_id, claim.attempt, status)
