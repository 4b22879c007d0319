"""Factories for service test objects: specs to post, and jobs moved through their states the way
a worker moves them (through the same operations as ``workers.writer``), so no test hand-builds
rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import epochs, transitions
from service.db.models import Job, JobStatus
from service.db.session import utcnow
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
        claims = transitions.claim(session, [job_id], worker=worker, stale_after_s=60)
    assert claims, f"job {job_id} is not claimable"
    claim = claims[0]
    for epoch, loss in enumerate(losses, start=1):
        with sessions() as session, session.begin():
            assert transitions.heartbeat(session, {job_id: claim.attempt})[job_id].owned
            epochs.record(session, {job_id: [epoch_row(epoch, loss)]})
            epochs.refresh_summary(session, [job_id])
    if status is not None:
        with sessions() as session, session.begin():
            assert transitions.finish(session, job_id, claim.attempt, status)


def insert_job(
    session: Session, spec: dict[str, Any], *, pack_id: str | None = None, sweep_id: int | None = None
) -> int:
    """A queued job of ``spec`` (validated and stored with every default), unsent; returns its id."""
    from service.spec_codec import load_spec, stored_spec

    parsed = load_spec(spec)
    job = Job(
        spec=stored_spec(parsed),
        spec_hash=parsed.spec_hash(),
        optimizer=parsed.optimizer.name,
        queue="cpu",
        status=JobStatus.queued,
        attempt=0,
        cancel_requested=False,
        created_at=utcnow(),
        epochs_done=0,
        pack_id=pack_id,
        sweep_id=sweep_id,
    )
    session.add(job)
    session.flush()
    return job.id


def claimed_writer(sessions: sessionmaker[Session], *, flush_s: float, worker: str = "w:1") -> tuple[int, Any, Any]:
    """A new job claimed by ``worker``, that attempt's ``workers.writer.Attempts`` and a
    ``Writer`` for it (not started): what ``workers.run.execute`` holds while a job trains."""
    from workers import writer

    with sessions() as session, session.begin():
        job_id = insert_job(session, seed_spec({"name": "sgd"}))
        (claim,) = transitions.claim(session, [job_id], worker=worker, stale_after_s=60)
    attempts = writer.Attempts([claim], sessions, budget_s=5, worker=worker)
    return job_id, attempts, writer.Writer(attempts, flush_s=flush_s, device="cpu")
