"""PostgreSQL stopped for 20 s mid-sweep: the API says 503 meanwhile (never 500), workers give
their messages back or leave their jobs to be requeued, and everything recovers on its own."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.db.migrate import upgrade
from tests.faults.conftest import assert_invariants, post_sweep, sweep_jobs
from tests.integration.conftest import Api, deployed, slow_spec, wait_for
from tests.servers import postgres_server

pytestmark = pytest.mark.slow

OUTAGE_S = 20


def routes(job_id: int, sweep_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    """What a user does during the outage: read a job, its metrics, lists, a sweep, submit."""
    return [
        ("GET", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/metrics", None),
        ("GET", "/v1/jobs?status=running&sort=-created_at", None),
        ("GET", "/v1/sweeps", None),
        ("GET", f"/v1/sweeps/{sweep_id}", None),
        ("GET", f"/v1/sweeps/{sweep_id}/leaderboard", None),
        ("POST", "/v1/jobs", {"spec": slow_spec(2, n_samples=512)}),
        ("GET", "/readyz", None),
    ]


def poll(api: Api, calls: list[tuple[str, str, dict[str, Any] | None]], seconds: float) -> Counter[tuple[str, int]]:
    """Call every route in turn for ``seconds``; counts (route, status code). A request that
    hangs past its timeout counts as 0."""
    answers: Counter[tuple[str, int]] = Counter()
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=api.http.base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            for method, path, body in calls:
                try:
                    answers[(f"{method} {path}", http.request(method, path, json=body).status_code)] += 1
                except httpx.TimeoutException:
                    answers[(f"{method} {path}", 0)] += 1
            time.sleep(0.2)
    return answers


def test_a_postgresql_outage_with_a_backlog_loses_no_job(tmp_path: Path, logs: Path, redis_url: str) -> None:
    """PostgreSQL stops for 20 s while two workers train and Redis holds a backlog of jobs and
    packs. Workers give up on their writes after 5 s here (OPTIMLAB_DATABASE_RETRY_S): a claim
    that cannot be written sends its message back to Redis, a job whose writes failed is
    requeued once the database is back. Meanwhile every route answers 503; afterwards the same
    API process serves again, and every job finishes with every epoch once."""
    with postgres_server() as own:  # its own server: this test stops it
        database_url = own.url(own.create_database())
        upgrade(database_url)
        broker_url = f"{redis_url}/15"
        redis.Redis.from_url(broker_url).flushdb()
        home = tmp_path / "home"
        with deployed(database_url, broker_url, home, logs, OPTIMLAB_DATABASE_RETRY_S="5") as deployment:
            api = deployment.api
            busy = [api.submit(slow_spec(300, n_samples=8192, seed=seed)) for seed in range(2)]  # ~10 s each
            backlog = [api.submit(slow_spec(4, n_samples=1024, seed=seed)) for seed in range(10)]
            body = {"base": slow_spec(4, n_samples=1024), "grid": {"optimizer.lr": [0.01, 0.02]}, "seeds": [0, 1]}
            packs = [post_sweep(api, body | {"execution": "packed", "name": f"pack {i}"}) for i in range(2)]
            jobs = [*busy, *backlog, *(job for sweep in packs for job in sweep_jobs(api, sweep["id"]))]
            wait_for(lambda: all(api.job(job["id"])["enqueued_at"] for job in jobs), 30, "every job to be sent")
            for job in busy:
                api.wait_epochs(job["id"], 2)
            queue = redis.Redis.from_url(broker_url)
            assert queue.llen("cpu") >= 8, "a backlog waits in Redis"
            calls = routes(busy[0]["id"], packs[0]["id"])
            own.stop()
            answers = poll(api, calls, OUTAGE_S)
            assert queue.llen("cpu") + queue.hlen("unacked") >= 8, "the backlog is still in Redis"
            own.start()
            assert {status for _, status in answers} == {503}, f"every route answers 503: {answers}"
            assert {route for route, _ in answers} == {f"{m} {p}" for m, p, _ in calls}

            def serving() -> bool:
                return all(api.http.request(method, path, json=body).status_code < 300 for method, path, body in calls)

            wait_for(serving, 30, "the same API process to serve every route again, on its own")
            done = assert_invariants(database_url, deployment.every_worker())
            assert max(job["attempt"] for job in done) <= 2
            wait_for(lambda: queue.llen("cpu") == 0 and queue.hlen("unacked") == 0, 60, "the broker to drain")
            worker_logs = "".join(proc.output() for proc in deployment.every_worker())
            assert "database unreachable" in worker_logs, "the outage reached the workers"
