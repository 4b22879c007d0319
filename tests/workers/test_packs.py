"""The worker's one job path, ``execute``, for a sweep's pack, against a real database (SQLite and
PostgreSQL): each job of a pack ends with its own status and rows, as if it had run alone."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transitions
from service.db.models import EpochMetric, Job
from service.settings import Settings
from tests.conftest import digits_spec, service_settings
from tests.factories import insert_job
from workers.run import execute

PACK = "f" * 32


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url)


def create_pack(sessions: sessionmaker[Session], specs: list[dict[str, Any]], pack_id: str | None = PACK) -> list[int]:
    with sessions() as session, session.begin():
        return [insert_job(session, spec, pack_id=pack_id) for spec in specs]


def rows_of(sessions: sessionmaker[Session], job_id: int) -> list[EpochMetric]:
    with sessions() as session:
        query = select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
        return list(session.scalars(query))


def job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)


SPECS = [
    digits_spec({"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9}}, epochs=5, seed=0),
    digits_spec({"name": "adam", "lr": 1e-3}, epochs=5, seed=1),
    digits_spec({"name": "sgd", "lr": 10.0}, epochs=5, seed=2),
    digits_spec({"name": "rmsprop", "lr": 1e-3}, epochs=5, seed=3, scheduler={"name": "step_lr", "params": {"step_size": 2}}),
]  # fmt: skip


def test_a_pack_ends_each_job_like_its_own_run(sessions: sessionmaker[Session], settings: Settings) -> None:
    ids = create_pack(sessions, SPECS)
    alone = create_pack(sessions, SPECS, pack_id=None)
    assert execute(ids, sessions, settings) == "diverged=1 succeeded=3"
    for job_id in alone:
        execute([job_id], sessions, settings)
    for packed_id, alone_id in zip(ids, alone, strict=True):
        packed, reference = job(sessions, packed_id), job(sessions, alone_id)
        assert (packed.status, packed.epochs_done, packed.diverged_epoch, packed.attempt) == (
            reference.status,
            reference.epochs_done,
            reference.diverged_epoch,
            1,
        )
        assert packed.device == "cpu"
        assert packed.pack_id == PACK
        assert packed.environment is not None
        assert packed.environment["pack_size"] == 4
        assert packed.best_epoch == reference.best_epoch
        mine, theirs = rows_of(sessions, packed_id), rows_of(sessions, alone_id)
        assert [r.epoch for r in mine] == [r.epoch for r in theirs]
        for a, b in zip(mine, theirs, strict=True):
            for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None) == (y is None)
                if x is not None:
                    assert x == pytest.approx(y, rel=1e-5, abs=1e-5), name  # the diverged epoch is huge
    assert job(sessions, ids[2]).status == "diverged"
    assert not (settings.resolved_checkpoint_dir() / f"pack-{PACK}").exists()
    assert execute(ids, sessions, settings) == "skipped"  # a redelivered pack changes nothing


def test_a_cancelled_job_leaves_the_pack_and_the_others_finish(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    slow = {"dataset": {"name": "synthetic_regression", "params": {"n_samples": 20_000, "n_features": 10}}}
    specs = [digits_spec({"name": "sgd", "lr": lr}, epochs=40, seed=i, **slow, loss="mse", model={"name": "linear"}) for i, lr in enumerate([0.01, 0.02, 0.03])]  # fmt: skip
    ids = create_pack(sessions, specs)
    with sessions() as session, session.begin():  # cancelled while queued: never claimed
        transitions.cancel_job(session, ids[2])

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if job(sessions, ids[0]).epochs_done >= 3:
                with sessions() as session, session.begin():
                    transitions.cancel_job(session, ids[0])
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=cancel_when_running)
    watcher.start()
    assert execute(ids, sessions, settings) == "cancelled=1 succeeded=1"
    watcher.join()
    cancelled, finished, never = (job(sessions, i) for i in ids)
    assert cancelled.status == "cancelled"
    assert 3 <= cancelled.epochs_done < 40
    assert [r.epoch for r in rows_of(sessions, ids[0])] == list(range(1, cancelled.epochs_done + 1))
    assert (finished.status, finished.epochs_done) == ("succeeded", 40)
    assert (never.status, never.attempt, never.epochs_done) == ("cancelled", 0, 0)


def test_a_killed_pack_resumes_from_its_checkpoint(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optim_engine import _packed

    reference_ids = create_pack(sessions, SPECS, pack_id="0" * 32)
    execute(reference_ids, sessions, settings)
    ids = create_pack(sessions, SPECS)
    save = _packed._Pack._save

    def dies_after_checkpoint_3(pack: Any, *args: Any) -> None:
        save(pack, *args)
        if pack.rows[0].state.history[-1].epoch == 3:
            raise SystemExit("worker killed")  # not an Exception: nothing more is written, like SIGKILL

    monkeypatch.setattr(_packed._Pack, "_save", dies_after_checkpoint_3)
    settings = settings.model_copy(update={"checkpoint_every_s": 0})
    with pytest.raises(SystemExit):
        execute(ids, sessions, settings)
    monkeypatch.setattr(_packed._Pack, "_save", save)
    statuses = [job(sessions, i).status for i in ids]
    # The diverged job's final write may or may not have landed before the kill.
    assert statuses[:2] + statuses[3:] == ["running"] * 3
    assert statuses[2] in ("running", "diverged")

    with sessions() as session, session.begin():  # the heartbeat goes stale; the reaper requeues
        session.execute(update(Job).where(Job.id.in_(ids)).values(heartbeat_at=dt.datetime(2000, 1, 1)))
        requeued = transitions.requeue_stale(session, stale_after_s=60)
    assert requeued == statuses.count("running")
    execute(ids, sessions, settings)
    assert [job(sessions, i).status for i in ids] == [job(sessions, i).status for i in reference_ids]
    for job_id, reference_id in zip(ids, reference_ids, strict=True):
        resumed = job(sessions, job_id)
        if job_id != ids[2]:
            assert (resumed.attempt, resumed.resumed_from_epoch) == (2, 3)
        mine, theirs = rows_of(sessions, job_id), rows_of(sessions, reference_id)
        assert [r.epoch for r in mine] == [r.epoch for r in theirs]
        assert [r.train_loss for r in mine] == pytest.approx([r.train_loss for r in theirs], rel=1e-6)


def test_a_training_error_fails_the_unfinished_jobs_with_its_message(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optim_engine import _packed

    ids = create_pack(sessions, SPECS)  # the lr = 10 job diverges at epoch 1, before the error
    epoch = _packed._Pack._epoch

    def fails_at_epoch_3(pack: Any, number: int) -> Any:
        if number == 3:
            raise RuntimeError("boom")
        return epoch(pack, number)

    monkeypatch.setattr(_packed._Pack, "_epoch", fails_at_epoch_3)
    assert execute(ids, sessions, settings) == "diverged=1 failed=3"
    for job_id in ids:
        failed = job(sessions, job_id)
        if job_id == ids[2]:
            assert failed.status == "diverged"
            continue
        assert (failed.status, failed.error, failed.epochs_done) == ("failed", "RuntimeError: boom", 2)
        assert [r.epoch for r in rows_of(sessions, job_id)] == [1, 2]


def test_a_pack_whose_data_vanished_fails_every_job_cleanly(
    sessions: sessionmaker[Session], settings: Settings, data_root: Path
) -> None:
    import numpy as np

    np.savez(data_root / "d.npz", x=np.zeros((8, 3), np.float32), y=np.linspace(0.1, 0.9, 8, dtype=np.float32))
    dataset = {"name": "npz", "params": {"path": "d.npz", "task": "regression"}}
    specs = [
        {"model": {"name": "linear"}, "dataset": dataset, "loss": "mse", "optimizer": {"name": "sgd"}, "seed": seed}
        for seed in (0, 1)
    ]
    ids = create_pack(sessions, specs)
    (data_root / "d.npz").unlink()
    assert execute(ids, sessions, settings) == "failed=2"
    for job_id in ids:
        failed = job(sessions, job_id)
        assert failed.status == "failed"
        assert failed.error is not None
        assert failed.error.startswith("spec:")
