"""The deployed shape: an API process, two Celery worker processes on one queue, PostgreSQL and Redis.

The faults (processes killed or frozen, Redis or PostgreSQL stopped) are in ``tests/faults``."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from service import broker
from service.db.migrate import upgrade
from service.settings import Settings
from tests.integration.conftest import (
    Api,
    Deployment,
    Proc,
    assert_every_epoch_once,
    optimlab,
    service_env,
    slow_spec,
    wait_for,
)
from tests.servers import free_port

pytestmark = pytest.mark.slow


def test_two_workers_consume_one_queue(deployment: Deployment) -> None:
    api = deployment.api
    assert api.http.get("/readyz").json()["broker"] == "ok"
    watched = api.submit(slow_spec(30, n_samples=8192))
    jobs = [api.submit(slow_spec(8, n_samples=4096, seed=seed)) for seed in range(6)]
    # The README's flow: running, with epochs appearing, then succeeded, one row per epoch.
    final, seen_running_epochs = api.watch(watched["id"])
    assert final["status"] == "succeeded", final
    assert any(0 < epoch < 30 for epoch in seen_running_epochs), "progress was visible while running"
    assert_every_epoch_once(api.metrics(watched["id"]), 30)
    done = [api.wait_status(job["id"], "succeeded", "failed") for job in jobs]
    assert {job["status"] for job in done} == {"succeeded"}
    for job in done:
        assert_every_epoch_once(api.metrics(job["id"]), 8)
        assert job["attempt"] == 1
    worker_hosts = {job["worker"] for job in [final, *done]}
    assert len(worker_hosts) == 2, f"both worker processes took jobs: {worker_hosts}"


def test_a_redelivered_task_for_a_finished_job_changes_nothing(deployment: Deployment) -> None:
    api = deployment.api
    job = api.submit(slow_spec(3, n_samples=512))
    before = api.wait_status(job["id"], "succeeded")
    rows_before = api.metrics(job["id"])
    settings = Settings(broker_url=deployment.redis_url, database_url="sqlite://")
    celery = broker.make_celery(settings)
    broker.send(celery, [job["id"]], "cpu")
    client = redis.Redis.from_url(deployment.redis_url)
    wait_for(lambda: client.llen("cpu") == 0 and client.hlen("unacked") == 0, 30, "the duplicate to be consumed")
    wait_for(lambda: any("not claimable" in w.output() for w in deployment.workers), 30, "a worker to skip it")
    after = api.job(job["id"])
    keys = ("status", "attempt", "worker", "finished_at", "summary")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
    assert api.metrics(job["id"]) == rows_before


@pytest.mark.parametrize("deployment", [{"OPTIMLAB_DISPATCH_INTERVAL_S": "0"}], indirect=True)
def test_messages_under_the_task_names_before_one_job_path_still_run(deployment: Deployment) -> None:
    """A rolling upgrade: messages an older API sent (``workers.run_job(job_id)``,
    ``workers.run_pack(pack_id)``) run through the one job path. This API does not dispatch, so
    nothing but these messages runs the jobs."""
    api = deployment.api
    job = api.submit(slow_spec(3, n_samples=512))
    body = {"base": slow_spec(3, n_samples=512), "seeds": [0, 1, 2], "execution": "packed"}
    sweep = api.http.post("/v1/sweeps", json=body).json()
    pack = api.http.get("/v1/jobs", params={"sweep_id": sweep["id"]}).json()["items"]
    assert {j["enqueued_at"] for j in [job, *pack]} == {None}, "nothing was sent"
    celery = broker.make_celery(Settings(broker_url=deployment.redis_url, database_url="sqlite://"))
    celery.send_task(broker.LEGACY_RUN_JOB, args=[job["id"]], queue="cpu", routing_key="cpu")
    celery.send_task(broker.LEGACY_RUN_PACK, args=[pack[0]["pack_id"]], queue="cpu", routing_key="cpu")
    for each in [job, *pack]:
        done = api.wait_status(each["id"], "succeeded", "failed", timeout=60)
        assert (done["status"], done["attempt"]) == ("succeeded", 1), done
        assert_every_epoch_once(api.metrics(each["id"]), 3)
    assert len({api.job(j["id"])["worker"] for j in pack}) == 1, "the pack trained as one task"


def test_a_database_outage_mid_job_loses_nothing(tmp_path: Path, logs: Path, redis_url: str) -> None:
    """PostgreSQL stops for a few seconds while a job trains: the API answers 503 meanwhile, the
    worker retries its writes, and the job ends with every epoch once."""
    from tests.servers import postgres_server

    with postgres_server() as own:  # its own server: this test stops it
        database_url = own.url(own.create_database())
        upgrade(database_url)
        broker_url = f"{redis_url}/15"
        redis.Redis.from_url(broker_url).flushdb()
        env = service_env(
            OPTIMLAB_DATABASE_URL=database_url, OPTIMLAB_BROKER_URL=broker_url, OPTIMLAB_HOME=str(tmp_path / "home")
        )
        port = free_port()
        procs = [Proc(optimlab("api", "--port", str(port)), env, logs / "api.log")]
        deployment = Deployment(Api(f"http://127.0.0.1:{port}"), env, logs, [], broker_url)
        try:
            wait_for(deployment.api.up, 60, "the API")
            procs.append(deployment.start_worker("w1"))
            api = deployment.api
            job = api.submit(slow_spec(60))
            api.wait_epochs(job["id"], 3)
            own.stop()
            assert api.http.get(f"/v1/jobs/{job['id']}").status_code == 503
            assert api.http.get("/readyz").status_code == 503
            time.sleep(3)
            own.start()
            done = api.wait_status(job["id"], "succeeded", "failed", timeout=120)
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 1, "the worker rode out the outage; nothing was requeued"
            assert_every_epoch_once(api.metrics(job["id"]), 60)
        finally:
            for proc in procs:
                proc.stop()


def _run_sweep(api: Api, execution: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The 4 x 5 x 3 grid of the issue (60 jobs) on an MLP over digits; (sweep, jobs, leaderboard)."""
    started = time.monotonic()
    body = {
        "name": f"lr x momentum, {execution}",
        "base": {
            "model": {"name": "mlp", "params": {"depth": 1, "width": 32}},
            "dataset": {"name": "digits"},
            "loss": "cross_entropy",
            "optimizer": {"name": "sgd"},
            "epochs": 6,
            "batch_size": 64,
            "device": "cpu",
        },
        "grid": {"optimizer.lr": [0.3, 0.1, 0.03, 0.01], "optimizer.params.momentum": [0.0, 0.5, 0.9, 0.95, 0.99]},
        "seeds": [0, 1, 2],
        "execution": execution,
        "cache": False,  # the second sweep repeats the first: it must train, not copy it
    }
    response = api.http.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    done = wait_for(
        lambda: s if (s := api.http.get(f"/v1/sweeps/{sweep_id}").json())["done"] else None, 240, f"{execution} sweep"
    )
    jobs = api.http.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}).json()["items"]
    board = api.http.get(f"/v1/sweeps/{sweep_id}/leaderboard", params={"metric": "val_loss"}).json()["rows"]
    print(f"{execution} sweep of 60 jobs: {time.monotonic() - started:.1f} s from POST to done")  # shown with -s
    return done, jobs, board


def _key(item: dict[str, Any]) -> str:
    """A job's or leaderboard row's configuration."""
    return json.dumps(item["config"], sort_keys=True)


def _exploding(job: dict[str, Any]) -> bool:
    """Diverged, or blowing up (a digits cross-entropy of a sane run stays under 3)."""
    return bool(job["status"] == "diverged" or (job["summary"]["final_train_loss"] or 0) > 100)


def _counts(jobs: list[dict[str, Any]], chaotic: set[str]) -> dict[str, int]:
    return dict(Counter(job["status"] for job in jobs if _key(job) not in chaotic))


def test_a_packed_sweep_equals_the_same_sweep_run_separately(deployment: Deployment) -> None:
    api = deployment.api
    separate, separate_jobs, separate_board = _run_sweep(api, "separate")  # first: it warms both workers
    packed, packed_jobs, packed_board = _run_sweep(api, "packed")
    for sweep, jobs in ((packed, packed_jobs), (separate, separate_jobs)):
        assert sweep["n_jobs"] == len(jobs) == 60
        assert sweep["counts"]["succeeded"] + sweep["counts"]["diverged"] == 60
        metrics = api.http.get(f"/v1/sweeps/{sweep['id']}/metrics", params={"format": "csv"}).text.splitlines()
        assert len(metrics) == 1 + sum(job["summary"]["epochs_done"] for job in jobs)
    # float32 drift between the loops grows exponentially in a run that is blowing up (lr 0.3 with
    # momentum 0.99: train loss 10 by epoch 3, thousands by 6), so such a run may end either side
    # of the divergence threshold. The same configurations explode under both executions, and
    # only those; every other configuration must agree exactly.
    chaotic = {_key(job) for job in packed_jobs if _exploding(job)}
    assert chaotic == {_key(job) for job in separate_jobs if _exploding(job)}
    assert len(chaotic) <= 2, chaotic
    assert _counts(packed_jobs, chaotic) == _counts(separate_jobs, chaotic)
    packs = {job["pack_id"] for job in packed_jobs}
    assert None not in packs
    assert len(packs) == 2, "60 jobs, OPTIMLAB_PACK_MAX 32: two packs of 30"
    assert len({job["worker"] for job in packed_jobs}) == 2, "the two packs ran on both workers"
    assert {job["pack_id"] for job in separate_jobs} == {None}
    assert packed_jobs[0]["environment"]["optimizer_implementation"] == "packed"

    # The leaderboards agree: the same configurations, statistics within float32 drift.
    assert len(packed_board) == len(separate_board) == 20
    theirs = {row["config_hash"]: row for row in separate_board}
    diffs = []
    for row in (row for row in packed_board if _key(row) not in chaotic):
        other = theirs[row["config_hash"]]
        assert (row["n"], row["diverged"], row["failed"]) == (other["n"], other["diverged"], other["failed"])
        for name in ("mean", "std", "min", "max", "ci95_low", "ci95_high"):
            if row[name] is None or other[name] is None:
                assert row[name] == other[name]
            else:
                diffs.append(abs(row[name] - other[name]))
    print(
        f"leaderboard statistics, packed vs separate: median |diff| {statistics.median(diffs):.2e}, max {max(diffs):.2e}"
    )
    assert statistics.median(diffs) <= 1e-6
    assert max(diffs) <= 1e-4
