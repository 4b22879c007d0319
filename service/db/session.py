"""Engines and sessions: SQLite in WAL mode for embedded use, PostgreSQL (psycopg 3) in deployment."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_engine(url: str, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and write-locking transactions.

    SQLite transactions start with ``BEGIN IMMEDIATE``: the API and several worker processes
    write the same file, and a deferred transaction that upgrades from read to write can fail
    with "database is locked" no matter the busy timeout. WAL keeps readers unblocked, so a
    ``read_only`` engine (for code that never writes: the long-poll's frequent checks) begins
    plainly and never waits for the workers' writes.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        # WAL persists in the file: set it only where it is not yet, since setting it waits for
        # the other connections' writes (a fresh connection would stall behind a busy worker).
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        if read_only or not _begin_immediate_soon(connection.connection.dbapi_connection):
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")  # waits up to the busy timeout

    return engine


SPIN_S = 0.1
"""How long ``BEGIN IMMEDIATE`` retries with short sleeps before it waits SQLite's way."""


def _begin_immediate_soon(dbapi: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE``, retried for up to ``SPIN_S`` with sleeps of 0.2 ms growing to 2 ms;
    False if the write lock stayed taken (the caller then waits the busy timeout, SQLite's way).

    SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20 ms... between tries, so a worker whose
    claim met another's write (held well under a millisecond) slept several milliseconds while
    its core idled; lock waits came to 1-3 % of a sweep of short jobs. The busy timeout is off
    only for these tries: every other statement keeps it."""
    dbapi.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + SPIN_S
        pause = 0.0002
        while True:
            try:
                dbapi.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    return False
            time.sleep(pause)
            pause = min(pause * 1.5, 0.002)
    finally:
        dbapi.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
