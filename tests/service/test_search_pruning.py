"""A pruned adaptive sweep end to end on SQLite and PostgreSQL: the controller asks, the worker's
one job path trains (``execute``), the pruner stops losing trials after an epoch; pruned jobs keep
their rows, the leaderboard counts them as tried, the trials and ``client.study`` say pruned."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.client import Client
from service.db.models import EpochMetric, Job, JobStatus
from service.search.controller import Controller
from service.settings import Settings
from tests.conftest import digits_spec, service_settings
from tests.service.test_search_controller import BASE, SEARCH
from workers.run import execute

DIGITS = digits_spec({"name": "sgd", "lr": 0.1}, model={"name": "mlp", "params": {"depth": 1, "width": 32}}, epochs=6)
PRUNED_SEARCH = {
    "base": DIGITS,
    "strategy": "tpe",
    "space": {"optimizer.lr": {"log_uniform": [1e-6, 0.3]}},
    "budget": 10,
    "parallelism": 2,
    "seeds": [0, 1],
    "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 2},
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url, dispatch_interval_s=0, prune_refresh_s=0.001)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("fields", "field", "kind"),
    [
        ({"pruner": {"name": "median", "reduction_factor": 2}}, "pruner", "value_error"),
        ({"pruner": {"name": "percentile"}}, "pruner", "value_error"),
        ({"pruner": "nope"}, "pruner.name", "literal_error"),
        ({"pruner": "wilcoxon"}, "pruner", "search_conflict"),  # 2 seeds: p is never under 0.1
    ],
)
def test_a_bad_pruner_is_a_422_naming_it(client: TestClient, fields: dict[str, Any], field: str, kind: str) -> None:
    response = client.post("/v1/sweeps", json=SEARCH | fields)
    assert response.status_code == 422, response.text
    assert (field, kind) in {(e["field"], e["type"]) for e in response.json()["detail"]}, response.text


def test_a_pruner_without_an_adaptive_search_is_a_422(client: TestClient) -> None:
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": {"optimizer.lr": [0.1]}, "pruner": "median"})
    assert response.status_code == 422, response.text
    assert ("pruner", "search_conflict") in {(e["field"], e["type"]) for e in response.json()["detail"]}


def run_sweep(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> int:
    """Create the sweep, then pass and train until no job is left: what the dispatcher and the
    workers do, one step at a time."""
    response = client.post("/v1/sweeps", json=PRUNED_SEARCH)
    assert response.status_code == 201, response.text
    sweep_id = int(response.json()["id"])
    controller = Controller(sessions, settings)
    for _ in range(50):
        with sessions() as session:
            waiting = session.execute(
                select(Job.id, Job.pack_id).where(Job.sweep_id == sweep_id, Job.status == JobStatus.queued)
            ).all()
        if not waiting and controller.run_once() == 0:
            return sweep_id
        tasks: dict[Any, list[int]] = defaultdict(list)
        for job_id, pack_id in waiting:
            tasks[pack_id or f"job-{job_id}"].append(job_id)
        for job_ids in tasks.values():
            execute(job_ids, sessions, settings)
    raise AssertionError("the sweep did not finish in 50 rounds")


def test_losing_trials_are_pruned_and_counted_as_tried(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    sweep_id = run_sweep(client, sessions, settings)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id)).all()
        rows = dict(
            session.execute(
                select(EpochMetric.job_id, func.count())
                .where(EpochMetric.job_id.in_([j.id for j in jobs]))
                .group_by(EpochMetric.job_id)
            ).all()
        )
    pruned = [job for job in jobs if job.status == JobStatus.pruned]
    assert len(jobs) == 20
    assert pruned, "a 1e-6..0.3 learning rate range has losers"
    assert all(job.epochs_done < 6 and rows[job.id] == job.epochs_done for job in pruned)
    assert {job.status for job in jobs} <= {JobStatus.succeeded, JobStatus.pruned}
    trained, unpruned = sum(job.epochs_done for job in jobs), 6 * len(jobs)
    print(f"\n{len(pruned)} of {len(jobs)} jobs pruned; {trained} of {unpruned} epochs trained")
    assert trained < unpruned

    board = client.get(f"/v1/sweeps/{sweep_id}/leaderboard", params={"metric": "val_loss"}).json()["rows"]
    assert sum(row["pruned"] for row in board) == len(pruned)
    ranked = [row["pruned"] > 0 for row in board]
    assert ranked == sorted(ranked), "a configuration a pruner stopped ranks after every complete one"
    trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["trials"]
    pruned_trials = {job.trial_number for job in pruned}
    assert {t["number"] for t in trials if t["state"] == "pruned"} == pruned_trials
    sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["done"]
    assert sweep["counts"]["pruned"] == len(pruned)

    def forward(request: httpx.Request) -> httpx.Response:
        answer = client.request(request.method, request.url.raw_path.decode(), headers=request.headers)
        return httpx.Response(answer.status_code, content=answer.content, headers={"content-type": "application/json"})

    with Client("http://test", transport=httpx.MockTransport(forward)) as api:
        study = api.study(sweep_id)
    states = {t.number: t.state for t in study.trials}
    assert {n for n, s in states.items() if s == optuna.trial.TrialState.PRUNED} == pruned_trials
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.intermediate_values, "a pruned trial keeps its epochs"


def test_a_pruned_sweep_trains_its_trials_rather_than_copy_them(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A cached run carries no pruning decisions, and pruned runs are never cached: a repeat of a
    pruned sweep served partly from the cache would train more than the first. It trains all,
    and asks exactly the first's trials."""
    first = run_sweep(client, sessions, settings)
    again = run_sweep(client, sessions, settings)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.sweep_id == again)).all()
    assert jobs
    assert all(job.cached_from is None for job in jobs)
    params = [[t["params"] for t in client.get(f"/v1/sweeps/{s}/trials").json()["trials"]] for s in (first, again)]
    assert params[0] == params[1]
