"""The worker's one job path, ``execute``, for jobs that run alone (a pack of one), against a real
database (SQLite and PostgreSQL): the same code Celery runs, called directly."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transitions
from service.db.models import EpochMetric, Job
from service.settings import Settings
from tests.conftest import digits_spec, eventually, seed_spec, service_settings
from tests.factories import insert_job
from workers import run, writer
from workers.app import child_gpu
from workers.run import execute


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url)


def create(sessions: sessionmaker[Session], spec: dict[str, Any]) -> int:
    with sessions() as session, session.begin():
        return insert_job(session, spec)


def load(sessions: sessionmaker[Session], job_id: int) -> tuple[Job, list[EpochMetric]]:
    with sessions() as session:
        rows = session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch))
        return session.get_one(Job, job_id), list(rows)


def test_a_job_runs_to_succeeded_with_one_row_per_epoch(sessions: sessionmaker[Session], settings: Settings) -> None:
    job_id = create(sessions, seed_spec({"name": "sgd", "lr": 0.01}, epochs=4))
    assert execute([job_id], sessions, settings) == "succeeded=1"
    job, rows = load(sessions, job_id)
    assert job.status == "succeeded"
    assert (job.attempt, job.epochs_done, job.device) == (1, 4, "cpu")
    assert [row.epoch for row in rows] == [1, 2, 3, 4]
    assert job.final_train_loss == rows[-1].train_loss
    assert job.best_loss == min(row.val_loss for row in rows if row.val_loss is not None)
    assert job.environment is not None
    assert job.environment["device"] == "cpu"
    assert job.started_at is not None
    assert job.finished_at is not None
    assert not (settings.resolved_checkpoint_dir() / str(job_id)).exists()  # cleaned up when finished


def test_successive_jobs_reuse_the_helper_threads(sessions: sessionmaker[Session], settings: Settings) -> None:
    """A task's heartbeat and epoch writer run on helper threads the process keeps: later jobs
    start no thread (``Thread.start`` waits for the new thread to be scheduled, ~2 ms a job on
    a busy host)."""
    for _ in range(2):  # the first jobs may start the helpers
        execute([create(sessions, seed_spec({"name": "sgd"}, epochs=2))], sessions, settings)
    started: list[str] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    helpers = writer._helpers(os.getpid())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", counted)
        for _ in range(3):
            # The last job's loops return just after it (nothing waits for them): once they have,
            # its two helpers are free, and this job must take them rather than start threads.
            eventually(lambda: helpers._idle >= 2, timeout=10)
            job_id = create(sessions, seed_spec({"name": "sgd"}, epochs=2))
            assert execute([job_id], sessions, settings) == "succeeded=1"
    assert started == []
    assert load(sessions, job_id)[0].epochs_done == 2


def test_a_helper_whose_loop_failed_logs_it_and_runs_the_next(caplog: pytest.LogCaptureFixture) -> None:
    ran = threading.Event()
    failed = threading.Event()

    def broken() -> None:
        failed.set()
        raise RuntimeError("boom")

    writer.in_background("broken-loop", broken)
    assert failed.wait(10)
    eventually(lambda: any(r.message == "broken-loop failed" and r.exc_info for r in caplog.records), timeout=10)
    writer.in_background("next-loop", ran.set)
    assert ran.wait(10)


def test_redelivery_of_a_finished_job_changes_nothing(sessions: sessionmaker[Session], settings: Settings) -> None:
    job_id = create(sessions, seed_spec({"name": "adam"}, epochs=2))
    execute([job_id], sessions, settings)
    before, rows_before = load(sessions, job_id)
    assert execute([job_id], sessions, settings) == "skipped"
    after, rows_after = load(sessions, job_id)
    assert (after.status, after.attempt, after.finished_at, after.worker) == (
        before.status,
        before.attempt,
        before.finished_at,
        before.worker,
    )
    assert [(r.epoch, r.recorded_at) for r in rows_after] == [(r.epoch, r.recorded_at) for r in rows_before]


def test_a_duplicate_delivery_while_the_owner_is_alive_is_skipped(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    job_id = create(sessions, seed_spec({"name": "sgd"}))
    with sessions() as session, session.begin():
        assert transitions.claim(session, [job_id], worker="other:1", stale_after_s=60)
    assert execute([job_id], sessions, settings) == "skipped"
    job, rows = load(sessions, job_id)
    assert (job.status, job.worker, rows) == ("running", "other:1", [])


def test_a_cancelled_queued_job_never_runs(sessions: sessionmaker[Session], settings: Settings) -> None:
    job_id = create(sessions, seed_spec({"name": "sgd"}))
    with sessions() as session, session.begin():
        transitions.cancel_job(session, job_id)
    assert execute([job_id], sessions, settings) == "skipped"
    job, rows = load(sessions, job_id)
    assert (job.status, job.attempt, job.started_at, rows) == ("cancelled", 0, None, [])


def when_epochs_done(sessions: sessionmaker[Session], job_id: int, epochs: int, action: Any) -> threading.Thread:
    """Run ``action(session)`` from another thread once the job has recorded ``epochs`` epochs."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions() as session, session.begin():
                if (session.get_one(Job, job_id).epochs_done or 0) >= epochs:
                    action(session)
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


SLOW = {"dataset": {"name": "synthetic_regression", "params": {"n_samples": 4096, "n_features": 10}}}


def test_cancel_while_running_stops_at_the_next_epoch_boundary(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    job_id = create(sessions, seed_spec({"name": "sgd"}, epochs=300, **SLOW))
    watcher = when_epochs_done(sessions, job_id, 3, lambda s: transitions.cancel_job(s, job_id))
    assert execute([job_id], sessions, settings) == "cancelled=1"
    watcher.join()
    job, rows = load(sessions, job_id)
    assert job.status == "cancelled"
    assert 3 <= len(rows) < 300
    assert [row.epoch for row in rows] == list(range(1, len(rows) + 1))
    assert job.epochs_done == len(rows)


def test_a_training_error_fails_the_job_with_its_message(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optim_engine

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(optim_engine, "train_trials", broken)
    job_id = create(sessions, seed_spec({"name": "sgd"}))
    assert execute([job_id], sessions, settings) == "failed=1"
    job, _ = load(sessions, job_id)
    assert (job.status, job.error) == ("failed", "RuntimeError: CUDA error: out of memory")


def test_a_spec_whose_data_vanished_fails_cleanly(
    sessions: sessionmaker[Session], settings: Settings, data_root: Path
) -> None:
    import numpy as np

    np.savez(data_root / "d.npz", x=np.zeros((8, 3), np.float32), y=np.linspace(0.1, 0.9, 8, dtype=np.float32))
    spec = seed_spec(
        {"name": "sgd"},
        dataset={"name": "npz", "params": {"path": "d.npz", "task": "regression"}},
        model={"name": "linear"},
    )
    job_id = create(sessions, spec)
    (data_root / "d.npz").unlink()
    assert execute([job_id], sessions, settings) == "failed=1"
    job, _ = load(sessions, job_id)
    assert job.error is not None
    assert job.error.startswith("spec:")
    assert "d.npz" in job.error


def test_divergence_is_a_result(sessions: sessionmaker[Session], settings: Settings) -> None:
    job_id = create(sessions, seed_spec({"name": "sgd", "lr": 10.0}, epochs=6))
    assert execute([job_id], sessions, settings) == "diverged=1"
    job, rows = load(sessions, job_id)
    assert job.diverged_epoch == rows[-1].epoch
    assert len(rows) == job.diverged_epoch


def test_a_crashed_attempt_resumes_from_its_checkpoint(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies after epoch 3's checkpoint: the next attempt starts at epoch 4 and the
    table ends with each epoch exactly once, equal to an uninterrupted run."""
    spec = digits_spec({"name": "adam", "lr": 0.01}, epochs=6)
    reference_id = create(sessions, spec)
    execute([reference_id], sessions, settings)
    _, reference = load(sessions, reference_id)

    job_id = create(sessions, spec)
    from optim_engine import _checkpoint

    save = _checkpoint.save

    def dies_after_checkpoint_3(directory: Path, **kwargs: Any) -> None:
        save(directory, **kwargs)
        if kwargs["state"].history[-1].epoch == 3:
            raise SystemExit("worker killed")  # not an Exception: nothing more is written, like SIGKILL

    monkeypatch.setattr(_checkpoint, "save", dies_after_checkpoint_3)
    settings = settings.model_copy(update={"checkpoint_every_s": 0})  # a checkpoint after every epoch
    with pytest.raises(SystemExit):
        execute([job_id], sessions, settings)
    monkeypatch.setattr(_checkpoint, "save", save)
    job, rows = load(sessions, job_id)
    assert job.status == "running"
    assert {r.epoch for r in rows} <= {1, 2, 3}  # the killed attempt's writer may not have caught up
    with sessions() as session, session.begin():  # make it certain: epoch 3's row never landed
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch == 3))

    # Its heartbeat goes stale; the redelivered task claims it again.
    with sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=dt.datetime(2000, 1, 1)))
    assert execute([job_id], sessions, settings) == "succeeded=1"
    job, rows = load(sessions, job_id)
    assert (job.attempt, job.resumed_from_epoch) == (2, 3)
    assert [r.epoch for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r.train_loss for r in rows] == pytest.approx([r.train_loss for r in reference], rel=1e-6)


def test_an_attempt_that_lost_its_job_writes_nothing_more(sessions: sessionmaker[Session], settings: Settings) -> None:
    """The reaper requeued the job (this worker looked dead) and another attempt took it: this
    attempt stops at the next epoch and leaves the new owner's rows alone."""
    job_id = create(sessions, seed_spec({"name": "sgd"}, epochs=300, **SLOW))

    def taken_over(session: Session) -> None:
        session.execute(update(Job).where(Job.id == job_id).values(attempt=Job.attempt + 1, worker="new:1"))

    watcher = when_epochs_done(sessions, job_id, 2, taken_over)
    assert execute([job_id], sessions, settings) == "lost=1"
    watcher.join()
    job, rows = load(sessions, job_id)
    assert (job.status, job.worker, job.attempt) == ("running", "new:1", 2)
    assert 2 <= len(rows) < 300
    assert job.epochs_done == len(rows)  # nothing written after the takeover


def test_each_pool_child_owns_one_gpu() -> None:
    assert [child_gpu(i, "2,3") for i in range(4)] == ["2", "3", "2", "3"]
    assert child_gpu(0, None) is None
    assert child_gpu(1, "") is None


def test_cuda_ordinals_map_to_the_childs_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMLAB_WORKER_GPUS", "0,1")
    assert run.pinned("cuda:1") == "cuda"
    assert run.pinned("cpu") == "cpu"
    monkeypatch.delenv("OPTIMLAB_WORKER_GPUS")
    assert run.pinned("cuda:1") == "cuda:1"


def test_a_spec_with_an_infinite_default_trains(sessions: sessionmaker[Session], settings: Settings) -> None:
    from optim_engine import JobSpec
    from service.spec_codec import stored_spec

    spec = JobSpec.model_validate(seed_spec({"name": "prodigy"}, epochs=2))
    with sessions() as session, session.begin():
        job_id = insert_job(session, stored_spec(spec))
    assert execute([job_id], sessions, settings) == "succeeded=1"


def test_the_worker_parent_process_does_not_import_torch() -> None:
    """torch is imported in each pool child after it is pinned to its GPU, never before the fork."""
    import subprocess
    import sys

    code = "import sys, workers.app, workers.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_pool_child_reports_ready_before_torch_is_imported() -> None:
    """Celery kills a child that is not up within 4 s: the start-up hook pins the GPU, then
    imports torch on a thread (here an import made to take 3 s) and returns at once."""
    import subprocess
    import sys

    code = """
import importlib.abc, os, sys, time

class SlowTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            time.sleep(3)
        return None

sys.meta_path.insert(0, SlowTorch())
os.environ["OPTIMLAB_WORKER_GPUS"] = "3"
import workers.app as app
started = time.monotonic()
app._pin_and_warm()
returned = time.monotonic() - started
pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
app.wait_for_torch()
print(returned, pinned, "torch" in sys.modules, time.monotonic() - started)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    returned, pinned, imported, waited = out.stdout.split()
    assert float(returned) < 1.0  # ready at once
    assert (pinned, imported) == ("3", "True")  # pinned before the import began; imported by wait_for_torch
    assert float(waited) >= 3.0


def test_a_worker_on_an_undeclared_queue_fails_loudly(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPTIMLAB_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "service.cli", "worker", "--queues", "gpuu", "--gpus", "none"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "'gpuu' isn't" in result.stdout + result.stderr


def test_a_stale_cancel_flag_is_read_from_the_database_when_polled(
    sessions: sessionmaker[Session],
) -> None:
    """The flags the heartbeat thread last read are old (it is behind), so the poll asks the database."""
    job_id = create(sessions, seed_spec({"name": "sgd"}))
    with sessions() as session, session.begin():
        (claimed,) = transitions.claim(session, [job_id], worker="w:1", stale_after_s=60)
        transitions.cancel_job(session, job_id)
    fresh = writer.Attempts([claimed], sessions, budget_s=5)
    assert fresh.stopping([job_id]) == set()  # a fresh answer (short epochs) is trusted as is
    stale = writer.Attempts([claimed], sessions, budget_s=5)
    stale.learned_at = time.monotonic() - 2 * writer.FRESH_FLAG_S
    assert stale.stopping([job_id]) == {0}
    assert stale.jobs[job_id].cancel_requested


def test_a_device_this_host_lacks_fails_the_job_with_the_error_named_once(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    job_id = create(sessions, seed_spec({"name": "sgd"}, epochs=2) | {"device": "cuda"})
    if torch_cuda_available():
        pytest.skip("this host has a CUDA device")
    assert execute([job_id], sessions, settings) == "failed=1"
    job, rows = load(sessions, job_id)
    assert (job.status, rows) == ("failed", [])
    assert job.error is not None
    assert job.error.startswith("RuntimeError: device 'cuda' requested"), job.error


def torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
