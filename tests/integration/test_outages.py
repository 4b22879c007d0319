"""The database is the record: outages and crashes of the real parts (PostgreSQL, Redis, the API,
two prefork workers) delay work, never lose or duplicate it."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from service.db.migrate import upgrade
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
from tests.servers import free_port, postgres_server

pytestmark = pytest.mark.slow

FINAL = ("succeeded", "failed", "diverged", "cancelled")


def sweep_jobs(api: Api, sweep_id: int) -> list[dict[str, Any]]:
    return list(api.http.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}).json()["items"])


def post_sweep(api: Api, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = api.http.post("/v1/sweeps", json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def assert_finished_once(api: Api, jobs: list[dict[str, Any]], timeout: float = 180) -> list[dict[str, Any]]:
    """Every job ends succeeded, with each of its epochs stored exactly once."""
    done = [api.wait_status(job["id"], *FINAL, timeout=timeout) for job in jobs]
    for job in done:
        assert job["status"] == "succeeded", job
        epochs = job["summary"]["epochs_total"]
        assert_every_epoch_once(api.metrics(job["id"]), epochs)
        assert job["summary"]["epochs_done"] == epochs
    return done


def test_a_postgresql_outage_with_a_backlog_loses_no_job(tmp_path: Path, logs: Path, redis_url: str) -> None:
    """PostgreSQL stops for ~20 s while two workers train and Redis holds a backlog of jobs and
    packs. Workers give up on their writes after 5 s here (OPTIMLAB_DATABASE_RETRY_S): a claim
    that cannot be written sends its message back to Redis, a job whose writes failed is
    requeued once the database is back. Every job finishes, every epoch once."""
    with postgres_server() as own:  # its own server: this test stops it
        database_url = own.url(own.create_database())
        upgrade(database_url)
        broker_url = f"{redis_url}/14"
        redis.Redis.from_url(broker_url).flushdb()
        env = service_env(
            OPTIMLAB_DATABASE_URL=database_url,
            OPTIMLAB_BROKER_URL=broker_url,
            OPTIMLAB_HOME=str(tmp_path / "home"),
            OPTIMLAB_DATABASE_RETRY_S="5",
        )
        port = free_port()
        procs = [Proc(optimlab("api", "--port", str(port)), env, logs / "api.log")]
        deployment = Deployment(Api(f"http://127.0.0.1:{port}"), env, logs, [], broker_url)
        try:
            wait_for(deployment.api.up, 60, "the API")
            procs += [deployment.start_worker("w1"), deployment.start_worker("w2")]
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
            own.stop()
            time.sleep(20)
            assert queue.llen("cpu") + queue.hlen("unacked") >= 8, "the backlog is still in Redis"
            own.start()
            done = assert_finished_once(api, jobs)
            assert max(job["attempt"] for job in done) <= 2
            wait_for(lambda: queue.llen("cpu") == 0 and queue.hlen("unacked") == 0, 60, "the broker to drain")
            worker_logs = "".join(proc.output() for proc in procs[1:])
            assert "database unreachable" in worker_logs, "the outage reached the workers"
        finally:
            for proc in procs:
                proc.stop()


@pytest.mark.parametrize("deployment", [{"OPTIMLAB_DISPATCH_INTERVAL_S": "0"}], indirect=True)
def test_an_api_killed_between_commit_and_send_loses_no_job(deployment: Deployment) -> None:
    """The API that takes the POSTs commits a large sweep and dies before sending a message (it
    does not dispatch: OPTIMLAB_DISPATCH_INTERVAL_S=0, then SIGKILL). The client's idempotent
    retry against a restarted API gets the same sweep (200), and its dispatcher sends every
    unsent job: each runs exactly once."""
    api, killed = deployment.api, deployment.api_proc
    assert killed is not None
    base = {
        "model": {"name": "mlp", "params": {"depth": 1, "width": 16}},
        "dataset": {"name": "digits"},
        "loss": "cross_entropy",
        "optimizer": {"name": "sgd"},
        "epochs": 2,
        "batch_size": 256,
        "device": "cpu",
    }
    grid = {"optimizer.lr": [0.3, 0.1, 0.03, 0.01, 0.003], "optimizer.params.momentum": [0.0, 0.5, 0.9]}
    packed = {"base": base, "grid": grid, "seeds": list(range(20)), "execution": "auto"}  # 300 jobs
    separate = {"base": base, "grid": {"optimizer.lr": [0.1, 0.01]}, "seeds": list(range(10)), "execution": "separate"}
    key = {"Idempotency-Key": "kill-between-commit-and-send"}
    first = post_sweep(api, packed, **key)
    other = post_sweep(api, separate, **{"Idempotency-Key": "the-separate-one"})
    killed.kill()
    killed.stop()
    database = create_engine(deployment.env["OPTIMLAB_DATABASE_URL"])
    with database.connect() as connection:
        counts = connection.execute(text("SELECT status, enqueued_at IS NULL, count(*) FROM jobs GROUP BY 1, 2")).all()
    database.dispose()
    assert counts == [("queued", True, 320)], "committed, none sent"

    restarted = deployment.start_api(OPTIMLAB_DISPATCH_INTERVAL_S="0.5")
    retried = post_sweep(restarted, packed, **key)
    assert retried["id"] == first["id"]
    assert retried["n_jobs"] == 300
    jobs = sweep_jobs(restarted, first["id"]) + sweep_jobs(restarted, other["id"])
    assert len(jobs) == 320
    done = assert_finished_once(restarted, jobs, timeout=240)
    assert {job["attempt"] for job in done} == {1}, "each job was claimed exactly once"
    assert len({job["pack_id"] for job in done if job["sweep_id"] == first["id"]}) == 10


def kill_past_the_checkpoint(deployment: Deployment, job: dict[str, Any], checkpoint: Path) -> None:
    """SIGKILL the worker training ``job`` once ``checkpoint`` exists and three more epochs have
    rows (they go past the checkpoint: it is written at most once a second)."""
    api = deployment.api
    wait_for(checkpoint.exists, 60, f"{checkpoint} to be written")
    seen = api.job(job["id"])["summary"]["epochs_done"]
    deployment.replace_worker_of(api.wait_epochs(job["id"], seen + 3))


@pytest.mark.parametrize(
    "deployment",
    [{"OPTIMLAB_METRICS_FLUSH_S": "0.02"}],
    indirect=True,
)
def test_resumed_jobs_and_packs_are_summarized_from_their_rows(deployment: Deployment) -> None:
    """Epochs (~0.1 s) slower than the writer's flush interval, checkpoints every 1 s: a killed
    attempt leaves rows past its checkpoint, the resumed one replays from the checkpoint. Each
    job's summary and the ``which=final`` leaderboard must equal what the rows say."""
    api, home = deployment.api, Path(deployment.env["OPTIMLAB_HOME"])
    base = slow_spec(60)
    grid = {"optimizer.lr": [0.01, 0.02]}
    pack_sweep = post_sweep(api, {"base": base, "grid": grid, "seeds": [0, 1], "execution": "packed"})
    alone_sweep = post_sweep(api, {"base": base, "grid": grid, "seeds": [2, 3], "execution": "separate"})
    pack, alone = sweep_jobs(api, pack_sweep["id"]), sweep_jobs(api, alone_sweep["id"])
    kill_past_the_checkpoint(deployment, pack[0], home / "checkpoints" / f"pack-{pack[0]['pack_id']}" / "pack.pt")
    first = alone[0]
    kill_past_the_checkpoint(deployment, first, home / "checkpoints" / str(first["id"]) / "checkpoint.pt")
    for sweep, jobs in ((pack_sweep, pack), (alone_sweep, alone)):
        done = assert_finished_once(api, jobs)
        by_config: dict[str, list[float]] = {}
        for job in done:
            rows = api.metrics(job["id"])
            summary = job["summary"]
            assert summary["final_val_loss"] == rows[-1]["val_loss"]
            assert summary["final_train_loss"] == rows[-1]["train_loss"]
            assert summary["best_val_loss"] == min(row["val_loss"] for row in rows)
            best = min(rows, key=lambda row: (row["val_loss"], row["epoch"]))
            assert (summary["best_loss"], summary["best_epoch"]) == (best["val_loss"], best["epoch"])
            by_config.setdefault(json.dumps(job["config"], sort_keys=True), []).append(rows[-1]["val_loss"])
        resumed = [job for job in done if job["attempt"] == 2]
        assert resumed, f"a job of sweep {sweep['id']} was killed and resumed"
        assert all(job["summary"]["resumed_from_epoch"] >= 1 for job in resumed)
        board = api.http.get(f"/v1/sweeps/{sweep['id']}/leaderboard", params={"which": "final"}).json()["rows"]
        assert {json.dumps(row["config"], sort_keys=True): row["mean"] for row in board} == pytest.approx(
            {config: statistics.mean(values) for config, values in by_config.items()}, rel=1e-12
        )
