"""GET /metrics: the database collector's numbers on SQLite and PostgreSQL, latency labelled by
route template (never the raw path), the dispatcher's counters, and who may scrape."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service import broker, metrics
from service.app import create_app
from service.db import transitions
from service.db.epochs import EPOCHS
from service.db.models import Job, JobStatus, Sweep
from service.db.session import make_engine, make_session_factory, utcnow
from service.dispatcher import Dispatcher
from tests.conftest import eventually, seed_spec, service_settings
from tests.factories import advance, insert_job, job_body

SPEC = seed_spec({"name": "sgd", "lr": 0.01})
ADMIN = "metrics-admin-token-0123456789"
OLD = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def scrape(sessions: sessionmaker[Session], window_s: float = metrics.WINDOW_S) -> Samples:
    registry = CollectorRegistry()
    registry.register(metrics.DatabaseCollector(lambda: sessions, window_s))
    return parse(generate_latest(registry).decode())


# --- the database collector ------------------------------------------------------------------------


def test_the_collector_counts_jobs_queue_epochs_workers_and_sweeps(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        sweep = Sweep(template={}, search={}, created_at=utcnow(), n_jobs=3)
        session.add(sweep)
        session.flush()
        ids = [insert_job(session, SPEC | {"seed": i}, sweep_id=sweep.id if i < 3 else None) for i in range(7)]
        session.add(Sweep(template={}, search={}, created_at=utcnow(), n_jobs=0))  # no job in flight
    done, failed, running, sent, old_worker, *_unsent = ids
    advance(sessions, done, losses=[1.0, 0.5, 0.25], status=JobStatus.succeeded, worker="host:1")
    advance(sessions, failed, losses=[1.0], status=JobStatus.failed, worker="host:2")
    advance(sessions, running, losses=[1.0, 0.9], worker="host:1")
    advance(sessions, old_worker, losses=[1.0, 0.9], status=JobStatus.succeeded, worker="host:3")
    with sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == sent).values(enqueued_at=utcnow()))
        # host:3's epochs were recorded long ago: outside the window, yet trained all the same.
        session.execute(update(Job).where(Job.id == old_worker).values(finished_at=OLD))
        session.execute(update(EPOCHS).where(EPOCHS.c.job_id == old_worker).values(recorded_at=OLD))

    samples = scrape(sessions)
    assert value(samples, "optimlab_database_up") == 1
    expected = {"queued": 3, "running": 1, "succeeded": 2, "failed": 1, "cancelled": 0, "diverged": 0, "pruned": 0}
    for state, n in expected.items():
        assert value(samples, "optimlab_jobs", state=state, queue="cpu") == n, state
    assert value(samples, "optimlab_jobs", state="queued", queue="gpu") == 0  # every queue, every state
    assert value(samples, "optimlab_queue_depth", queue="cpu", sent="true") == 1
    assert value(samples, "optimlab_queue_depth", queue="cpu", sent="false") == 2
    assert value(samples, "optimlab_epochs_trained_total", queue="cpu") == 3 + 1 + 2 + 2
    assert value(samples, "optimlab_worker_epochs_per_second", worker="host:1") == pytest.approx(5 / 60)
    assert value(samples, "optimlab_worker_epochs_per_second", worker="host:2") == pytest.approx(1 / 60)
    assert ("optimlab_worker_epochs_per_second", (("worker", "host:3"),)) not in samples
    assert value(samples, "optimlab_worker_samples_per_second", worker="host:1") == pytest.approx(1000.0)
    assert value(samples, "optimlab_sweeps", state="active") == 1  # its third job is still running
    assert value(samples, "optimlab_sweeps", state="idle") == 1


def test_jobs_served_from_the_cache_add_no_epochs_trained(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        source, copy = insert_job(session, SPEC), insert_job(session, SPEC | {"seed": 1})
    advance(sessions, source, losses=[1.0, 0.5], status=JobStatus.succeeded)
    advance(sessions, copy, losses=[1.0, 0.5], status=JobStatus.succeeded)
    with sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == copy).values(cached_from=source))
    samples = scrape(sessions)
    assert value(samples, "optimlab_jobs", state="succeeded", queue="cpu") == 2
    assert value(samples, "optimlab_epochs_trained_total", queue="cpu") == 2
    assert value(samples, "optimlab_worker_epochs_per_second", worker="test-worker:1") == pytest.approx(2 / 60)


def test_an_unreachable_database_is_database_up_0_not_a_failed_scrape(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'optimlab.db'}")
    samples = scrape(make_session_factory(engine))
    assert samples == {("optimlab_database_up", ()): 0.0}


# --- the endpoint, latency and the dispatcher ----------------------------------------------------


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url))) as test_client:
        yield test_client


def test_latency_is_labelled_by_route_template_method_and_status_class(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get("/v1/jobs/987654").status_code == 404
    assert client.get("/v1/jobs/987654/metrics").status_code == 404
    assert client.get("/no/such/path-123").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.text)
    count = "optimlab_http_request_duration_seconds_count"
    assert value(samples, count, method="POST", route="/v1/jobs", status="2xx") == 1
    assert value(samples, count, method="GET", route="/v1/jobs/{job_id}", status="2xx") == 1
    assert value(samples, count, method="GET", route="/v1/jobs/{job_id}", status="4xx") == 1
    assert value(samples, count, method="GET", route="/v1/jobs/{job_id}/metrics", status="4xx") == 1
    assert value(samples, count, method="GET", route=metrics.UNMATCHED, status="4xx") == 1
    routes = {dict(labels).get("route", "") for name, labels in samples if name == count}
    assert not any("987654" in route or "path-123" in route for route in routes), routes
    assert value(samples, "optimlab_jobs", state="queued", queue="cpu") == 1


def test_sent_jobs_and_requeued_stale_jobs_are_counted(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    before = parse(client.get("/metrics").text)
    sent_before = value(before, "optimlab_dispatcher_jobs_sent_total")
    for seed in range(3):
        client.post("/v1/jobs", json=job_body(SPEC | {"seed": seed}))
    eventually(
        lambda: value(parse(client.get("/metrics").text), "optimlab_dispatcher_jobs_sent_total") >= sent_before + 3
    )

    stale_before = before.get(("optimlab_reaper_jobs_requeued_total", (("reason", "stale_heartbeat"),)), 0.0)
    with sessions() as session, session.begin():
        job_id = insert_job(session, SPEC | {"seed": 9})
        transitions.claim(session, [job_id], worker="w:1", stale_after_s=60)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=OLD))
    settings = service_settings(tmp_path, database_url)
    assert Dispatcher(sessions, broker.make_celery(settings), settings).recover() == 1
    after = parse(client.get("/metrics").text)
    assert value(after, "optimlab_reaper_jobs_requeued_total", reason="stale_heartbeat") == stale_before + 1


@pytest.fixture
def keyed(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    public = getattr(request, "param", False)
    settings = service_settings(tmp_path, database_url, auth="keys", api_keys=[ADMIN], metrics_public=public)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_with_keys_on_metrics_needs_an_admin_key(keyed: TestClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = keyed.post("/v1/keys", json={"owner": "alice", "admin": False}, headers=admin).json()
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 403
    keyed.post("/v1/jobs", json=job_body(), headers={"Authorization": f"Bearer {created['token']}"})
    scraped = keyed.get("/metrics", headers=admin)
    assert scraped.status_code == 200
    assert value(parse(scraped.text), "optimlab_jobs", state="queued", queue="cpu") == 1
    assert "alice" not in scraped.text  # counts only: no owner is named


@pytest.mark.parametrize("keyed", [True], indirect=True)
def test_metrics_public_serves_metrics_without_a_key_and_nothing_else(keyed: TestClient) -> None:
    assert keyed.get("/metrics").status_code == 200
    assert keyed.get("/v1/jobs").status_code == 401


def test_metrics_is_not_in_the_openapi_document(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
