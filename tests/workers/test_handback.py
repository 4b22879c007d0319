"""A worker shutdown hands a job back at the epoch its rows end at, with a checkpoint of that very
epoch even when the cadence (``OPTIMLAB_CHECKPOINT_EVERY_S``) wrote none, and the next attempt
resumes there: no epoch trained twice, none lost. Through ``execute``, on SQLite and PostgreSQL."""

from __future__ import annotations

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
