"""Job events (``service.events``): what a worker's commit tells the API, how the API routes it to
the long-polls waiting on that job or sweep, and that a lost event costs only latency."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import events
from service.app import create_app
from service.db.migrate import upgrade
from service.db.models import JobStatus
from service.db.session import make_engine, make_session_factory
from service.sweeps import service as sweep_service
from tests.conftest import seed_spec, service_settings
from tests.factories import advance, insert_job
from workers.run import execute


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optimlab.db'}"


@pytest.fixture
def sessions(url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def listener(url: str) -> Iterator[socket.socket]:
    """A bare socket where the API's would be: what workers send, as they send it."""
    path = events.address(url)
    assert path is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock
    sock.close()
    Path(path).unlink(missing_ok=True)


def test_the_address_is_short_and_only_for_an_sqlite_file(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-folder-name" * 8) / "optimlab.db"
    path = events.address(f"sqlite:///{deep}")
    assert path is not None
    assert len(path) < 100, "a socket path is limited to ~100 bytes"
    assert path == events.address(f"sqlite:///{deep}") != events.address(f"sqlite:///{tmp_path / 'other.db'}")
    assert events.address("postgresql+psycopg://u:p@db/optimlab") is None
    assert events.address("sqlite://") is None


def test_publish_sends_one_datagram_and_never_raises_without_a_listener(url: str, listener: socket.socket) -> None:
    events.publish(url, events.FINISHED, [(7, 41), (None, 42)])
    assert json.loads(listener.recv(65536)) == ["finished", [[7, 41], [None, 42]]]
    listener.close()
    Path(str(events.address(url))).unlink()
    events.publish(url, events.FINISHED, [(7, 41)])  # nobody listens: the hint is lost, quietly
    events.publish("postgresql+psycopg://u:p@db/optimlab", events.FINISHED, [(7, 41)])


def test_a_subscription_counts_distinct_finished_jobs_and_wakes_at_once_on_other_events() -> None:
    sub = events.Subscription(events.ALL - {events.PROGRESS})
    sub.note(events.PROGRESS, 1)  # not a kind it asked for
    assert not sub.satisfied(1)
    sub.note(events.FINISHED, 1)
    sub.note(events.FINISHED, 1)  # a retried write's second event
    assert sub.satisfied(1)
    assert not sub.satisfied(2)
    sub.note(events.FINISHED, 2)
    assert sub.satisfied(2)
    sub.reset()
    assert not sub.satisfied(1)
    sub.note(events.STARTED, 3)
    assert sub.satisfied(40), "any other event may change what the waiter watches: it looks"


def test_the_hub_routes_each_event_to_the_waiters_on_its_job_and_its_sweep(url: str) -> None:
    async def scenario() -> None:
        hub = events.Hub()
        assert await hub.start(url)
        try:
            with (
                hub.subscribe(("sweep", 7), events.ALL) as sweep_7,
                hub.subscribe(("job", 41), events.ALL) as job_41,
                hub.subscribe(("sweep", 8), events.ALL) as sweep_8,
            ):
                events.publish(url, events.FINISHED, [(7, 41)])
                async with asyncio.timeout(10):  # a bound on a hang, not a timing check
                    await sweep_7.wait(60)
                    await job_41.wait(60)
                assert sweep_7.satisfied()
                assert job_41.satisfied()
                assert not sweep_8.satisfied()
                hub.received(b"not json")  # someone else's bytes: ignored
                hub.received(b'["finished", [["x", 1]]]')
                assert not sweep_8.satisfied()
            assert hub._waiters == {}, "a closed subscription is forgotten"
        finally:
            hub.close()
        assert not Path(str(events.address(url))).exists()

    asyncio.run(scenario())


def test_a_second_api_on_the_database_leaves_the_first_its_events_and_never_removes_its_socket(url: str) -> None:
    """Two APIs on one SQLite file (a second one to compare, a restart overlapping the old one):
    the second must not take the socket (the first's waiters would hear nothing and fall back to
    one read a second) nor, stopping, unlink it; a dead API's socket file is taken over."""

    async def scenario() -> None:
        first, second, third = events.Hub(), events.Hub(), events.Hub()
        assert await first.start(url)
        try:
            assert not await second.start(url), "a live API's socket is not taken"
            assert first.live
            assert not second.live
            second.close()
            assert first.live, "the second API's stop left the first's socket in place"
            with first.subscribe(("job", 41), events.ALL) as job_41:
                events.publish(url, events.FINISHED, [(None, 41)])
                async with asyncio.timeout(10):  # a bound on a hang, not a timing check
                    await job_41.wait(60)
                assert job_41.satisfied()
            path = Path(str(events.address(url)))
            path.unlink()  # a temp-folder cleaner: events cannot reach the first API any more
            assert not first.live, "its waiters poll instead of waiting a second per read"
            dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            dead.bind(str(path))
            dead.close()  # the file a killed API leaves behind
            assert await third.start(url), "a dead API's socket is taken over"
            assert third.live
            assert not first.live
            first.close()
            assert third.live, "the first API's stop did not remove the third's socket"
        finally:
            first.close()
            third.close()

    asyncio.run(scenario())


def test_the_hub_is_off_for_postgresql_and_waits_time_out_without_events() -> None:
    async def scenario() -> None:
        hub = events.Hub()
        assert not await hub.start("postgresql+psycopg://u:p@db/optimlab")
        assert not hub.live
        sub = events.Subscription(events.ALL)
        await sub.wait(0.05)  # nothing came: it returns at the timeout
        assert not sub.satisfied()

    asyncio.run(scenario())


def test_a_worker_tells_of_its_claim_and_of_the_end_after_each_commit(
    tmp_path: Path, url: str, sessions: sessionmaker[Session], listener: socket.socket
) -> None:
    with sessions() as session, session.begin():
        job_id = insert_job(session, seed_spec({"name": "sgd", "lr": 0.01}))
    assert execute([job_id], sessions, service_settings(tmp_path, url)) == "succeeded=1"
    told = [json.loads(listener.recv(65536))]
    while told[-1][0] != "finished":
        told.append(json.loads(listener.recv(65536)))
    assert told[0] == ["started", [[None, job_id]]]
    assert told[-1] == ["finished", [[None, job_id]]]
    assert all(event == ["progress", [[None, job_id]]] for event in told[1:-1])  # rows flushed on the way


def test_a_held_sweep_request_answers_on_the_event_not_on_the_fallback(
    tmp_path: Path, url: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the fallback longer than the wait, only events can end it before ``wait_s``. The
    first job's end is not the sweep's, and with one job left the waiter does not even look;
    the second one's is. Claims finish nothing: a waiter for the end does not look at them."""
    monkeypatch.setattr(events, "FALLBACK_S", 120.0)
    reads = 0
    watch = sweep_service.watch

    def counting_watch(*args: Any) -> Any:
        read = watch(*args)

        def counted(session: Session) -> Any:
            nonlocal reads
            reads += 1
            return read(session)

        return counted

    monkeypatch.setattr(sweep_service, "watch", counting_watch)
    sweep = {"base": seed_spec({"name": "sgd", "lr": 0.01}), "grid": {"optimizer.lr": [0.1, 0.01]}}
    with TestClient(create_app(service_settings(tmp_path, url))) as client:
        created = client.post("/v1/sweeps", json=sweep | {"execution": "separate"}).json()
        jobs = client.get("/v1/jobs", params={"sweep_id": created["id"]}).json()["items"]

        def finish_both() -> None:
            for job in jobs:
                time.sleep(0.3)
                events.publish(url, events.STARTED, [(created["id"], job["id"])])
                time.sleep(0.1)
                advance(sessions, job["id"], losses=[0.5], status=JobStatus.succeeded)
                events.publish(url, events.FINISHED, [(created["id"], job["id"])])

        thread = threading.Thread(target=finish_both)
        thread.start()
        started = time.monotonic()
        body = client.get(f"/v1/sweeps/{created['id']}", params={"wait_s": 60, "until": "done"}).json()
        held = time.monotonic() - started
        thread.join()
    assert body["done"] is True
    assert held < 30, f"held {held:.1f} s: the events did not end the wait (wait_s was 60)"
    assert reads == 2, "one read at the start, one once both jobs had ended"
