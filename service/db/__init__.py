"""The database layer shared by the API and the workers: models, engines, state transitions,
epoch rows and the outbox.

No FastAPI here, so workers import it without the web layer.
"""

from service.db.models import Base, EpochMetric, Job, JobStatus, JobTag, Sweep
from service.db.session import make_engine, make_session_factory, utcnow

__all__ = [
    "Base",
    "EpochMetric",
    "Job",
    "JobStatus",
    "JobTag",
    "Sweep",
    "make_engine",
    "make_session_factory",
    "utcnow",
]
