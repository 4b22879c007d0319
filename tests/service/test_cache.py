"""The result cache: its key (unit), the migration that stores it, and the API serving jobs and
sweeps from runs the worker path (``workers.run.execute``, the code Celery calls) trained, on
SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import service.client
from optim_engine.spec import JobSpec
from service import cache
from service.app import create_app
from service.cli import app as cli_app
from service.db import epochs, transitions
from service.db.migrate import alembic_config, upgrade
from service.db.models import Job, JobStatus
from service.settings import Settings
from tests.conftest import seed_spec, service_settings
from tests.factories import epoch_row, job_body
from workers.run import execute

SPEC = seed_spec({"name": "sgd", "lr": 0.01}, epochs=3)
SWEEP = {"base": SPEC, "grid": {"optimizer.lr": [0.01, 0.02]}, "seeds": [0, 1]}


# --- the key -----------------------------------------------------------------------------------


def test_the_key_changes_with_every_part_it_names() -> None:
    spec = JobSpec.model_validate(SPEC)
    parts = cache.CacheKey(spec.spec_hash(), "2.13.0+cpu", "cpu", "0.1.0")
    reseeded = spec.model_copy(update={"seed": 1}).spec_hash()
    variants = [
        parts,
        cache.CacheKey(reseeded, "2.13.0+cpu", "cpu", "0.1.0"),
        cache.CacheKey(spec.spec_hash(), "2.13.0+cu126", "cpu", "0.1.0"),
        cache.CacheKey(spec.spec_hash(), "2.13.0+cpu", "cuda", "0.1.0"),
        cache.CacheKey(spec.spec_hash(), "2.13.0+cpu", "cpu", "0.2.0"),
    ]
    digests = [key.digest() for key in variants]
    assert len(set(digests)) == len(variants), "seed, torch, device kind and optimlab each change the key"
    assert parts.digest() == cache.CacheKey(spec.spec_hash(), "2.13.0+cpu", "cpu", "0.1.0").digest()
    assert len(parts.digest()) == 64


def test_the_worker_and_the_api_agree_on_the_key_of_the_same_run() -> None:
    installed = cache.installed()
    assert installed is not None
    torch = cache.installed_version("torch")
    spec_hash = JobSpec.model_validate(SPEC).spec_hash()
    on_cpu = cache.of_run(spec_hash, {"torch": torch, "device": "cpu", "seed": 0})
    on_gpu = cache.of_run(spec_hash, {"torch": torch, "device": "cuda:0"})
    assert on_cpu == installed.expected(spec_hash, "cpu", "cpu")
    assert on_cpu == installed.expected(spec_hash, "auto", "cpu")  # auto on the cpu queue: a CPU run
    assert on_gpu == installed.expected(spec_hash, "cuda:1", "gpu") == installed.expected(spec_hash, "auto", "gpu")
    assert on_cpu != installed.expected(spec_hash, "mps", "cpu")
    assert on_gpu != on_cpu
    # A run whose environment does not say what ran is never reused.
    assert cache.of_run(spec_hash, {"device": "cpu"}) is None
    assert cache.of_run(spec_hash, {"torch": torch, "device": "meta"}) is None
    assert cache.of_run(spec_hash, None) is None


def test_no_torch_next_to_the_api_means_no_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "installed_version", lambda package: None if package == "torch" else "0.1.0")
    assert cache.installed() is None


def test_the_migration_round_trips(database_url: str) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "0006")
    upgrade(database_url)
    command.check(config)  # raises if the schema differs from the models


# --- the API -----------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


STATIC = "static-admin-token-0123456789"


def token_of(client: TestClient, owner: str) -> dict[str, str]:
    """A new key of ``owner``, as the bearer header to send."""
    response = client.post("/v1/keys", json={"owner": owner}, headers={"Authorization": f"Bearer {STATIC}"})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def train(sessions: sessionmaker[Session], settings: Settings, job_ids: Sequence[int]) -> int:
    """Run the jobs through the worker's path as the dispatcher groups them (a pack's jobs as one
    task); returns how many tasks ran."""
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.pack_id).where(Job.id.in_(list(job_ids))).order_by(Job.id)).all()
    tasks: dict[str, list[int]] = {}
    for job_id, pack_id in rows:
        tasks.setdefault(pack_id or f"job-{job_id}", []).append(job_id)
    for ids in tasks.values():
        assert execute(ids, sessions, settings) == f"succeeded={len(ids)}"
    return len(tasks)


def jobs_of(client: TestClient, sweep_id: int) -> list[dict[str, Any]]:
    response = client.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500})
    return sorted(response.json()["items"], key=lambda job: job["id"])


def assert_never_sent(client: TestClient, job_ids: Sequence[int]) -> None:
    """A dispatcher pass run now sends none of ``job_ids``, and none was sent before."""
    client.app.state.dispatcher.send()  # type: ignore[attr-defined]
    for job_id in job_ids:
        assert client.get(f"/v1/jobs/{job_id}").json()["enqueued_at"] is None


def test_a_job_run_then_resubmitted_is_served_from_the_cache(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    first = client.post("/v1/jobs", json=job_body(SPEC)).json()
    train(sessions, settings, [first["id"]])
    trained = client.get(f"/v1/jobs/{first['id']}").json()
    with sessions() as session:
        key = session.scalar(select(Job.cache_key).where(Job.id == first["id"]))
    installed = cache.installed()
    assert installed is not None
    assert key == installed.expected(first["spec_hash"], "cpu", "cpu"), "the worker wrote the key the API expects"

    again = client.post("/v1/jobs", json=job_body(SPEC, tags=["again"], name="again"))
    assert again.status_code == 201, again.text
    served = again.json()
    assert (served["status"], served["cached_from"], served["attempt"], served["worker"]) == (
        "succeeded",
        first["id"],
        0,
        None,
    )
    assert (served["tags"], served["name"]) == (["again"], "again")
    assert served["started_at"] is not None
    assert served["finished_at"] is not None
    for field in ("environment", "device", "summary", "spec_hash"):
        assert served[field] == trained[field], field
    rows = client.get(f"/v1/jobs/{first['id']}/metrics").json()["rows"]
    assert len(rows) == 3
    assert client.get(f"/v1/jobs/{served['id']}/metrics").json()["rows"] == rows
    assert_never_sent(client, [served["id"]])

    # A copy of a copy names the run that trained.
    third = client.post("/v1/jobs", json=job_body(SPEC)).json()
    assert third["cached_from"] == first["id"]
    # Another seed is another run.
    other_seed = client.post("/v1/jobs", json=job_body(SPEC | {"seed": 1})).json()
    assert (other_seed["status"], other_seed["cached_from"]) == ("queued", None)


def test_cache_false_and_the_server_setting_train_again(
    tmp_path: Path, database_url: str, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    first = client.post("/v1/jobs", json=job_body(SPEC)).json()
    train(sessions, settings, [first["id"]])
    opted_out = client.post("/v1/jobs", json=job_body(SPEC, cache=False)).json()
    assert (opted_out["status"], opted_out["cached_from"]) == ("queued", None)
    sweep = client.post("/v1/sweeps", json={"base": SPEC, "cache": False}).json()
    assert (sweep["counts"]["queued"], sweep["cached"]) == (1, 0)
    assert client.post("/v1/jobs", json=job_body(SPEC, cache="no")).status_code == 422

    off = service_settings(tmp_path / "off", database_url, result_cache=False)
    with TestClient(create_app(off)) as other:
        assert other.post("/v1/jobs", json=job_body(SPEC)).json()["cached_from"] is None


def test_another_owners_run_is_never_reused(tmp_path: Path, database_url: str, sessions: sessionmaker[Session]) -> None:
    settings = service_settings(tmp_path, database_url, auth="keys", api_keys=[STATIC])
    with TestClient(create_app(settings)) as keyed:
        alice, bob = token_of(keyed, "alice"), token_of(keyed, "bob")
        first = keyed.post("/v1/jobs", json=job_body(SPEC), headers=alice).json()
        train(sessions, settings, [first["id"]])
        theirs = keyed.post("/v1/jobs", json=job_body(SPEC), headers=bob).json()
        assert (theirs["status"], theirs["cached_from"]) == ("queued", None)
        mine = keyed.post("/v1/jobs", json=job_body(SPEC), headers=alice).json()
        assert (mine["status"], mine["cached_from"]) == ("succeeded", first["id"])


@pytest.mark.parametrize("status", [JobStatus.failed, JobStatus.diverged, JobStatus.cancelled])
def test_a_run_that_did_not_succeed_is_never_reused(
    client: TestClient, sessions: sessionmaker[Session], status: JobStatus
) -> None:
    first = client.post("/v1/jobs", json=job_body(SPEC)).json()
    environment = {"torch": cache.installed_version("torch"), "device": "cpu"}  # as a real run reports
    with sessions() as session, session.begin():
        (claim,) = transitions.claim(session, [first["id"]], worker="w:1", stale_after_s=60)
        epochs.record(session, {first["id"]: [epoch_row(1, 0.5)]})
        assert transitions.finish(session, first["id"], claim.attempt, status, environment=environment)
    with sessions() as session:
        assert session.scalar(select(Job.cache_key).where(Job.id == first["id"])) is None
    assert client.post("/v1/jobs", json=job_body(SPEC)).json()["cached_from"] is None
    # Even with a key (written by hand here), the lookup takes succeeded runs only.
    installed = cache.installed()
    assert installed is not None
    with sessions() as session, session.begin():
        key = installed.expected(first["spec_hash"], "cpu", "cpu")
        session.execute(update(Job).where(Job.id == first["id"]).values(cache_key=key))
    assert client.post("/v1/jobs", json=job_body(SPEC)).json()["cached_from"] is None


def test_a_served_job_copies_the_runs_result(client: TestClient, sessions: sessionmaker[Session]) -> None:
    """What a run reports beyond its epochs (a range test's curve, a 2-D path) comes along."""
    first = client.post("/v1/jobs", json=job_body(SPEC)).json()
    environment = {"torch": cache.installed_version("torch"), "device": "cpu"}
    artifacts = {"curve": [1.0, 0.5], "suggestions": {"valley": 0.01}}
    with sessions() as session, session.begin():
        (claim,) = transitions.claim(session, [first["id"]], worker="w:1", stale_after_s=60)
        epochs.record(session, {first["id"]: [epoch_row(1, 0.5), epoch_row(2, 0.25)]})
        assert transitions.finish(
            session, first["id"], claim.attempt, JobStatus.succeeded, environment=environment, result=artifacts
        )
    served = client.post("/v1/jobs", json=job_body(SPEC)).json()
    assert (served["cached_from"], served["summary"]["epochs_done"], served["summary"]["best_loss"]) == (
        first["id"],
        2,
        0.25 * 1.1,
    )
    assert client.get(f"/v1/jobs/{served['id']}/result").json()["result"] == artifacts


def test_a_repeated_sweep_is_served_entirely_from_the_cache(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    first = client.post("/v1/sweeps", json=SWEEP).json()
    first_jobs = jobs_of(client, first["id"])
    assert len({job["pack_id"] for job in first_jobs}) == 1, "auto: the four trials train as one pack"
    assert train(sessions, settings, [job["id"] for job in first_jobs]) == 1

    again = client.post("/v1/sweeps", json=SWEEP)
    assert again.status_code == 201, again.text
    repeat = again.json()
    assert (repeat["n_jobs"], repeat["counts"]["succeeded"], repeat["cached"], repeat["done"]) == (4, 4, 4, True)
    repeat_jobs = jobs_of(client, repeat["id"])
    by_spec = {job["spec_hash"]: job for job in first_jobs}
    for job in repeat_jobs:
        source = by_spec[job["spec_hash"]]
        assert (job["status"], job["cached_from"], job["pack_id"]) == ("succeeded", source["id"], None)
        assert job["config"] == source["config"]
    assert_never_sent(client, [job["id"] for job in repeat_jobs])
    board = client.get(f"/v1/sweeps/{first['id']}/leaderboard").json()["rows"]
    assert client.get(f"/v1/sweeps/{repeat['id']}/leaderboard").json()["rows"] == board
    assert all(row["n"] == 2 and row["mean"] is not None for row in board)
    curves = client.get(f"/v1/sweeps/{first['id']}/metrics", params={"columns": "train_loss,val_loss"}).json()
    copied = client.get(f"/v1/sweeps/{repeat['id']}/metrics", params={"columns": "train_loss,val_loss"}).json()
    to_source = {job["id"]: job["cached_from"] for job in repeat_jobs}
    assert sorted([to_source[row[0]], *row[1:]] for row in copied["rows"]) == sorted(curves["rows"])
    listed = client.get("/v1/sweeps").json()["items"]
    assert {s["id"]: s["cached"] for s in listed} == {first["id"]: 0, repeat["id"]: 4}


def test_a_partly_repeated_sweep_trains_only_its_new_trials(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    first = client.post("/v1/sweeps", json=SWEEP).json()
    train(sessions, settings, [job["id"] for job in jobs_of(client, first["id"])])

    wider = SWEEP | {"grid": {"optimizer.lr": [0.01, 0.02, 0.05]}, "seeds": [0, 1, 2]}  # 9 trials, 4 seen
    created = client.post("/v1/sweeps", json=wider, headers={"Idempotency-Key": "wider"}).json()
    assert (created["n_jobs"], created["cached"], created["counts"]["queued"]) == (9, 4, 5)
    jobs = jobs_of(client, created["id"])
    served = [job for job in jobs if job["cached_from"] is not None]
    misses = [job for job in jobs if job["cached_from"] is None]
    assert {(job["config"]["optimizer.lr"], job["spec"]["seed"]) for job in served} == {
        (lr, seed) for lr in (0.01, 0.02) for seed in (0, 1)
    }
    assert all(job["pack_id"] is None for job in served)
    (pack,) = {job["pack_id"] for job in misses}
    assert pack is not None, "the five misses train as one pack"
    assert train(sessions, settings, [job["id"] for job in misses]) == 1

    # A retried POST returns the same sweep and jobs, creating none.
    retried = client.post("/v1/sweeps", json=wider, headers={"Idempotency-Key": "wider"})
    assert (retried.status_code, retried.json()["id"]) == (200, created["id"])
    assert [job["id"] for job in jobs_of(client, created["id"])] == [job["id"] for job in jobs]

    # A single new trial runs alone (auto), not as a pack of one.
    one_new = SWEEP | {"grid": {"optimizer.lr": [0.01, 0.02, 0.05, 0.1]}, "seeds": [0]}
    created = client.post("/v1/sweeps", json=one_new).json()
    assert (created["cached"], created["counts"]["queued"]) == (3, 1)
    (alone,) = [job for job in jobs_of(client, created["id"]) if job["cached_from"] is None]
    assert (alone["config"]["optimizer.lr"], alone["pack_id"]) == (0.1, None)


def test_the_client_and_the_cli_pass_the_opt_out(
    client: TestClient,
    sessions: sessionmaker[Session],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    first = client.post("/v1/jobs", json=job_body(SPEC)).json()
    train(sessions, settings, [first["id"]])

    def forward(request: httpx.Request) -> httpx.Response:  # the client's requests, answered by the app
        answer = client.request(request.method, request.url.path, content=request.content, headers=request.headers)
        return httpx.Response(answer.status_code, content=answer.content, headers={"content-type": "application/json"})

    monkeypatch.setattr(
        service.client, "Client", partial(service.client.Client, transport=httpx.MockTransport(forward))
    )
    with service.client.Client("http://test") as api:
        assert api.submit(SPEC)["cached_from"] == first["id"]
        assert api.submit(SPEC, cache=False)["cached_from"] is None
        assert api.sweep(SPEC, seeds=[0])["cached"] == 1
        assert api.sweep(SPEC, seeds=[0], cache=False)["cached"] == 0

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": SPEC, "seeds": [0]}))
    served = CliRunner().invoke(cli_app, ["sweep", str(sweep_file), "--url", "http://test"])
    assert "1 jobs, 1 from the result cache" in served.output, served.output
    sweep_file.write_text(yaml.safe_dump({"base": SPEC, "seeds": [0], "cache": False}))
    trained = CliRunner().invoke(cli_app, ["sweep", str(sweep_file), "--url", "http://test"])
    assert (trained.exit_code, "from the result cache" in trained.output) == (0, False), trained.output
    sweep_file.write_text(yaml.safe_dump({"base": SPEC, "cache": "no"}))
    assert CliRunner().invoke(cli_app, ["sweep", str(sweep_file), "--url", "http://test"]).exit_code == 2
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    submitted = CliRunner().invoke(cli_app, ["submit", str(spec_file), "--url", "http://test"])
    assert f"from the result cache (job {first['id']})" in submitted.output, submitted.output
    again = CliRunner().invoke(cli_app, ["submit", str(spec_file), "--no-cache", "--url", "http://test"])
    assert "queued" in again.output, again.output
