"""A worker shutdown hands a job back at the epoch its rows end at, with a checkpoint of that very
epoch even when the cadence (``OPTIMLAB_CHECKPOINT_EVERY_S``) wrote none, and the next attempt
resumes there: no epoch trained twice, none lost. Through ``execute``, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from tests.conftest import seed_spec, service_settings
from tests.workers.test_stop import SLOW, Background, _no_shutdown, create, job, rows, until  # noqa: F401
from workers import shutdown
from workers.run import execute

EPOCHS = 400


def test_a_handed_back_job_resumes_at_the_epoch_it_stopped_at(
    sessions: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    settings: Settings = service_settings(tmp_path, database_url, checkpoint_every_s=3600.0)  # never due
    job_id = create(sessions, seed_spec({"name": "sgd"}, epochs=EPOCHS, dataset=SLOW))
    task = Background([job_id], sessions, settings)
    until(lambda: len(rows(sessions, job_id)) >= 3, 60, "three epochs")
    shutdown.request()
    assert task.join(30) == "released=1"
    released = job(sessions, job_id)
    assert (released.status, released.enqueued_at, released.worker) == ("queued", None, None)
    at = released.epochs_done
    assert sorted(rows(sessions, job_id)) == list(range(1, at + 1))
    saved = torch.load(settings.resolved_checkpoint_dir() / str(job_id) / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == at, "the checkpoint holds the epoch the rows end at"

    shutdown.clear()
    assert execute([job_id], sessions, settings) == "succeeded=1"
    finished = job(sessions, job_id)
    assert (finished.attempt, finished.resumed_from_epoch) == (2, at)
    assert sorted(rows(sessions, job_id)) == list(range(1, EPOCHS + 1))


def test_a_resumed_attempt_shows_its_resume_point_while_it_runs_and_not_the_time_it_waited(
    sessions: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    settings: Settings = service_settings(tmp_path, database_url, metrics_flush_s=0.05)
    job_id = create(sessions, seed_spec({"name": "sgd"}, epochs=EPOCHS, dataset=SLOW))
    began = time.monotonic()
    first = Background([job_id], sessions, settings)
    until(lambda: len(rows(sessions, job_id)) >= 3, 60, "three epochs")
    shutdown.request()
    assert first.join(30) == "released=1"
    released = job(sessions, job_id)
    at, ran = released.epochs_done, released.wall_seconds
    assert released.resumed_from_epoch is None
    assert ran is not None, "a hand-back banks the attempt's running time"
    assert ran > 0

    waited = 3.0  # the server is down: not the job's running time
    time.sleep(waited)
    shutdown.clear()
    second = Background([job_id], sessions, settings)
    until(lambda: len(rows(sessions, job_id)) > at, 60, "an epoch of the resumed attempt")
    running = job(sessions, job_id)
    assert (running.status, running.attempt, running.resumed_from_epoch) == ("running", 2, at), "visible at once"
    assert running.wall_seconds is not None
    assert running.wall_seconds > ran, "it counts on from the first attempt's time while it runs"
    shutdown.request()
    assert second.join(30) == "released=1"
    total = job(sessions, job_id).wall_seconds
    assert total is not None
    assert ran < total < time.monotonic() - began - waited, "both attempts' running time, not the wait"
