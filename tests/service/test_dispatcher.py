"""The outbox and its dispatcher, the state transitions, and the summary derived from the rows,
against a real database (SQLite and PostgreSQL) and the embedded (filesystem) broker."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service import broker, dispatcher
from service.db import epochs, outbox, transitions
from service.db.models import TERMINAL, Job, JobStatus
from service.dispatcher import Dispatcher
from service.settings import Settings
from tests.conftest import seed_spec, service_settings
from tests.factories import epoch_row, insert_job

OLD = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url)


def create(sessions: sessionmaker[Session], n: int = 1, pack_id: str | None = None) -> list[int]:
    with sessions() as session, session.begin():
        return [insert_job(session, seed_spec({"name": "sgd"}, seed=i), pack_id=pack_id) for i in range(n)]


def messages(settings: Settings) -> list[dict[str, Any]]:
    """The tasks waiting in the embedded broker: (task name, args)."""
    bodies = [json.loads(path.read_text()) for path in (settings.broker_folder() / "queue").glob("*.msg")]
    return sorted(
        ({"task": b["headers"]["task"], "args": b["headers"]["argsrepr"]} for b in bodies), key=lambda m: m["args"]
    )


def statuses(sessions: sessionmaker[Session]) -> dict[int, tuple[str, bool]]:
    """Each job's status and whether it is sent."""
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.status, Job.enqueued_at))
        return {row.id: (row.status, row.enqueued_at is not None) for row in rows}


def test_every_unsent_job_is_sent_once_and_a_pack_as_one_task(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    alone = create(sessions, 2)
    pack = create(sessions, 3, pack_id="p" * 32)
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert sorted(the_dispatcher.send()) == sorted(alone + pack)
    assert the_dispatcher.send() == []  # nothing is sent twice
    assert messages(settings) == sorted(
        [{"task": "workers.run", "args": repr([[job_id]])} for job_id in alone]
        + [{"task": "workers.run", "args": repr([pack])}],
        key=lambda m: m["args"],
    )
    assert all(sent for _, sent in statuses(sessions).values())


def test_a_pass_sends_in_growing_batches_each_committed_before_the_next(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch is small, so workers can claim its jobs while the rest are sent: each
    batch's transaction holds SQLite's write lock while it sends."""
    ids = create(sessions, 40)
    committed_before: list[int] = []  # per batch: how many jobs were marked sent when it began
    take = outbox.take_unsent

    def counting(session: Session, limit: int = outbox.BATCH) -> list[outbox.Task]:
        committed_before.append(sum(sent for _, sent in statuses(sessions).values()))
        return take(session, limit)

    monkeypatch.setattr(outbox, "take_unsent", counting)
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert the_dispatcher.send() == ids
    assert committed_before == [0, 2, 10]  # batches of 2, 8, then the 30 left (of up to 32)
    assert len(messages(settings)) == 40


def test_a_pack_is_taken_whole_past_the_batch_limit(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Split over two messages, a pack's halves would train apart from one checkpoint folder."""
    (alone,) = create(sessions)
    pack = create(sessions, 3, pack_id="p" * 32)
    (after,) = create(sessions)
    with sessions() as session, session.begin():
        assert [t.job_ids for t in outbox.take_unsent(session, 2)] == [(alone,), tuple(pack)]
        assert [t.job_ids for t in outbox.take_unsent(session, 1)] == [(alone,)]
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert the_dispatcher.send() == [alone, *pack, after]
    assert [m["args"] for m in messages(settings)] == sorted(repr([ids]) for ids in ([alone], pack, [after]))


def test_interleaved_packs_are_each_taken_whole(sessions: sessionmaker[Session], settings: Settings) -> None:
    """A sweep's packs interleave by id (a, b, a, b...): a batch that ends in b still holds
    part of a, and must take the rest of a too."""
    a, b = "a" * 32, "b" * 32
    ids = [create(sessions, pack_id=a if i % 2 == 0 else b)[0] for i in range(6)]
    with sessions() as session, session.begin():
        assert [t.job_ids for t in outbox.take_unsent(session, 2)] == [tuple(ids[0::2]), tuple(ids[1::2])]
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert sorted(the_dispatcher.send()) == ids
    assert len(messages(settings)) == 2


def test_a_broker_outage_leaves_jobs_unsent_until_it_ends(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = create(sessions, 3)
    sent: list[tuple[int, ...]] = []

    def second_send_fails(_app: Any, job_ids: tuple[int, ...], _queue: str) -> None:
        if len(sent) == 1:
            raise ConnectionError("broker down")
        sent.append(tuple(job_ids))

    monkeypatch.setattr(broker, "send", second_send_fails)
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert the_dispatcher.send() == [ids[0]]  # the one that reached the broker is marked sent
    assert statuses(sessions) == {ids[0]: ("queued", True), ids[1]: ("queued", False), ids[2]: ("queued", False)}
    sent.append((-1,))  # the broker is back
    assert the_dispatcher.send() == ids[1:]
    assert all(is_sent for _, is_sent in statuses(sessions).values())


def test_stale_running_jobs_become_unsent_again_and_fresh_ones_stay(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    stale, fresh = create(sessions, 2)
    with sessions() as session, session.begin():
        transitions.claim(session, [stale, fresh], worker="w:1", stale_after_s=60)
        session.execute(update(Job).where(Job.id == stale).values(heartbeat_at=OLD))
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert the_dispatcher.recover() == 1
    assert statuses(sessions) == {stale: ("queued", False), fresh: ("running", False)}
    assert the_dispatcher.run_once() == [stale]


def test_stalled_queued_jobs_are_resent_only_when_no_worker_is_busy(sessions: sessionmaker[Session]) -> None:
    waiting, busy = create(sessions, 2)
    with sessions() as session, session.begin():
        session.execute(update(Job).values(enqueued_at=OLD))
        (claim,) = transitions.claim(session, [busy], worker="w:1", stale_after_s=60)
    with sessions() as session, session.begin():
        assert outbox.resend_stalled(session, after_s=30) == 0  # a worker is busy: it is a backlog
        assert transitions.finish(session, busy, claim.attempt, JobStatus.succeeded)
    with sessions() as session, session.begin():
        assert outbox.resend_stalled(session, after_s=30) == 0  # a job just finished: still a backlog
        session.execute(update(Job).where(Job.id == busy).values(finished_at=OLD))  # ... 30 s of silence
    with sessions() as session, session.begin():
        assert outbox.resend_stalled(session, after_s=30) == 1
        assert [t.job_ids for t in outbox.take_unsent(session)] == [(waiting,)]


def test_after_a_database_outage_heartbeats_are_trusted_a_stale_period_later(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live workers cannot heartbeat while the database is down: right after an outage a stale
    heartbeat means nothing, so the dispatcher waits one stale period before requeueing."""
    (job_id,) = create(sessions)
    with sessions() as session, session.begin():
        transitions.claim(session, [job_id], worker="w:1", stale_after_s=60)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=OLD))
    down = True

    def flaky_sessions() -> Session:
        if down:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return sessions()

    clock = [1000.0]
    monkeypatch.setattr(dispatcher.time, "monotonic", lambda: clock[0])
    the_dispatcher = Dispatcher(flaky_sessions, broker.make_celery(settings), settings)  # type: ignore[arg-type]
    with pytest.raises(OperationalError):
        the_dispatcher.recover()
    down = False
    assert the_dispatcher.recover() == 0  # back, but the heartbeat went stale during the outage
    clock[0] += settings.stale_after_s
    assert the_dispatcher.recover() == 1  # a full stale period later it is a dead worker's job


def test_the_legal_moves_are_stated_once_and_terminal_states_go_nowhere() -> None:
    assert set(transitions.LEGAL) == {JobStatus.queued, JobStatus.running}
    assert transitions.LEGAL[JobStatus.queued] == {JobStatus.running, JobStatus.cancelled}
    assert transitions.LEGAL[JobStatus.running] == TERMINAL | {JobStatus.queued}
    with pytest.raises(AssertionError, match="not a legal move"):
        transitions._legal(JobStatus.succeeded, JobStatus.running)


def test_a_finished_job_cannot_be_claimed_finished_or_cancelled_again(sessions: sessionmaker[Session]) -> None:
    (job_id,) = create(sessions)
    with sessions() as session, session.begin():
        (claim,) = transitions.claim(session, [job_id], worker="w:1", stale_after_s=60)
        assert transitions.finish(session, job_id, claim.attempt, JobStatus.succeeded)
        assert not transitions.finish(session, job_id, claim.attempt, JobStatus.failed)
        assert transitions.claim(session, [job_id], worker="w:2", stale_after_s=0) == []
    with sessions() as session, session.begin(), pytest.raises(Exception, match="succeeded"):
        transitions.cancel_job(session, job_id)


def summary(sessions: sessionmaker[Session], job_id: int) -> dict[str, Any]:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        names = ("epochs_done", "final_train_loss", "final_val_loss", "best_train_loss", "best_loss", "best_epoch")
        return {name: getattr(job, name) for name in names}


def test_the_summary_equals_the_rows_whatever_batches_they_came_in(sessions: sessionmaker[Session]) -> None:
    """The bug this replaces: after a resume, the final write carried only the replayed rows and
    the summary was set from the last row of that batch (rows 1..12, epochs_done 4)."""
    (job_id,) = create(sessions)
    losses = [1.0, 0.5, 0.7, 0.3, 0.4, 0.6, 0.8, 0.9, 0.2, 0.25, 0.35, 0.45]
    rows = [epoch_row(epoch, loss) for epoch, loss in enumerate(losses, start=1)]
    with sessions() as session, session.begin():
        (claim,) = transitions.claim(session, [job_id], worker="w:1", stale_after_s=60)
        epochs.record(session, {job_id: rows})
        epochs.refresh_summary(session, [job_id])
    with sessions() as session, session.begin():  # a resumed attempt replays epochs 1..4, then finishes
        epochs.record(session, {job_id: rows[:4]})
        assert transitions.finish(session, job_id, claim.attempt, JobStatus.succeeded)
    assert summary(sessions, job_id) == {
        "epochs_done": 12,
        "final_train_loss": 0.45,
        "final_val_loss": pytest.approx(0.45 * 1.1),
        "best_train_loss": 0.2,
        "best_loss": pytest.approx(0.2 * 1.1),
        "best_epoch": 9,
    }


def test_a_job_without_validation_is_summarized_on_its_training_loss(sessions: sessionmaker[Session]) -> None:
    (job_id,) = create(sessions)
    rows = [epoch_row(epoch, loss) | {"val_loss": None} for epoch, loss in enumerate([0.5, 0.1, float("nan")], 1)]
    with sessions() as session, session.begin():
        epochs.record(session, {job_id: rows})
        epochs.refresh_summary(session, [job_id])
    assert summary(sessions, job_id) == {
        "epochs_done": 3,
        "final_train_loss": None,  # NaN is stored as NULL
        "final_val_loss": None,
        "best_train_loss": 0.1,
        "best_loss": 0.1,
        "best_epoch": 2,
    }


def test_a_broker_that_lost_its_messages_gets_every_queued_job_again(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarted without persistence lost its messages (its marker key is gone): the
    dispatcher makes every queued job unsent again (a surviving message is a no-op), and sets the
    marker only once that committed."""
    waiting, running = create(sessions, 2)
    with sessions() as session, session.begin():
        session.execute(update(Job).values(enqueued_at=OLD))
        transitions.claim(session, [running], worker="w:1", stale_after_s=60)
    marker = [True]
    monkeypatch.setattr(broker, "messages_lost", lambda _settings: not marker[0])
    monkeypatch.setattr(broker, "mark_messages_kept", lambda _settings: marker.__setitem__(0, True))
    the_dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)
    assert the_dispatcher.recover() == 0  # the messages are kept
    marker[0] = False  # Redis restarted empty
    assert the_dispatcher.recover() == 1
    assert statuses(sessions) == {waiting: ("queued", False), running: ("running", True)}
    assert marker == [True]
    assert the_dispatcher.recover() == 0  # once per loss


def test_the_marker_says_whether_redis_kept_its_data(redis_url: str, tmp_path: Path) -> None:
    import redis

    settings = service_settings(tmp_path, "sqlite://", broker_url=f"{redis_url}/13")
    redis.Redis.from_url(f"{redis_url}/13").flushdb()
    assert broker.messages_lost(settings)  # nothing marked yet: a resend is harmless
    broker.mark_messages_kept(settings)
    assert not broker.messages_lost(settings)
    redis.Redis.from_url(f"{redis_url}/13").flushdb()  # what a restart without persistence does
    assert broker.messages_lost(settings)
    assert not broker.messages_lost(service_settings(tmp_path, "sqlite://"))  # not Redis: never
