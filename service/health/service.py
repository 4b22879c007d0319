"""Whether this process can serve: its database and its broker answer."""

from __future__ import annotations

from celery import Celery
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service import broker


def readiness(sessions: sessionmaker[Session], celery: Celery) -> dict[str, str]:
    """ "ok" or why not, for the database and the broker."""
    checks = {"database": "ok", "broker": "ok"}
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if not broker.broker_reachable(celery):
        checks["broker"] = "unreachable"
    return checks
