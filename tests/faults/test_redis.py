"""Redis stopped for 30 s mid-sweep and started again, with and without persistence: the
database is the record, so every job still runs once, whatever the broker kept."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from service.db.migrate import upgrade
from tests.faults.conftest import assert_invariants, post_sweep
from tests.integration.conftest import deployed, slow_spec, wait_for
from tests.servers import redis_instance

pytestmark = pytest.mark.slow

OUTAGE_S = 30


@pytest.mark.parametrize("appendonly", [False, True], ids=["without-persistence", "with-aof"])
def test_a_redis_outage_mid_sweep_loses_no_job(appendonly: bool, tmp_path: Path, logs: Path, postgres: Any) -> None:
    """Two workers train, a backlog waits in Redis, then Redis stops (SIGTERM) for 30 s. Without
    persistence it comes back empty: the queued jobs' messages are gone and must be sent again
    from the database. With AOF it comes back with its messages, and sending them again as well
    only makes duplicates, which the workers' claim turns into no-ops. A job submitted during
    the outage is accepted (the database is up) and sent once the broker is back."""
    with redis_instance(appendonly=appendonly) as own:  # its own server: this test stops it
        database_url = postgres.url(postgres.create_database())
        upgrade(database_url)
        broker_url = f"{own.url}/0"
        with deployed(database_url, broker_url, tmp_path / "home", logs) as deployment:
            api = deployment.api
            body = {"base": slow_spec(10), "grid": {"optimizer.lr": [0.01, 0.02]}, "seeds": [0, 1, 2, 3, 4]}
            post_sweep(api, body | {"execution": "separate"})
            queue = redis.Redis.from_url(broker_url)

            def both_training() -> bool:
                running = api.http.get("/v1/jobs", params={"status": "running"}).json()["items"]
                return len({job["worker"] for job in running if job["summary"]["epochs_done"] >= 1}) == 2

            wait_for(both_training, 60, "both workers to train")
            assert queue.llen("cpu") >= 3, "a backlog waits in Redis"
            own.stop()
            back_at = time.monotonic() + OUTAGE_S
            during = api.submit(slow_spec(10, seed=99))
            assert api.job(during["id"])["enqueued_at"] is None, "not sent while the broker is down"
            time.sleep(max(back_at - time.monotonic(), 0))
            own.start()
            done = assert_invariants(database_url, deployment.every_worker(), timeout=120)
            assert len(done) == 11
            assert max(job["attempt"] for job in done) <= 2
