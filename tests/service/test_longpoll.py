"""Long-polling GET /v1/jobs/{id} and /v1/sweeps/{id} (?wait_s=&since=), on SQLite and on PostgreSQL:
answers at once unless the state equals `since`, held answers that return on a change another
thread makes, time-outs that return the same state, bounds, ownership, disconnects, and the
client's `wait` riding on it (with its fallback for servers without it)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.client import LONG_POLL_S, Client
from service.db.models import JobStatus
from service.jobs import service as job_service
from tests.conftest import eventually, seed_spec, service_settings
from tests.factories import advance, job_body
from tests.servers import free_port

SWEEP = {"base": seed_spec({"name": "sgd", "lr": 0.01}), "grid": {"optimizer.lr": [0.1, 0.01]}, "execution": "separate"}
STATIC = "static-admin-token-0123456789"


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url))) as test_client:
        yield test_client


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[str]:
    """A real uvicorn server on the test database, in a thread: real sockets, so a client can hang up."""
    app = create_app(service_settings(tmp_path, database_url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(15)


def create(client: TestClient, kind: str) -> dict[str, Any]:
    """A queued job, or a sweep of two jobs, as POST answered it."""
    response = client.post("/v1/jobs", json=job_body()) if kind == "job" else client.post("/v1/sweeps", json=SWEEP)
    assert response.status_code == 201, response.text
    return dict(response.json())


def sweep_job_ids(client: TestClient, sweep_id: int) -> list[int]:
    return sorted(j["id"] for j in client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"])


def later(delay: float, change: Callable[[], None], marks: dict[str, float]) -> threading.Thread:
    """Run ``change`` in a thread after ``delay`` s; ``marks["changed"]`` is when it started."""

    def run() -> None:
        time.sleep(delay)
        marks["changed"] = time.monotonic()
        change()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def timed_get(client: TestClient, path: str, **params: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = client.get(path, params=params)
    return response, time.monotonic() - start


# --- the server --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["job", "sweep"])
def test_without_since_or_with_another_state_the_answer_comes_at_once(client: TestClient, kind: str) -> None:
    created = create(client, kind)
    path = f"/v1/{kind}s/{created['id']}"
    plain = client.get(path)
    assert plain.status_code == 200
    token = plain.json()["state_token"]
    assert token == created["state_token"], "POST and GET of the same state carry the same token"
    assert plain.headers["ETag"] == f'W/"{token}"'
    for params in ({"wait_s": 30}, {"wait_s": 30, "since": "an-older-state"}, {"since": token}):
        response, elapsed = timed_get(client, path, **params)
        assert response.status_code == 200, (params, response.text)
        assert response.json()["state_token"] == token
        assert elapsed < 5, f"{params} held {elapsed:.2f} s"


def test_a_held_job_request_returns_when_another_thread_changes_the_job(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job = create(client, "job")
    marks: dict[str, float] = {}
    thread = later(0.5, lambda: advance(sessions, job["id"], losses=[1.0]), marks)
    response, elapsed = timed_get(client, f"/v1/jobs/{job['id']}", wait_s=20, since=job["state_token"])
    returned = time.monotonic()
    thread.join()
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "running", "the claim (or a later change) ended the wait"
    assert body["state_token"] != job["state_token"]
    assert response.headers["ETag"] == f'W/"{body["state_token"]}"'
    assert 0.4 < elapsed < 20, f"held {elapsed:.2f} s: it must wait for the change, and end before wait_s"
    print(f"job long-poll answered {1000 * (returned - marks['changed']):.0f} ms after the change began")


def test_until_done_holds_through_changes_until_the_sweep_is_finished(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    sweep = create(client, "sweep")
    first, *rest = sweep_job_ids(client, sweep["id"])

    def finish_one_by_one() -> None:
        advance(sessions, first, losses=[0.5], status=JobStatus.succeeded)
        time.sleep(0.4)
        for job_id in rest:
            advance(sessions, job_id, losses=[0.5], status=JobStatus.succeeded)

    marks: dict[str, float] = {}
    thread = later(0.3, finish_one_by_one, marks)
    response, elapsed = timed_get(client, f"/v1/sweeps/{sweep['id']}", wait_s=20, until="done")
    thread.join()
    body = response.json()
    assert body["done"] is True, "the first job's end was a change, not the end: it kept waiting"
    assert 0.6 < elapsed < 20
    already = timed_get(client, f"/v1/sweeps/{sweep['id']}", wait_s=20, until="done")[1]
    assert already < 5, "a finished sweep answers at once"
    assert client.get(f"/v1/sweeps/{sweep['id']}", params={"until": "never"}).status_code == 422


def test_a_held_sweep_request_returns_when_one_of_its_jobs_finishes(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    sweep = create(client, "sweep")
    first = sweep_job_ids(client, sweep["id"])[0]
    marks: dict[str, float] = {}
    thread = later(0.5, lambda: advance(sessions, first, losses=[0.5], status=JobStatus.succeeded), marks)
    response, elapsed = timed_get(client, f"/v1/sweeps/{sweep['id']}", wait_s=20, since=sweep["state_token"])
    returned = time.monotonic()
    thread.join()
    body = response.json()
    assert response.status_code == 200
    assert body["counts"]["queued"] < 2
    assert body["state_token"] != sweep["state_token"]
    assert 0.4 < elapsed < 20, f"held {elapsed:.2f} s: it must wait for the change, and end before wait_s"
    print(f"sweep long-poll answered {1000 * (returned - marks['changed']):.0f} ms after the change began")


@pytest.mark.parametrize("kind", ["job", "sweep"])
def test_a_held_request_that_times_out_answers_the_unchanged_state(client: TestClient, kind: str) -> None:
    created = create(client, kind)
    path = f"/v1/{kind}s/{created['id']}"
    since = created["state_token"] if kind == "job" else f'W/"{created["state_token"]}"'  # the ETag works too
    response, elapsed = timed_get(client, path, wait_s=0.6, since=since)
    assert response.status_code == 200
    assert response.json()["state_token"] == created["state_token"]
    assert response.headers["ETag"] == f'W/"{created["state_token"]}"'
    assert (
        response.json()["n_jobs" if kind == "sweep" else "status"] == created["n_jobs" if kind == "sweep" else "status"]
    )
    assert 0.55 < elapsed < 10, f"held {elapsed:.2f} s for wait_s=0.6"


def test_the_server_caps_the_wait_at_max_wait_s(tmp_path: Path, database_url: str) -> None:
    with TestClient(create_app(service_settings(tmp_path, database_url, max_wait_s=0.3))) as capped:
        job = create(capped, "job")
        response, elapsed = timed_get(capped, f"/v1/jobs/{job['id']}", wait_s=60, since=job["state_token"])
    assert response.status_code == 200
    assert 0.25 < elapsed < 10, f"held {elapsed:.2f} s with OPTIMLAB_MAX_WAIT_S=0.3"


@pytest.mark.parametrize("kind", ["job", "sweep"])
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"wait_s": 61}, "query.wait_s"),
        ({"wait_s": -1}, "query.wait_s"),
        ({"wait_s": "soon"}, "query.wait_s"),
        ({"wait_s": "nan"}, "query.wait_s"),
        ({"wait_s": 1, "since": "x" * 65}, "query.since"),
    ],
)
def test_bad_long_poll_parameters_are_422_naming_the_field(
    client: TestClient, kind: str, params: dict[str, Any], field: str
) -> None:
    created = create(client, kind)
    response = client.get(f"/v1/{kind}s/{created['id']}", params=params)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["detail"]] == [field]


@pytest.mark.parametrize("kind", ["job", "sweep"])
def test_an_unknown_id_is_404_at_once_even_when_asked_to_wait(client: TestClient, kind: str) -> None:
    response, elapsed = timed_get(client, f"/v1/{kind}s/123456", wait_s=30, since="whatever")
    assert response.status_code == 404
    assert elapsed < 5


def test_another_owners_job_and_sweep_stay_hidden_from_a_held_request(tmp_path: Path, database_url: str) -> None:
    settings = service_settings(tmp_path, database_url, auth="keys", api_keys=[STATIC])
    with TestClient(create_app(settings)) as keyed:
        tokens = {}
        for owner in ("alice", "bob"):
            key = keyed.post("/v1/keys", json={"owner": owner}, headers={"Authorization": f"Bearer {STATIC}"})
            tokens[owner] = {"Authorization": f"Bearer {key.json()['token']}"}
        job = keyed.post("/v1/jobs", json=job_body(), headers=tokens["alice"]).json()
        sweep = keyed.post("/v1/sweeps", json=SWEEP, headers=tokens["alice"]).json()
        for path, token in (
            (f"/v1/jobs/{job['id']}", job["state_token"]),
            (f"/v1/sweeps/{sweep['id']}", sweep["state_token"]),
        ):
            params = {"wait_s": 30, "since": token}
            start = time.monotonic()
            assert keyed.get(path, params=params, headers=tokens["bob"]).status_code == 404
            assert time.monotonic() - start < 5
            assert keyed.get(path, params=params | {"wait_s": 0.2}, headers=tokens["alice"]).status_code == 200


def test_a_client_that_hangs_up_ends_the_wait(live: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops reading the job's state once the client is gone, long before wait_s."""
    reads: list[float] = []
    watch = job_service.watch

    def counted(*args: Any) -> Any:
        read = watch(*args)

        def each(session: Session) -> str:
            reads.append(time.monotonic())
            return read(session)

        return each

    monkeypatch.setattr(job_service, "watch", counted)
    with httpx.Client(base_url=live, timeout=10) as http:
        job = http.post("/v1/jobs", json=job_body()).json()
        with pytest.raises(httpx.ReadTimeout):
            http.get(f"/v1/jobs/{job['id']}", params={"wait_s": 30, "since": job["state_token"]}, timeout=0.5)
    hung_up = time.monotonic()
    time.sleep(2.0)  # a held request that ignored the hang-up would read ~40 more times by now
    assert reads, "the held request read the job's state"
    assert reads[-1] < hung_up + 1.0, f"still reading {reads[-1] - hung_up:.2f} s after the client hung up"


# --- the client --------------------------------------------------------------------------------


class Counting(httpx.HTTPTransport):
    """A real transport that keeps every request it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def test_client_wait_on_a_job_returns_promptly_without_hammering(live: str, sessions: sessionmaker[Session]) -> None:
    transport = Counting()
    with Client(live, transport=transport) as client:
        job = client.submit(seed_spec({"name": "sgd", "lr": 0.01}, epochs=3))
        marks: dict[str, float] = {}

        def run() -> None:
            advance(sessions, job["id"], losses=[1.0])  # claimed, one epoch
            time.sleep(0.3)
            advance_rest(sessions, job["id"])
            marks["finished"] = time.monotonic()

        thread = later(0.3, run, marks)
        # poll=5: were the long-poll not used, the answer would come seconds late.
        done = client.wait(job, progress=False, poll=5.0, timeout=30)
        returned = time.monotonic()
        thread.join()
    assert done["status"] == "succeeded"
    latency = returned - marks["finished"]
    print(f"client.wait returned {1000 * latency:.0f} ms after the job's final status committed")
    assert latency < 2.5, "the long-poll answers the final status long before a 5 s poll would"
    held = [r for r in transport.requests if "since" in r.url.params]
    assert len(transport.requests) <= 8, f"{len(transport.requests)} requests for ~4 changes"
    assert held, "wait long-polled"
    assert all(float(r.url.params["wait_s"]) == LONG_POLL_S for r in held)


def advance_rest(sessions: sessionmaker[Session], job_id: int) -> None:
    """Finish a job ``advance`` left running (claimed by its attempt 1)."""
    from service.db import transitions

    with sessions() as session, session.begin():
        assert transitions.finish(session, job_id, 1, JobStatus.succeeded)


def test_client_wait_on_a_sweep_returns_promptly_after_its_last_job(live: str, sessions: sessionmaker[Session]) -> None:
    with Client(live) as client:
        sweep = client.sweep(SWEEP["base"], grid=SWEEP["grid"], execution="separate")
        jobs = sorted(j["id"] for j in client.jobs(sweep_id=sweep["id"]))
        marks: dict[str, float] = {}

        def run() -> None:
            for job_id in jobs:
                advance(sessions, job_id, losses=[0.5], status=JobStatus.succeeded)
                time.sleep(0.2)
            marks["finished"] = time.monotonic() - 0.2

        thread = later(0.3, run, marks)
        done = client.wait(sweep, progress=False, poll=5.0, timeout=30)
        returned = time.monotonic()
        thread.join()
    assert done["done"] is True
    assert done["counts"]["succeeded"] == 2
    latency = returned - marks["finished"]
    print(f"client.wait returned {1000 * latency:.0f} ms after the sweep's last job finished")
    assert latency < 2.5


def test_client_wait_sends_the_last_token_and_a_timeout_beyond_wait_s() -> None:
    answers = iter([("queued", "t1"), ("running", "t2"), ("succeeded", "t3")])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, token = next(answers)
        summary = {"epochs_done": 0, "epochs_total": 3}
        return httpx.Response(200, json={"id": 1, "status": status, "summary": summary, "state_token": token})

    with Client("http://test", transport=httpx.MockTransport(handler), timeout=5) as client:
        start = time.monotonic()
        assert client.wait(1, progress=False, poll=5.0)["status"] == "succeeded"
        assert time.monotonic() - start < 2, "no sleeping between long-polls"
    assert [r.url.params.get("since") for r in seen] == [None, "t1", "t2"]
    assert [r.url.params.get("wait_s") for r in seen[1:]] == [str(LONG_POLL_S)] * 2
    assert [r.url.params.get("until") for r in seen[1:]] == ["done"] * 2, "no bar: only the end matters"
    assert all(r.extensions["timeout"]["read"] > LONG_POLL_S for r in seen[1:])


def test_client_wait_polls_every_poll_seconds_against_a_server_without_long_polling() -> None:
    statuses = iter(["queued", "running", "succeeded"])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        summary = {"epochs_done": 0, "epochs_total": 3}
        return httpx.Response(200, json={"id": 1, "status": next(statuses), "summary": summary})

    with Client("http://test", transport=httpx.MockTransport(handler)) as client:
        start = time.monotonic()
        assert client.wait(1, progress=False, poll=0.2)["status"] == "succeeded"
        elapsed = time.monotonic() - start
    assert len(seen) == 3
    assert not any("wait_s" in r.url.params for r in seen)
    assert elapsed >= 0.4, "it slept `poll` between requests"


def test_held_requests_pin_no_threadpool_thread(live: str) -> None:
    """More waiters than the threadpool has threads (40), and a plain GET still answers at once."""
    with httpx.Client(base_url=live, timeout=30) as http:
        job = http.post("/v1/jobs", json=job_body()).json()
    path, params = f"/v1/jobs/{job['id']}", {"wait_s": 4, "since": job["state_token"]}

    async def scenario() -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=live, timeout=30, limits=httpx.Limits(max_connections=None)) as http:
            waiters = [asyncio.ensure_future(http.get(path, params=params)) for _ in range(WAITERS)]
            await asyncio.sleep(1.0)  # all of them held by now
            start = time.monotonic()
            plain = await http.get(path)
            took = time.monotonic() - start
            assert plain.status_code == 200
            assert not any(w.done() for w in waiters), "the waiters are still held"
            return [r.status_code for r in await asyncio.gather(*waiters)], took

    statuses, took = asyncio.run(scenario())
    print(f"a plain GET beside {WAITERS} held ones took {1000 * took:.0f} ms")
    assert statuses == [200] * WAITERS
    assert took < 2.0, "a plain GET would queue behind waiters pinning every thread"


WAITERS = 50
