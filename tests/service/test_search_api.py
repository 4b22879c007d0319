"""Adaptive sweeps over HTTP, on SQLite and PostgreSQL: each rule between the search fields is a 422
naming its field; GET /v1/sweeps/{id}/trials and ``client.study`` hold what the database holds
(values and per-epoch means recomputed here from the raw rows); an adaptive sweep is not done
between its controller's passes, for the long-poll and for ``client.wait``."""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.client import Client
from service.db.models import EpochMetric, Job, JobStatus, SweepTrial
from service.search.controller import Controller
from service.settings import Settings
from tests.conftest import service_settings
from tests.factories import advance
from tests.service.test_search_controller import BASE, SEARCH, SPACE, create, finish, queued, stored

OPTUNA_STATES = {"complete": TrialState.COMPLETE, "failed": TrialState.FAIL, "running": TrialState.RUNNING}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url, dispatch_interval_s=0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def transport(client: TestClient) -> httpx.MockTransport:
    """Requests answered by the app in this process."""

    def forward(request: httpx.Request) -> httpx.Response:
        answer = client.request(
            request.method, request.url.raw_path.decode(), content=request.content, headers=request.headers
        )
        return httpx.Response(answer.status_code, content=answer.content, headers={"content-type": "application/json"})

    return httpx.MockTransport(forward)


@pytest.fixture
def api(transport: httpx.MockTransport) -> Iterator[Client]:
    with Client("http://test", transport=transport) as the_client:
        yield the_client


# --- the rules ---------------------------------------------------------------------------------

CMAES_CHOICE = {"optimizer.name": {"choice": ["sgd"]}, "optimizer.lr": {"log_uniform": [1e-3, 1.0]}}
CMAES_WHEN = {
    "optimizer.params.nesterov": {"choice": [True, False]},
    "optimizer.params.momentum": {"uniform": [0.1, 0.9], "when": {"optimizer.params.nesterov": [True]}},
}


@pytest.mark.parametrize(
    ("fields", "field", "kind"),
    [
        ({"strategy": None}, "strategy", "search_conflict"),  # a space without an adaptive strategy
        ({"strategy": "grid"}, "strategy", "search_conflict"),
        ({"space": None}, "space", "search_conflict"),  # tpe without a space
        ({"budget": None}, "budget", "search_conflict"),
        ({"grid": {"optimizer.lr": [0.1]}}, "grid", "search_conflict"),
        ({"random": {"n": 2, "params": {"optimizer.lr": {"uniform": [0.1, 0.2]}}}}, "random", "search_conflict"),
        ({"lr_from": {"job_id": 1}}, "lr_from", "search_conflict"),
        ({"strategy": "cmaes", "space": CMAES_CHOICE}, "strategy", "strategy_space"),
        ({"strategy": "cmaes", "space": CMAES_WHEN}, "strategy", "strategy_space"),
        ({"budget": 600}, "budget", "resource_cap"),  # 600 trials x 2 seeds > 1000 jobs
        ({"parallelism": 0}, "parallelism", "greater_than_equal"),
        ({"budget": 10_001}, "budget", "less_than_equal"),
        ({"objective": {"metric": "lr"}}, "objective.metric", "string_pattern_mismatch"),
    ],
)
def test_each_rule_of_the_search_fields_is_a_422_naming_its_field(
    client: TestClient, fields: dict[str, Any], field: str, kind: str
) -> None:
    body = {key: value for key, value in (SEARCH | fields).items() if value is not None}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    assert (field, kind) in {(e["field"], e["type"]) for e in response.json()["detail"]}, response.text


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"parallelism": 2}, "parallelism"),  # adaptive fields without a space
        ({"budget": 3}, "budget"),
        ({"objective": {"metric": "val_loss"}}, "objective"),
        ({"strategy": "tpe"}, "space"),
        ({"strategy": "random"}, "random"),  # neither random nor a space
        ({"strategy": "grid", "random": {"n": 2, "params": {"optimizer.lr": {"uniform": [0.1, 0.2]}}}}, "random"),
    ],
)
def test_without_a_space_the_adaptive_fields_are_422s_too(
    client: TestClient, fields: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": {"optimizer.lr": [0.1]}} | fields)
    assert response.status_code == 422, response.text
    assert (field, "search_conflict") in {(e["field"], e["type"]) for e in response.json()["detail"]}


def test_a_strategy_this_host_cannot_run_is_a_422(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.sweeps.schemas.missing_packages", lambda strategy: ["cmaes"])
    response = client.post("/v1/sweeps", json=SEARCH | {"strategy": "cmaes"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert (error["field"], error["type"]) == ("strategy", "unavailable_on_host")
    assert "cmaes" in error["msg"]


def test_grid_and_random_sweeps_are_as_before(client: TestClient) -> None:
    grid = client.post("/v1/sweeps", json={"base": BASE, "grid": {"optimizer.lr": [0.1, 0.2]}, "strategy": "grid"})
    assert grid.status_code == 201, grid.text
    sampled = {"base": BASE, "random": {"n": 3, "params": {"optimizer.lr": {"uniform": [0.1, 0.2]}}}}
    random = client.post("/v1/sweeps", json=sampled)
    assert random.status_code == 201, random.text
    for sweep, strategy, jobs in ((grid.json(), "grid", 2), (random.json(), "random", 3)):
        assert (sweep["strategy"], sweep["n_jobs"], sweep["budget"], sweep["trials"]) == (strategy, jobs, None, None)
        assert not {"space", "parallelism", "objective"} & set(sweep["search"])
        trials = client.get(f"/v1/sweeps/{sweep['id']}/trials").json()
        assert (trials["trials"], trials["space"], trials["strategy"]) == ([], None, strategy)


# --- what the database holds -------------------------------------------------------------------


def from_rows(sessions: sessionmaker[Session], sweep_id: int, column: str, worst: float) -> list[dict[str, Any]]:
    """Each trial recomputed from the raw rows: state, the mean of ``column`` over its seeds (a
    diverged one ``worst``), and per epoch the mean val_loss over the seeds with a value."""
    with sessions() as session:
        trials = session.execute(
            select(SweepTrial.number, SweepTrial.params)
            .where(SweepTrial.sweep_id == sweep_id)
            .order_by(SweepTrial.number)
        ).all()
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id)).all()
        rows = session.scalars(select(EpochMetric)).all()
    found = []
    for number, params in trials:
        mine = [job for job in jobs if job.trial_number == number]
        statuses = {job.status for job in mine}
        curve: dict[int, list[float]] = {}
        for row in rows:
            if row.job_id in {job.id for job in mine} and row.val_loss is not None:
                curve.setdefault(row.epoch, []).append(row.val_loss)
        value = None
        if statuses & {"queued", "running"}:
            state = "running"
        elif statuses <= {"succeeded", "diverged"}:
            state = "complete"
            values = [worst if job.status == "diverged" else getattr(job, column) for job in mine]
            value = sum(values) / len(values)
        else:
            state = "failed"
        intermediate = {epoch: sum(values) / len(values) for epoch, values in curve.items()}
        found.append({"number": number, "params": params, "state": state, "value": value, "curve": intermediate})
    return found


def play(sessions: sessionmaker[Session], sweep_id: int) -> None:
    """Trial 0 succeeds; trial 1 has a diverged seed; trial 2 a failed one; trial 3 still runs."""
    trials = stored(sessions, sweep_id)
    ids = {number: [job.id for job in jobs] for number, (_, jobs) in trials.items()}
    finish(sessions, ids[0])
    advance(sessions, ids[1][0], losses=[0.8, math.inf], status=JobStatus.diverged)
    finish(sessions, ids[1][1:])
    advance(sessions, ids[2][0], losses=[0.7], status=JobStatus.failed)
    finish(sessions, ids[2][1:])
    advance(sessions, ids[3][0], losses=[0.9])


def test_the_trials_and_the_study_hold_what_the_database_holds(
    client: TestClient, api: Client, sessions: sessionmaker[Session]
) -> None:
    sweep = create(client, budget=5, parallelism=4, seeds=[0, 1, 2])
    play(sessions, sweep["id"])
    expected = from_rows(sessions, sweep["id"], "final_val_loss", math.inf)
    assert [t["state"] for t in expected] == ["complete", "complete", "failed", "running"]
    body = client.get(f"/v1/sweeps/{sweep['id']}/trials").json()
    assert (body["space"], body["objective"]) == (
        SPACE,
        {"metric": "val_loss", "which": "final", "direction": "minimize"},
    )
    for trial, want in zip(body["trials"], expected, strict=True):
        assert (trial["number"], trial["params"], trial["state"]) == (want["number"], want["params"], want["state"])
        assert trial["value"] == ("Infinity" if want["value"] == math.inf else pytest.approx(want["value"]))
        assert {int(e): v for e, v in trial["intermediate"].items()} == pytest.approx(want["curve"])
        assert len(trial["job_ids"]) == 3
    best = client.get(f"/v1/sweeps/{sweep['id']}").json()["best_trial"]
    assert best == body["trials"][0], "the one complete trial with a finite value"

    study = api.study(sweep)
    assert isinstance(study, optuna.Study)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for trial, want in zip(study.trials, expected, strict=True):
        assert (trial.number, trial.params, trial.state) == (
            want["number"],
            want["params"],
            OPTUNA_STATES[want["state"]],
        )
        assert trial.value == (None if want["value"] is None else pytest.approx(want["value"]))
        assert trial.intermediate_values == pytest.approx(want["curve"])
    assert study.best_trial.number == 0
    assert study.best_params == expected[0]["params"]


def test_a_maximized_objective_counts_a_diverged_seed_as_minus_infinity(
    client: TestClient, api: Client, sessions: sessionmaker[Session]
) -> None:
    sweep = create(client, objective={"metric": "val_accuracy", "which": "best"}, parallelism=2)
    assert sweep["objective"] == {"metric": "val_accuracy", "which": "best", "direction": "maximize"}
    ids = {number: [job.id for job in jobs] for number, (_, jobs) in stored(sessions, sweep["id"]).items()}
    finish(sessions, ids[0])
    advance(sessions, ids[1][0], losses=[0.8, math.inf], status=JobStatus.diverged)
    finish(sessions, ids[1][1:])
    expected = from_rows(sessions, sweep["id"], "best_val_accuracy", -math.inf)
    trials = client.get(f"/v1/sweeps/{sweep['id']}/trials").json()["trials"]
    assert trials[0]["value"] == pytest.approx(expected[0]["value"])
    assert trials[1]["value"] == "-Infinity"
    study = api.study(sweep)
    assert (study.direction, study.trials[1].value) == (optuna.study.StudyDirection.MAXIMIZE, -math.inf)


def test_a_grid_sweep_has_no_study(client: TestClient, api: Client) -> None:
    sweep = client.post("/v1/sweeps", json={"base": BASE, "grid": {"optimizer.lr": [0.1]}}).json()
    with pytest.raises(ValueError, match="only adaptive sweeps have trials"):
        api.study(sweep)


# --- done --------------------------------------------------------------------------------------


def test_the_long_poll_holds_an_adaptive_sweep_between_passes(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    sweep = create(client, budget=3)
    finish(sessions, queued(sessions, sweep["id"]))  # no job in flight, one trial left to create
    start = time.monotonic()
    held = client.get(f"/v1/sweeps/{sweep['id']}", params={"wait_s": 0.6, "until": "done"}).json()
    assert time.monotonic() - start >= 0.5
    assert (held["done"], held["counts"]["queued"] + held["counts"]["running"], held["trials"]) == (False, 0, 2)
    assert Controller(sessions, settings).run_once() == 1
    moved = client.get(f"/v1/sweeps/{sweep['id']}", params={"wait_s": 5, "since": held["state_token"]}).json()
    assert (moved["trials"], moved["done"]) == (3, False)
    finish(sessions, queued(sessions, sweep["id"]))
    start = time.monotonic()
    done = client.get(f"/v1/sweeps/{sweep['id']}", params={"wait_s": 5, "until": "done"}).json()
    assert (done["done"], done["trials"]) == (True, 3)
    assert time.monotonic() - start < 2


def test_client_wait_returns_only_once_the_budget_is_done(
    api: Client, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    sweep = create(client, budget=4)
    finish(sessions, queued(sessions, sweep["id"]))
    with pytest.raises(TimeoutError):
        api.wait(sweep, progress=False, timeout=1.0)  # between passes: not done

    stop = threading.Event()

    def controller_and_workers() -> None:
        controller = Controller(sessions, settings)
        while not stop.is_set():
            controller.run_once()
            finish(sessions, queued(sessions, sweep["id"]))
            time.sleep(0.05)

    thread = threading.Thread(target=controller_and_workers)
    thread.start()
    try:
        done = api.wait(sweep, progress=True, timeout=30)
    finally:
        stop.set()
        thread.join(10)
    assert (done["done"], done["trials"], done["counts"]["succeeded"]) == (True, 4, 8)


def test_the_cli_sweep_file_takes_the_search_keys(
    client: TestClient, transport: httpx.MockTransport, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import yaml
    from typer.testing import CliRunner

    import service.client
    from service.cli import app as cli_app

    monkeypatch.setattr(service.client, "Client", functools.partial(Client, transport=transport))
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(SEARCH | {"objective": {"metric": "val_loss", "which": "best"}, "sampler_seed": 7})
    )
    created = CliRunner().invoke(cli_app, ["sweep", str(search), "--url", "http://test"])
    assert created.exit_code == 0, created.output
    assert "4 jobs (tpe: 2 of 6 trials so far)" in created.output
    sweep = client.get(f"/v1/sweeps/{created.stdout.split()[-1]}").json()
    assert (sweep["search"]["sampler_seed"], sweep["objective"]["which"], sweep["budget"]) == (7, "best", 6)
    search.write_text(yaml.safe_dump(SEARCH | {"pruner": {"name": "asha", "reduction_factor": 2}}))
    pruned = CliRunner().invoke(cli_app, ["sweep", str(search), "--url", "http://test"])
    assert pruned.exit_code == 0, pruned.output
    sweep = client.get(f"/v1/sweeps/{pruned.stdout.split()[-1]}").json()
    assert sweep["search"]["pruner"] == {"name": "asha", "reduction_factor": 2}
    search.write_text(yaml.safe_dump(SEARCH | {"prunner": "median"}))
    unknown = CliRunner().invoke(cli_app, ["sweep", str(search), "--url", "http://test"])
    assert (unknown.exit_code, "unknown key 'prunner' (did you mean 'pruner'?)" in unknown.output) == (2, True), (
        unknown.output
    )
