"""Jobs inserted the way the API stores them (queued, not yet sent), for the worker tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.db.models import Job, JobStatus
from service.db.session import utcnow


def insert_job(
    session: Session, spec: dict[str, Any], *, pack_id: str | None = None, sweep_id: int | None = None
) -> int:
    """A queued job of ``spec`` (validated and stored with every default), unsent; returns its id."""
    from optim_engine import JobSpec
    from service.spec_codec import load_spec, stored_spec

    parsed = load_spec(spec) if not isinstance(spec, JobSpec) else spec
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
