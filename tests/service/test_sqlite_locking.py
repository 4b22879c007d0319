"""SQLite's write lock: ``BEGIN IMMEDIATE`` retries with short sleeps before it waits SQLite's
way, and every other statement keeps the busy timeout."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from service.db import session as db_session
from service.db.migrate import upgrade


def _hold_write_lock(path: Path, release: threading.Event) -> threading.Thread:
    """Another connection takes the write lock and keeps it until ``release`` is set."""
    taken = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        release.wait(10)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread


@pytest.mark.parametrize("held_past_the_spin", [False, True])
def test_a_writer_waits_for_the_lock_then_begins_with_the_busy_timeout_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_past_the_spin: bool
) -> None:
    path = tmp_path / "optimlab.db"
    upgrade(f"sqlite:///{path}")
    engine = db_session.make_engine(f"sqlite:///{path}")
    monkeypatch.setattr(db_session, "SPIN_S", 0.05)
    spins: list[bool] = []
    spin = db_session._begin_immediate_soon
    monkeypatch.setattr(db_session, "_begin_immediate_soon", lambda dbapi: spins.append(spin(dbapi)) or spins[-1])
    with engine.connect() as conn:  # a pooled connection, set up before the lock is taken
        conn.execute(text("SELECT 1"))
    spins.clear()
    release = threading.Event()
    holder = _hold_write_lock(path, release)
    threading.Timer(0.3 if held_past_the_spin else 0.02, release.set).start()
    with engine.begin() as conn:
        assert release.is_set()  # it began only once the other writer committed
        conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db_session.BUSY_TIMEOUT_MS
    holder.join()
    assert spins == [not held_past_the_spin]  # past the spin, SQLite's own wait took over
    engine.dispose()
