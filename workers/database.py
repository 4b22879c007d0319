"""The workers' database access: one engine per process, and writes that ride out an outage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import make_engine, make_session_factory

log = logging.getLogger("optimlab.worker")
T = TypeVar("T")


class DatabaseLost(RuntimeError):
    """The database stayed unreachable for the whole retry budget."""


@cache
def session_factory(url: str, pid: int, idle_in_transaction_s: float = 30.0) -> sessionmaker[Session]:
    """This process's sessions; keyed by pid because an engine must not cross a fork.

    On PostgreSQL a session left idle inside a transaction for ``idle_in_transaction_s`` is ended
    by the server: a worker frozen (SIGSTOP, a stalled VM) mid-transaction would otherwise hold
    its jobs' row locks, and the dispatcher could not requeue them until it woke.
    """
    if make_url(url).get_backend_name() != "postgresql":
        return make_session_factory(make_engine(url))
    timeout_ms = max(int(idle_in_transaction_s * 1000), 1000)
    options = f"-c idle_in_transaction_session_timeout={timeout_ms}"
    return make_session_factory(make_engine(url, connect_args={"options": options}))


def with_db(sessions: sessionmaker[Session], work: Callable[[Session], T], budget_s: float = 30.0) -> T:
    """Run ``work`` in a transaction, retrying connection errors (a lost or server-ended
    connection, SQLite lock timeouts) with backoff (0.1 s doubling to 5 s) for about
    ``budget_s``; then ``DatabaseLost``."""
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            with sessions() as session, session.begin():
                return work(session)
        except DBAPIError as exc:
            # PostgreSQL ending an idle-in-transaction session is an InternalError on a connection
            # that is gone: retried like an outage. Any other database error is a bug: raised.
            if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseLost(f"database unreachable: {exc.orig}") from exc
            log.warning("database error (%s); retrying in %.1f s", exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
