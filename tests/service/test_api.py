"""The REST API's contract, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service import broker
from service.app import create_app
from service.db import transitions
from service.db.models import EpochMetric, Job, JobStatus
from tests.conftest import digits_spec, eventually, seed_spec, service_settings
from tests.factories import advance, job_body
from tests.servers import free_port


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url))) as test_client:
        yield test_client


def job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def queued_messages(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home" / "broker" / "queue").glob("*.msg"))


# --- create ------------------------------------------------------------------------------------


def test_post_job_creates_a_queued_job_and_the_dispatcher_sends_it(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/v1/jobs", json=job_body(tags=["seed", "sgd"], name="seed sgd"))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["optimizer"] == "sgd"
    assert job["queue"] == "cpu"
    assert job["tags"] == ["seed", "sgd"]
    assert job["spec"]["optimizer"]["lr"] == 0.01
    assert job["summary"]["epochs_total"] == 3
    eventually(lambda: client.get(f"/v1/jobs/{job['id']}").json()["enqueued_at"] is not None)
    assert len(queued_messages(tmp_path)) == 1
    assert client.get(f"/v1/jobs/{job['id']}").json()["spec_hash"] == job["spec_hash"]


def test_cuda_specs_go_to_the_gpu_queue(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=job_body(seed_spec({"name": "adam"}, device="cuda:0"))).json()
    assert job["queue"] == "gpu"


@pytest.mark.parametrize(
    ("spec_change", "field"),
    [
        ({"optimizer": {"name": "sgdd", "lr": 0.1}}, "spec.optimizer.name"),
        ({"optimizer": {"name": "sgd", "lr": -1.0}}, "spec.optimizer.lr"),
        ({"optimizer": {"name": "adam", "params": {"betas": [0.9, 1.5]}}}, "spec.optimizer.params.betas.1"),
        ({"optimizer": {"name": "sgd", "params": {"momentum": "0.9"}}}, "spec.optimizer.params.momentum"),
        ({"loss": "cross_entropy"}, "spec.loss"),
        ({"epochs": 0}, "spec.epochs"),
        ({"epochs": 20_000}, "spec.epochs"),
        ({"learning_rate": 0.1}, "spec.learning_rate"),
        ({"device": "tpu"}, "spec.device"),
        ({"dataset": {"name": "npz", "params": {"path": "../../etc/passwd.npz"}}}, "spec.dataset"),
    ],
)
def test_invalid_specs_are_422_naming_the_field(
    client: TestClient, sessions: sessionmaker[Session], spec_change: dict[str, Any], field: str
) -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.01}) | spec_change
    response = client.post("/v1/jobs", json=job_body(spec))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    fields = [d["field"] for d in body["detail"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert job_count(sessions) == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "spec"),
        ({"spec": seed_spec({"name": "sgd"}), "tags": ["has space"]}, "tags.0"),
        ({"spec": seed_spec({"name": "sgd"}), "owner": "me"}, "owner"),
        ([1, 2], ""),
    ],
)
def test_malformed_bodies_are_422(client: TestClient, payload: Any, field: str) -> None:
    response = client.post("/v1/jobs", json=payload)
    assert response.status_code == 422
    assert any(d["field"] == field for d in response.json()["detail"])


def test_a_body_that_is_not_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_resource_caps_are_server_settings(tmp_path: Path, database_url: str) -> None:
    settings = service_settings(tmp_path, database_url, max_epochs=5, max_model_width=16)
    with TestClient(create_app(settings)) as capped:
        assert capped.post("/v1/jobs", json=job_body(seed_spec({"name": "sgd"}, epochs=6))).status_code == 422
        wide = capped.post("/v1/jobs", json=job_body(digits_spec({"name": "sgd"})))
        assert wide.status_code == 422
        assert wide.json()["detail"][0]["field"] == "spec.model.params"
        assert capped.post("/v1/jobs", json=job_body(seed_spec({"name": "sgd"}, epochs=5))).status_code == 201


def test_what_the_host_lacks_is_a_422_like_a_cap(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from service import admission

    def lacking(spec: Any, data_root: Any = None) -> list[tuple[tuple[str, ...], str]]:
        return [(("dataset", "params", "path"), "no such file under the data directory")]

    monkeypatch.setattr(admission, "host_problems", lacking)
    response = client.post("/v1/jobs", json=job_body())
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_request",
        "detail": [
            {
                "loc": ["body", "spec", "dataset", "params", "path"],
                "field": "spec.dataset.params.path",
                "msg": "no such file under the data directory",
                "type": "unavailable_on_host",
            }
        ],
    }


def test_idempotent_retry_returns_the_first_job(client: TestClient, sessions: sessionmaker[Session]) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    first = client.post("/v1/jobs", json=job_body(), headers=headers)
    again = client.post("/v1/jobs", json=job_body(), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert job_count(sessions) == 1
    other = client.post("/v1/jobs", json=job_body(seed_spec({"name": "adam"})), headers=headers)
    assert other.status_code == 409
    assert other.json()["error"] == "idempotency_conflict"
    assert job_count(sessions) == 1


# --- read ----------------------------------------------------------------------------------------


def test_unknown_ids_are_404(client: TestClient) -> None:
    for method, path in [("GET", "/v1/jobs/999"), ("GET", "/v1/jobs/999/metrics"), ("POST", "/v1/jobs/999/cancel")]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert response.json() == {"error": "job_not_found", "detail": "No job with id 999"}
    assert client.get("/v1/jobs/not-a-number").status_code == 422
    assert client.get("/v1/nothing-here").status_code == 404


def test_metrics_json_csv_and_since_epoch(client: TestClient, sessions: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    advance(sessions, job_id, losses=[3.0, 2.0, float("nan")], status=JobStatus.diverged)
    body = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert body["status"] == "diverged"
    assert [row["epoch"] for row in body["rows"]] == [1, 2, 3]
    assert body["rows"][1]["train_loss"] == 2.0
    assert body["rows"][2]["train_loss"] is None  # NaN is stored and served as null
    newer = client.get(f"/v1/jobs/{job_id}/metrics", params={"since_epoch": 1}).json()
    assert [row["epoch"] for row in newer["rows"]] == [2, 3]
    text = client.get(f"/v1/jobs/{job_id}/metrics", params={"format": "csv"})
    assert text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["train_loss"]) == 3.0
    assert rows[2]["train_loss"] == ""
    assert client.get(f"/v1/jobs/{job_id}/metrics", params={"format": "xml"}).status_code == 422
    summary = client.get(f"/v1/jobs/{job_id}").json()["summary"]
    assert summary["epochs_done"] == 3
    assert summary["best_loss"] == pytest.approx(2.2)
    assert summary["best_epoch"] == 2


def test_list_filters(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sgd = client.post("/v1/jobs", json=job_body(tags=["a"])).json()["id"]
    adam = client.post("/v1/jobs", json=job_body(seed_spec({"name": "adam"}), tags=["a", "b"])).json()["id"]
    advance(sessions, adam, losses=[1.0], status=JobStatus.succeeded)

    def ids(**params: Any) -> list[int]:
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["items"]]

    assert ids() == [adam, sgd]  # newest first
    assert ids(status="queued") == [sgd]
    assert sorted(ids(status=["queued", "succeeded"])) == sorted([sgd, adam])
    assert ids(optimizer="adam") == [adam]
    assert ids(tag="b") == [adam]
    assert sorted(ids(tag="a")) == sorted([sgd, adam])
    assert ids(sweep_id=1) == []
    assert client.get("/v1/jobs", params={"status": "done"}).status_code == 422
    assert client.get("/v1/jobs", params={"sort": "colour"}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize(
    "sort", ["best_loss", "-best_loss", "-created_at", "created_at", "final_val_loss", "-best_val_loss"]
)
def test_cursor_pages_cover_every_job_once_in_order(
    client: TestClient, sessions: sessionmaker[Session], sort: str
) -> None:
    losses = [5.0, 1.0, 3.0, 1.0, None, 2.0, None, 4.0]  # ties and jobs without a summary
    created = []
    for loss in losses:
        job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
        if loss is not None:
            advance(sessions, job_id, losses=[loss], status=JobStatus.succeeded)
        created.append(job_id)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sort": sort, "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(job["id"] for job in seen) == sorted(created)
    key = sort.lstrip("-")
    values = [job["summary"].get(key, job.get(key)) if key != "created_at" else job["created_at"] for job in seen]
    present = [v for v in values if v is not None]
    assert values[: len(present)] == present, "jobs without a value come last"
    assert present == sorted(present, reverse=sort.startswith("-"))


def test_the_summary_and_epoch_rows_keep_their_fields_and_order(client: TestClient) -> None:
    """Derived from the metric definitions, the JSON is what it was when they were written out."""
    job = client.post("/v1/jobs", json=job_body()).json()
    assert list(job["summary"]) == [
        "epochs_done",
        "epochs_total",
        "final_train_loss",
        "final_val_loss",
        "final_val_accuracy",
        "best_loss",
        "best_epoch",
        "best_train_loss",
        "best_val_loss",
        "best_val_accuracy",
        "wall_seconds",
        "diverged_epoch",
        "resumed_from_epoch",
    ]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert list(schema["EpochRow"]["properties"]) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "grad_norm",
        "epoch_seconds",
        "samples_per_second",
    ]
    assert list(schema["JobSummary"]["properties"]) == list(job["summary"])


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_queued_and_running_and_409_when_finished(client: TestClient, sessions: sessionmaker[Session]) -> None:
    queued = client.post("/v1/jobs", json=job_body()).json()["id"]
    cancelled = client.post(f"/v1/jobs/{queued}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{queued}/cancel")  # a retried cancel answers the cancelled job
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"

    running = client.post("/v1/jobs", json=job_body()).json()["id"]
    advance(sessions, running, losses=[1.0])
    flagged = client.post(f"/v1/jobs/{running}/cancel").json()
    assert (flagged["status"], flagged["cancel_requested"]) == ("running", True)

    done = client.post("/v1/jobs", json=job_body()).json()["id"]
    advance(sessions, done, losses=[1.0], status=JobStatus.succeeded)
    assert client.post(f"/v1/jobs/{done}/cancel").status_code == 409
    assert client.get(f"/v1/jobs/{done}").json()["status"] == "succeeded"


# --- auth, health, outages -----------------------------------------------------------------------


def test_api_keys(tmp_path: Path, database_url: str) -> None:
    k1, k2 = "k1-static-admin-token", "k2-static-admin-token"
    settings = service_settings(tmp_path, database_url, auth="keys", api_keys=[k1, k2])
    with TestClient(create_app(settings)) as keyed:
        assert keyed.get("/healthz").status_code == 200
        missing = keyed.get("/v1/jobs")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"] == "unauthorized"
        assert keyed.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert keyed.get("/v1/jobs", headers={"Authorization": f"Basic {k1}"}).status_code == 401
        assert keyed.post("/v1/jobs", json=job_body(), headers={"Authorization": f"Bearer {k2}"}).status_code == 201
        assert keyed.post("/v1/jobs", json=job_body()).status_code == 401


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.auth.service import ConfigurationError, check_configuration
    from service.settings import Settings

    monkeypatch.setenv("OPTIMLAB_AUTH", "keys")
    monkeypatch.setenv("OPTIMLAB_API_KEYS", "alpha-0123456789abcdef, beta-0123456789abcdef")
    settings = Settings()
    assert settings.api_keys == ["alpha-0123456789abcdef", "beta-0123456789abcdef"]
    check_configuration(settings)
    # A stray comma is an empty key: refused at start, not silently dropped.
    monkeypatch.setenv("OPTIMLAB_API_KEYS", "alpha-0123456789abcdef, beta-0123456789abcdef,")
    with pytest.raises(ConfigurationError, match="OPTIMLAB_API_KEYS"):
        check_configuration(Settings())


def test_health_ready_catalog_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"
    catalog = client.get("/v1/catalog").json()
    sgd = next(entry for entry in catalog["optimizers"] if entry["name"] == "sgd")
    assert "momentum" in sgd["params_schema"]["properties"]
    assert {"models", "datasets", "losses", "optimizers", "schedulers"} <= set(catalog)
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs" in schema["paths"]


def test_database_down_is_503(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    with TestClient(create_app(service_settings(tmp_path, url))) as down:
        for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/1"), ("POST", "/v1/jobs")]:
            response = down.request(method, path, json=job_body() if method == "POST" else None)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"] == "database_unavailable"
        ready = down.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"]["database"].startswith("unreachable")


def test_a_broker_outage_delays_jobs_and_loses_none(
    tmp_path: Path, database_url: str, sessions: sessionmaker[Session]
) -> None:
    """Jobs are committed unsent (the outbox); the dispatcher sends them when the broker is back,
    so a broker outage no longer fails a POST."""
    settings = service_settings(tmp_path, database_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as down:
        response = down.post("/v1/jobs", json=job_body())
        assert response.status_code == 201, response.text
        job = response.json()
        sweep = down.post("/v1/sweeps", json={"base": seed_spec({"name": "sgd"}), "seeds": [0, 1]})
        assert sweep.status_code == 201, sweep.text
        assert down.app.state.dispatcher.send() == []
        stored = down.get(f"/v1/jobs/{job['id']}").json()
        assert (stored["status"], stored["enqueued_at"]) == ("queued", None)
        ready = down.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"] == {"database": "ok", "broker": "unreachable"}
    with sessions() as session:
        unsent = session.scalars(select(Job.id).where(Job.status == "queued", Job.enqueued_at.is_(None))).all()
    assert job["id"] in unsent
    assert len(unsent) == job_count(sessions) == 3


def test_jobs_committed_while_the_broker_is_down_are_sent_once_it_is_back(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker_up = False
    send = broker.send

    def flaky_send(*args: Any) -> None:
        if not broker_up:
            raise ConnectionError("broker down")
        send(*args)

    monkeypatch.setattr(broker, "send", flaky_send)
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    dispatcher = client.app.state.dispatcher
    assert dispatcher.send() == []
    assert queued_messages(tmp_path) == []
    broker_up = True
    dispatcher.wake()
    eventually(lambda: client.get(f"/v1/jobs/{job_id}").json()["enqueued_at"] is not None)
    assert dispatcher.send() == []  # nothing left to send: it went once
    assert len(queued_messages(tmp_path)) == 1


def test_an_attempt_that_does_not_own_the_job_is_told_so(client: TestClient, sessions: sessionmaker[Session]) -> None:
    """The writer heartbeats before it writes rows, and writes none for a job it does not own
    (its end-to-end test: tests/workers/test_run.py)."""
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    advance(sessions, job_id, losses=[1.0])
    with sessions() as session, session.begin():
        assert not transitions.heartbeat(session, {job_id: 7})[job_id].owned
        assert transitions.heartbeat(session, {job_id: 1})[job_id].owned
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 1


def test_the_api_process_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "import tempfile, pathlib\n"
        "home = pathlib.Path(tempfile.mkdtemp())\n"
        "from service.db.migrate import upgrade\n"
        "url = f'sqlite:///{home}/db.sqlite'\n"
        "upgrade(url)\n"
        "with TestClient(create_app(Settings(home=home, database_url=url))) as c:\n"
        "    assert c.get('/v1/catalog').status_code == 200\n"
        "    assert c.post('/v1/jobs', json={'spec': {'optimizer': {'name': 'adam'}}}).status_code == 201\n"
        "import service.cli, service.broker\n"
        "print('torch' in sys.modules, 'sklearn' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_non_finite_spec_values_round_trip_as_strict_json(client: TestClient) -> None:
    """Prodigy's default growth_rate is inf: stored and served as "Infinity" (PostgreSQL's JSONB
    rejects a bare Infinity), and the served spec can be posted again unchanged."""
    first = client.post("/v1/jobs", json=job_body(seed_spec({"name": "prodigy"})))
    assert first.status_code == 201, first.text
    served = client.get(f"/v1/jobs/{first.json()['id']}").json()["spec"]
    assert served["optimizer"]["params"]["growth_rate"] == "Infinity"
    again = client.post("/v1/jobs", json={"spec": served})
    assert again.status_code == 201, again.text
    assert again.json()["spec_hash"] == first.json()["spec_hash"]
