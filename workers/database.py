"""The workers' database access: one engine per process, and writes that ride out an outage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import make_engine, make_session_factory

log = logging.getLogger("optimlab.worker")
T = TypeVar("T")


class DatabaseLost(RuntimeError):
    """The database stayed unreachable for the whole retry budget."""


@cache
def session_factory(url: str, pid: int) -> sessionmaker[Session]:
    """This process's sessions; keyed by pid because an engine must not cross a fork."""
    return make_session_factory(make_engine(url))


def with_db(sessions: sessionmaker[Session], work: Callable[[Session], T], budget_s: float = 30.0) -> T:
    """Run ``work`` in a transaction, retrying connection errors (and SQLite lock timeouts) with
    backoff (0.1 s doubling to 5 s) for about ``budget_s``; then ``DatabaseLost``."""
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            with sessions() as session, session.begin():
                return work(session)
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseLost(f"database unreachable: {exc.orig}") from exc
            log.warning("database error (%s); retrying in %.1f s", exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
