"""Workers dying or freezing mid-job, mid-pack and mid-sweep: the job is finished by another
attempt that resumes from the checkpoint, and a dead or frozen attempt never writes again."""

from __future__ import annotations

import json
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.faults.conftest import assert_invariants, logged_attempts, post_sweep, sweep_jobs
from tests.integration.conftest import Deployment, Proc, assert_every_epoch_once, slow_spec, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "deployment",
    [
        pytest.param({}, id="recovered-by-heartbeat-or-redelivery"),
        # Reaper off: only Redis's visibility timeout brings the task back; its claim succeeds
        # because the dead attempt's heartbeat is stale by then: the worker must die at least
        # OPTIMLAB_STALE_AFTER_S (3 s) before the redelivery, 15 s after the first delivery (at
        # 8 s, a loaded machine's slow first checkpoint put the kill too late: the redelivered
        # task found a fresh heartbeat, was skipped, and nothing else requeues with the reaper off).
        pytest.param({"OPTIMLAB_REAPER_INTERVAL_S": "0", "OPTIMLAB_VISIBILITY_TIMEOUT_S": "15"}, id="redis-redelivery"),
    ],
    indirect=True,
)
def test_sigkill_mid_job_resumes_from_the_checkpoint(deployment: Deployment) -> None:
    api = deployment.api
    job = api.submit(slow_spec(40))
    checkpoint = Path(deployment.env["OPTIMLAB_HOME"]) / "checkpoints" / str(job["id"]) / "checkpoint.pt"
    wait_for(checkpoint.exists, 60, "the first checkpoint (OPTIMLAB_CHECKPOINT_EVERY_S, 1 s by default)")
    running = api.job(job["id"])
    assert running["status"] == "running"
    deployment.replace_worker_of(running)
    (done,) = assert_invariants(deployment.database_url, deployment.every_worker(), timeout=120)
    assert done["attempt"] == 2
    assert api.job(job["id"])["summary"]["resumed_from_epoch"] >= 1, "it resumed from its checkpoint, not epoch 1"


def test_sigkill_mid_pack_resumes_every_job_from_the_pack_checkpoint(deployment: Deployment) -> None:
    api = deployment.api
    body = {"base": slow_spec(40), "grid": {"optimizer.lr": [0.01, 0.02]}, "seeds": [0, 1], "execution": "packed"}
    jobs = sweep_jobs(api, post_sweep(api, body)["id"])
    (pack_id,) = {job["pack_id"] for job in jobs}
    checkpoint = Path(deployment.env["OPTIMLAB_HOME"]) / "checkpoints" / f"pack-{pack_id}" / "pack.pt"
    wait_for(checkpoint.exists, 60, "the pack's first checkpoint")
    running = [api.job(job["id"]) for job in jobs]
    assert {job["status"] for job in running} == {"running"}
    assert len({job["worker"] for job in running}) == 1, "one worker trains the whole pack"
    deployment.replace_worker_of(running[0])
    done = assert_invariants(deployment.database_url, deployment.every_worker(), timeout=120)
    assert {job["attempt"] for job in done} == {2}
    for job in jobs:
        assert api.job(job["id"])["summary"]["resumed_from_epoch"] >= 1, "it resumed from the pack's checkpoint"


@pytest.mark.parametrize("deployment", [{"OPTIMLAB_CHECKPOINT_EVERY_S": "0"}], indirect=True)
def test_every_worker_sigkilled_mid_sweep_then_new_workers_finish_it(deployment: Deployment) -> None:
    """Both workers die at once, mid-epoch, with jobs done, running and waiting in Redis; two new
    workers start. The running jobs resume from their checkpoints (one every epoch here)."""
    api = deployment.api
    grid = {"optimizer.lr": [0.01, 0.02]}
    # Long enough (~2 s a job on warm workers) that both workers are seen mid-job with some done.
    base = slow_spec(30, n_samples=32768)
    for execution, seeds in (("separate", [0, 1, 2, 3]), ("packed", [4, 5])):
        post_sweep(api, {"base": base, "grid": grid, "seeds": seeds, "execution": execution})

    def mid_sweep() -> list[dict[str, Any]] | None:
        jobs = api.http.get("/v1/jobs", params={"limit": 100}).json()["items"]
        running = [j for j in jobs if j["status"] == "running" and j["summary"]["epochs_done"] >= 2]
        done = [j for j in jobs if j["status"] == "succeeded"]
        return running if done and len({j["worker"] for j in running}) == 2 else None

    wait_for(mid_sweep, 120, "jobs done while both workers train")
    deployment.kill_workers()
    deployment.start_workers("w3", "w4")
    done = assert_invariants(deployment.database_url, deployment.every_worker())
    resumed = [job for job in done if job["attempt"] > 1]
    assert resumed, "the jobs running at the kill ran again"
    assert any(api.job(job["id"])["summary"]["resumed_from_epoch"] for job in resumed), "from their checkpoints"


def _snapshot(database_url: str, job_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's row and its epoch rows, every column (``recorded_at`` changes on any rewrite)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            job = connection.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).one()
            rows = connection.execute(
                text("SELECT * FROM epoch_metrics WHERE job_id = :id ORDER BY epoch"), {"id": job_id}
            ).all()
    finally:
        engine.dispose()
    return dict(job._mapping), [dict(row._mapping) for row in rows]


# A backend of the deployment's database idle inside a transaction for a while: only a frozen
# worker leaves one (a live one commits within milliseconds).
HELD_OPEN = """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
AND state = 'idle in transaction' AND xact_start < now() - interval '200 milliseconds'"""


def freeze(worker: Proc, database_url: str, *, in_transaction: bool) -> None:
    """SIGSTOP ``worker`` at a moment it holds an open transaction (its row locks with it), or at
    one it holds none: freeze, look, thaw and try again until it is the wanted one."""
    engine = create_engine(database_url)
    try:
        for _ in range(40):
            worker.kill(signal.SIGSTOP)
            time.sleep(0.3)
            with engine.connect() as connection:
                if bool(connection.scalar(text(HELD_OPEN))) == in_transaction:
                    return
            worker.kill(signal.SIGCONT)
            time.sleep(random.uniform(0, 0.05))
    finally:
        engine.dispose()
    pytest.fail(f"could not freeze the worker {'inside' if in_transaction else 'outside'} a transaction")


@pytest.mark.parametrize("in_transaction", [False, True], ids=["between-transactions", "inside-a-transaction"])
def test_a_worker_frozen_past_the_stale_limit_writes_nothing_when_it_wakes(
    deployment: Deployment, in_transaction: bool
) -> None:
    """SIGSTOP the worker of a running job for longer than OPTIMLAB_STALE_AFTER_S (3 s here), as
    a paused VM or a stalled process: the job is requeued and finished by another worker, even
    when the frozen worker holds an open transaction and the job's row lock with it, and the
    dispatcher goes on sending new jobs meanwhile. SIGCONT then: the woken attempt, fenced off,
    writes no row, no status and no checkpoint after the fact."""
    api = deployment.api
    job = api.submit(slow_spec(60))
    checkpoint = Path(deployment.env["OPTIMLAB_HOME"]) / "checkpoints" / str(job["id"]) / "checkpoint.pt"
    wait_for(checkpoint.exists, 60, "the first checkpoint")
    running = api.job(job["id"])
    frozen = deployment.worker_of(running)
    freeze(frozen, deployment.database_url, in_transaction=in_transaction)
    try:
        time.sleep(4)  # past the stale limit: the dispatcher now tries to requeue the frozen job
        other = api.submit(slow_spec(3, n_samples=512))
        wait_for(lambda: api.job(other["id"])["enqueued_at"], 10, "the dispatcher to go on sending new jobs")
        done = api.wait_status(job["id"], "succeeded", "failed", timeout=45)
        assert (done["status"], done["attempt"]) == ("succeeded", 2), done
        assert done["worker"] != running["worker"]
        before = _snapshot(deployment.database_url, job["id"])
        assert not checkpoint.parent.exists(), "the finished job's checkpoint is deleted"
    finally:
        frozen.kill(signal.SIGCONT)
    wait_for(
        lambda: all(a.end < float("inf") for each in logged_attempts([frozen]).values() for a in each),
        60,
        "the woken attempt's task to end",
    )
    assert _snapshot(deployment.database_url, job["id"]) == before, "the woken attempt wrote to the database"
    assert not checkpoint.parent.exists(), "the woken attempt wrote a checkpoint after the job finished"
    assert_invariants(deployment.database_url, deployment.every_worker())


def kill_past_the_checkpoint(deployment: Deployment, job: dict[str, Any], checkpoint: Path) -> None:
    """SIGKILL the worker training ``job`` once ``checkpoint`` exists and three more epochs have
    rows (they go past the checkpoint: it is written at most once a second)."""
    api = deployment.api
    wait_for(checkpoint.exists, 60, f"{checkpoint} to be written")
    seen = api.job(job["id"])["summary"]["epochs_done"]
    deployment.replace_worker_of(api.wait_epochs(job["id"], seen + 3))


@pytest.mark.parametrize("deployment", [{"OPTIMLAB_METRICS_FLUSH_S": "0.02"}], indirect=True)
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
    assert_invariants(deployment.database_url, deployment.every_worker())
    for sweep, jobs in ((pack_sweep, pack), (alone_sweep, alone)):
        done = [api.job(job["id"]) for job in jobs]
        by_config: dict[str, list[float]] = {}
        for job in done:
            rows = api.metrics(job["id"])
            assert_every_epoch_once(rows, 60)
            summary = job["summary"]
            assert summary["final_val_loss"] == rows[-1]["val_loss"]
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
