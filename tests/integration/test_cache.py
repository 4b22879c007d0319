"""The result cache through real processes (`optimlab up`: API, a worker, SQLite, the filesystem
broker): a repeated sweep is served from the cache, and no worker task runs for it."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.integration.conftest import Api, Proc, slow_spec, wait_for

pytestmark = pytest.mark.slow

TASK_RECEIVED = re.compile(r"Task workers\.run\[[\w-]+\] received")
"""Celery's line when a worker takes a task off the broker: one per task sent and delivered."""

SWEEP = {
    "base": slow_spec(2, n_samples=256),
    "grid": {"optimizer.lr": [0.01, 0.02]},
    "seeds": [0, 1],
    "execution": "separate",  # one task per job: four tasks to count
}


def tasks_received(proc: Proc) -> int:
    return len(TASK_RECEIVED.findall(proc.output()))


def finished(api: Api, sweep_id: int) -> dict[str, Any] | None:
    sweep = api.http.get(f"/v1/sweeps/{sweep_id}").json()
    return sweep if sweep["done"] else None


def test_a_repeated_sweep_is_served_from_the_cache_without_a_worker_task(embedded: tuple[Api, Proc, float]) -> None:
    api, proc, _ = embedded
    first = api.http.post("/v1/sweeps", json=SWEEP).json()
    done = wait_for(lambda: finished(api, first["id"]), 120, "the first sweep to finish")
    assert done["counts"]["succeeded"] == 4
    wait_for(lambda: tasks_received(proc) == 4, 30, "the worker's four task lines")

    response = api.http.post("/v1/sweeps", json=SWEEP)
    assert response.status_code == 201, response.text
    repeat = response.json()
    assert (repeat["done"], repeat["cached"], repeat["counts"]["succeeded"]) == (True, 4, 4)
    time.sleep(2)  # several dispatcher passes (OPTIMLAB_DISPATCH_INTERVAL_S is 0.5 s here)
    assert tasks_received(proc) == 4, "no task was sent for the repeat"
    jobs = api.http.get("/v1/jobs", params={"sweep_id": repeat["id"]}).json()["items"]
    sources = {job["id"] for job in api.http.get("/v1/jobs", params={"sweep_id": first["id"]}).json()["items"]}
    assert len(jobs) == 4
    for job in jobs:
        assert job["cached_from"] in sources
        assert (job["status"], job["enqueued_at"], job["attempt"], job["worker"]) == ("succeeded", None, 0, None)
    boards = [api.http.get(f"/v1/sweeps/{s['id']}/leaderboard").json()["rows"] for s in (first, repeat)]
    assert boards[0] == boards[1]
