"""The adaptive sweep controller on SQLite and PostgreSQL: a pass creates the free slots' trials,
each a configuration x the sweep's seeds, and nothing more until a trial finishes; exactly the
budget in the end; two controllers never create a trial twice (the primary key), a live lease is
respected and a lapsed one taken over; a restarted controller asks what the dead one would have;
cancel stops the search; invalid configurations are failed trials without jobs; the dispatcher
runs the search before each send, and a failing search never stops sending."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import broker
from service.app import create_app
from service.db import transitions
from service.db.models import Job, JobStatus, Sweep, SweepTrial
from service.dispatcher import Dispatcher
from service.search.controller import Controller
from service.settings import Settings
from tests.conftest import eventually, seed_spec, service_settings
from tests.factories import advance

BASE = seed_spec({"name": "sgd", "lr": 0.01}, epochs=2)
SPACE = {"optimizer.lr": {"log_uniform": [1e-3, 0.5]}, "optimizer.params.momentum": {"uniform": [0.0, 0.9]}}
SEARCH = {"base": BASE, "strategy": "tpe", "space": SPACE, "budget": 6, "parallelism": 2, "seeds": [0, 1]}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """No dispatcher thread (``dispatch_interval_s`` 0): a test runs each controller pass itself."""
    return service_settings(tmp_path, database_url, dispatch_interval_s=0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def create(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/sweeps", json=SEARCH | fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


def stored(sessions: sessionmaker[Session], sweep_id: int) -> dict[int, tuple[dict[str, Any], list[Job]]]:
    """Each trial's params and jobs, as the database holds them."""
    with sessions() as session:
        trials = session.execute(
            select(SweepTrial.number, SweepTrial.params).where(SweepTrial.sweep_id == sweep_id)
        ).all()
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)).all()
    return {number: (params, [job for job in jobs if job.trial_number == number]) for number, params in trials}


def queued(sessions: sessionmaker[Session], sweep_id: int) -> list[int]:
    with sessions() as session:
        query = select(Job.id).where(Job.sweep_id == sweep_id, Job.status == JobStatus.queued).order_by(Job.id)
        return list(session.scalars(query))


def finish(sessions: sessionmaker[Session], job_ids: list[int]) -> None:
    """Train each job as a worker would: two epochs, then succeeded."""
    for job_id in job_ids:
        advance(sessions, job_id, losses=[1.0 / job_id, 0.5 / job_id], status=JobStatus.succeeded)


def finish_trial(sessions: sessionmaker[Session], sweep_id: int, number: int) -> None:
    finish(sessions, [job.id for job in stored(sessions, sweep_id)[number][1]])


# --- a pass ------------------------------------------------------------------------------------


def test_a_pass_creates_the_free_slots_trials_each_with_its_seeds_jobs(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    sweep = create(client, parallelism=3, seeds=[0, 1, 2])
    assert (sweep["n_jobs"], sweep["trials"], sweep["counts"]["queued"], sweep["done"]) == (9, 3, 9, False)
    trials = stored(sessions, sweep["id"])
    assert sorted(trials) == [0, 1, 2]
    for params, jobs in trials.values():
        assert set(params) == set(SPACE)
        assert sorted(job.spec["seed"] for job in jobs) == [0, 1, 2]
        assert {job.spec["optimizer"]["lr"] for job in jobs} == {params["optimizer.lr"]}
        assert {job.spec["optimizer"]["params"]["momentum"] for job in jobs} == {params["optimizer.params.momentum"]}
        assert all(job.config == params for job in jobs)
        assert len({job.config_hash for job in jobs}) == 1, "a trial's seeds share a leaderboard row"
    assert len({params["optimizer.lr"] for params, _ in trials.values()}) == 3
    small = create(client, budget=2, parallelism=4)
    assert (small["trials"], small["n_jobs"]) == (2, 4)


def test_nothing_more_until_a_trial_finishes_and_exactly_the_budget_in_the_end(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    sweep = create(client)
    controller = Controller(sessions, settings)
    assert controller.run_once() == 0, "both slots are busy"
    running = queued(sessions, sweep["id"])[0]  # trial 0, seed 0
    advance(sessions, running, losses=[0.3])
    assert controller.run_once() == 0
    finish_trial(sessions, sweep["id"], 1)  # trial 0 is still in flight; trial 1 is done
    assert controller.run_once() == 1
    assert sorted(stored(sessions, sweep["id"])) == [0, 1, 2]
    assert controller.run_once() == 0
    with sessions() as session, session.begin():
        assert transitions.finish(session, running, 1, JobStatus.succeeded)
    for _ in range(10):  # finish whatever is queued, let the controller fill the free slots
        finish(sessions, queued(sessions, sweep["id"]))
        controller.run_once()
    trials = stored(sessions, sweep["id"])
    assert sorted(trials) == list(range(6))
    assert all(len(jobs) == 2 for _, jobs in trials.values())
    final = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert (final["trials"], final["n_jobs"], final["counts"]["succeeded"], final["done"]) == (6, 12, 12, True)
    assert final["best_trial"]["state"] == "complete"
    assert controller.run_once() == 0


# --- two controllers ---------------------------------------------------------------------------


def test_two_controllers_racing_never_create_a_trial_twice(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    """Both win a lapsed lease and ask trial 2 (the same configuration: the same records); the
    second to store it fails on the primary key, and none of its jobs remain."""
    sweep = create(client)
    finish_trial(sessions, sweep["id"], 0)
    instant = service_settings(tmp_path, database_url, search_lease_s=1e-6)
    one, other = Controller(sessions, instant), Controller(sessions, instant)
    first, second = one.prepare(sweep["id"]), other.prepare(sweep["id"])
    assert first is not None
    assert second is not None
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert one.commit(first) == 1
    with pytest.raises(IntegrityError):
        other.commit(second)
    trials = stored(sessions, sweep["id"])
    assert sorted(trials) == [0, 1, 2]
    with sessions() as session:
        assert session.scalar(select(func.count()).where(Job.sweep_id == sweep["id"])) == 6
        assert session.scalar(select(Sweep.n_jobs).where(Sweep.id == sweep["id"])) == 6

    # Threads: both pass at once, again and again; every trial number once, every trial 2 jobs.
    def passes(controller: Controller, barrier: threading.Barrier) -> None:
        for _ in range(4):
            barrier.wait()
            controller.run_once()
            barrier.wait()

    barrier = threading.Barrier(3)
    threads = [threading.Thread(target=passes, args=(c, barrier)) for c in (one, other)]
    for thread in threads:
        thread.start()
    for _ in range(4):
        finish(sessions, queued(sessions, sweep["id"]))
        barrier.wait()
        barrier.wait()
    for thread in threads:
        thread.join(30)
    trials = stored(sessions, sweep["id"])
    assert sorted(trials) == list(range(6))
    assert all(sorted(job.spec["seed"] for job in jobs) == [0, 1] for _, jobs in trials.values())


def test_a_live_lease_is_respected_and_a_lapsed_one_taken_over(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    sweep = create(client)
    holder, other = Controller(sessions, settings), Controller(sessions, settings)
    assert holder.run_once() == 0  # nothing free, but the lease is taken now
    finish_trial(sessions, sweep["id"], 0)
    assert holder.prepare(sweep["id"]) is not None
    assert other.prepare(sweep["id"]) is None, "the holder's lease is live"
    assert other.run_once() == 0
    with sessions() as session, session.begin():  # the holder died 20 s ago
        session.execute(update(Sweep).values(lease_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=20)))
    assert other.run_once() == 1
    assert holder.prepare(sweep["id"]) is None, "the new holder's lease is live"
    with sessions() as session:
        assert session.scalar(select(Sweep.controller).where(Sweep.id == sweep["id"])) == other.me


def test_a_restarted_controller_asks_what_the_dead_one_would_have(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Nothing lives in memory between passes: rebuilt from the database twice, by the same
    controller or a new one, the next trials are the same, and they are what gets stored."""
    sweep = create(client, strategy="tpe", budget=8)
    for number in (0, 1):
        finish_trial(sessions, sweep["id"], number)
    dead = Controller(sessions, settings)
    asked = [dead.prepare(sweep["id"]) for _ in range(2)]
    with sessions() as session, session.begin():  # its lease lapses
        session.execute(update(Sweep).values(lease_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    restarted = Controller(sessions, settings)
    again = restarted.prepare(sweep["id"])
    assert asked[0] is not None
    assert asked[1] is not None
    assert again is not None
    params = [t.params for t in asked[0].trials]
    assert len(params) == 2
    assert [t.params for t in asked[1].trials] == params == [t.params for t in again.trials]
    assert [t.system_attrs for t in asked[1].trials] == [t.system_attrs for t in again.trials]
    assert restarted.commit(again) == 2
    trials = stored(sessions, sweep["id"])
    assert [trials[n][0] for n in (2, 3)] == params


# --- cancel, invalid configurations ------------------------------------------------------------


def test_cancel_stops_the_search(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> None:
    sweep = create(client)
    controller = Controller(sessions, settings)
    finish_trial(sessions, sweep["id"], 0)
    prepared = controller.prepare(sweep["id"])  # asked before the cancel, stored after it
    assert prepared is not None
    running = queued(sessions, sweep["id"])[0]  # trial 1, seed 0: running when cancelled
    advance(sessions, running, losses=[0.2])
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["search_stopped_at"] is not None
    assert (cancelled["counts"]["cancelled"], cancelled["counts"]["running"], cancelled["done"]) == (1, 1, False)
    assert controller.commit(prepared) == 0
    with sessions() as session, session.begin():  # its worker stops it at the epoch boundary
        assert transitions.finish(session, running, 1, JobStatus.cancelled)
    assert controller.run_once() == 0
    assert Controller(sessions, settings).run_once() == 0
    assert sorted(stored(sessions, sweep["id"])) == [0, 1]
    final = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert (final["trials"], final["done"]) == (2, True)
    assert client.get(f"/v1/sweeps/{sweep['id']}", params={"wait_s": 5, "until": "done"}).json()["done"]


def test_invalid_configurations_are_failed_trials_without_jobs(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Momentum searched for adam too (no ``when``): those trials are no valid spec. They fail at
    once, without jobs, with the error, and count toward the budget."""
    space = {"optimizer.name": {"choice": ["sgd", "adam"]}, "optimizer.params.momentum": {"uniform": [0.0, 0.9]}}
    sweep = create(client, strategy="random", space=space, budget=8, parallelism=4, sampler_seed=3)
    body = client.get(f"/v1/sweeps/{sweep['id']}/trials").json()
    names = [trial["params"]["optimizer.name"] for trial in body["trials"]]
    assert set(names) == {"sgd", "adam"}, f"sampler_seed 3 should ask both: {names}"
    for trial in body["trials"]:
        if trial["params"]["optimizer.name"] == "adam":
            assert (trial["state"], trial["job_ids"], trial["value"]) == ("failed", [], None)
            assert "momentum" in trial["error"]
        else:
            assert (trial["state"], len(trial["job_ids"]), trial["error"]) == ("running", 2, None)
    assert sweep["n_jobs"] == 2 * names.count("sgd")
    controller = Controller(sessions, settings)
    for _ in range(10):
        finish(sessions, queued(sessions, sweep["id"]))
        controller.run_once()
    final = client.get(f"/v1/sweeps/{sweep['id']}").json()
    trials = client.get(f"/v1/sweeps/{sweep['id']}/trials").json()["trials"]
    assert (final["trials"], len(trials), final["done"]) == (8, 8, True)
    assert final["n_jobs"] == sum(len(t["job_ids"]) for t in trials) == 2 * sum(t["error"] is None for t in trials)


def test_a_first_pass_without_one_valid_trial_creates_nothing(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    adam = SEARCH | {"base": seed_spec({"name": "adam", "lr": 0.01}, epochs=2)}
    response = client.post("/v1/sweeps", json=adam)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert {e["type"] for e in errors} == {"invalid_combination"}
    assert any("momentum" in e["field"] for e in errors)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Sweep)) == 0
        assert session.scalar(select(func.count()).select_from(SweepTrial)) == 0


# --- the dispatcher ----------------------------------------------------------------------------


def test_the_dispatcher_creates_the_next_trial_within_an_interval_and_sends_it(
    tmp_path: Path, database_url: str, sessions: sessionmaker[Session]
) -> None:
    settings = service_settings(tmp_path, database_url, dispatch_interval_s=0.1)
    with TestClient(create_app(settings)) as client:
        sweep = create(client)
        finish_trial(sessions, sweep["id"], 0)
        eventually(lambda: client.get(f"/v1/sweeps/{sweep['id']}").json()["trials"] == 3, timeout=5)
        eventually(lambda: all_sent(sessions, sweep["id"]), timeout=5)


def all_sent(sessions: sessionmaker[Session], sweep_id: int) -> bool:
    with sessions() as session:
        unsent = select(func.count()).where(
            Job.sweep_id == sweep_id, Job.status == JobStatus.queued, Job.enqueued_at.is_(None)
        )
        return session.scalar(unsent) == 0


def test_a_failing_search_never_stops_sending(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = create(client)
    dispatcher = Dispatcher(sessions, broker.make_celery(settings), settings)

    def broken() -> int:
        raise RuntimeError("the search is broken")

    monkeypatch.setattr(dispatcher.controller, "run_once", broken)
    assert len(dispatcher.run_once()) == sweep["n_jobs"] == 4


def test_a_repeated_adaptive_sweep_is_served_from_the_result_cache(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Trials are created like any sweep's jobs: the same configuration and seed trained before is
    a copy, never sent. The same sweep again asks the same trials (the same records, the same
    values), so every one of them is served."""
    from tests.service.test_cache import train  # runs the worker's path here (torch)

    controller = Controller(sessions, settings)
    first = create(client, budget=4, seeds=[0])
    for _ in range(6):
        train(sessions, settings, queued(sessions, first["id"]))
        controller.run_once()
    assert client.get(f"/v1/sweeps/{first['id']}").json()["done"]
    again = create(client, budget=4, seeds=[0])
    assert (again["cached"], again["counts"]["queued"]) == (2, 0)
    for _ in range(3):
        controller.run_once()
    repeated = client.get(f"/v1/sweeps/{again['id']}").json()
    assert (repeated["trials"], repeated["cached"], repeated["counts"]["queued"], repeated["done"]) == (4, 4, 0, True)
    params = [[params for params, _ in stored(sessions, sweep["id"]).values()] for sweep in (first, again)]
    assert params[0] == params[1]
