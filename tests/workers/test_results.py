"""A run's artifacts reach ``jobs.result`` through the one job path: an LR range test's curve and
suggestions, a 2-D function run's trajectory, nothing for a plain run (on SQLite and PostgreSQL)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import EpochMetric, Job
from service.settings import Settings
from tests.conftest import seed_spec, service_settings
from tests.factories import insert_job
from workers.run import execute


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url, metrics_flush_s=0.05)  # type: ignore[no-any-return]


def run(sessions: sessionmaker[Session], settings: Settings, spec: dict) -> tuple[Job, int]:
    with sessions() as session, session.begin():
        job_id = insert_job(session, spec)
    execute([job_id], sessions, settings)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        rows = len(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)).all())
        return job, rows


def test_a_range_test_stores_its_curve_and_suggestions(sessions: sessionmaker[Session], settings: Settings) -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.01}) | {"lr_range_test": {"steps": 60}}
    job, rows = run(sessions, settings, spec)
    assert job.status == "succeeded"
    assert rows == 0, "a range test has no epochs"
    result = job.result
    assert result is not None
    assert result["kind"] == "lr_range_test"
    assert len(result["lr"]) == len(result["loss"]) == len(result["smoothed"]) <= 60
    assert result["lr"][0] == pytest.approx(1e-7)
    assert set(result["suggestions"]) == {"steepest", "valley", "min_over_10"}
    valley = result["suggestions"]["valley"]
    assert valley is None or result["lr"][0] <= valley <= result["lr"][-1]


def test_a_2d_run_stores_its_path_and_its_epochs(sessions: sessionmaker[Session], settings: Settings) -> None:
    spec = {
        "model": {"name": "point"},
        "dataset": {"name": "rosenbrock", "params": {"steps_per_epoch": 20}},
        "loss": "value",
        "optimizer": {"name": "adam", "lr": 0.05},
        "epochs": 3,
    }
    job, rows = run(sessions, settings, spec)
    assert job.status == "succeeded"
    assert rows == 3
    path = job.result
    assert path is not None
    assert path["function"] == "rosenbrock"
    assert len(path["x"]) == len(path["y"]) == len(path["value"]) == 61, "the start and one point per step"
    assert (path["x"][0], path["y"][0]) == (-1.5, 2.0)
    assert path["value"][0] == pytest.approx((1 + 1.5) ** 2 + 100 * (2.0 - 2.25) ** 2)
    assert all(math.isfinite(v) for v in path["value"])


def test_a_plain_run_stores_no_result(sessions: sessionmaker[Session], settings: Settings) -> None:
    job, rows = run(sessions, settings, seed_spec({"name": "sgd", "lr": 0.01}, epochs=2))
    assert job.status == "succeeded"
    assert rows == 2
    assert job.result is None
