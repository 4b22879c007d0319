"""/metrics scraped after a real sweep: `optimlab up` (its API, a worker process, SQLite and the
filesystem broker) trains a small grid, and the scrape shows the sweep's jobs and epochs."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Api, Proc, slow_spec, wait_for

pytestmark = pytest.mark.slow

EPOCHS = 3
LRS = [0.01, 0.03, 0.1]


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_after_a_sweep_show_its_jobs_and_epochs(embedded: tuple[Api, Proc, float]) -> None:
    api, _, _ = embedded
    body = {"name": "metrics", "base": slow_spec(EPOCHS, n_samples=512), "grid": {"optimizer.lr": LRS}}
    created = api.http.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    wait_for(lambda: api.http.get(f"/v1/sweeps/{sweep_id}").json()["done"], 120, "the sweep to finish")
    jobs = api.http.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(LRS)
    workers = {job["worker"] for job in jobs}

    samples = scrape(api)
    assert samples["optimlab_database_up", ()] == 1
    assert samples["optimlab_jobs", (("queue", "cpu"), ("state", "succeeded"))] == len(LRS)
    assert samples["optimlab_jobs", (("queue", "cpu"), ("state", "queued"))] == 0
    assert samples["optimlab_queue_depth", (("queue", "cpu"), ("sent", "false"))] == 0
    assert samples["optimlab_epochs_trained_total", (("queue", "cpu"),)] == len(LRS) * EPOCHS
    assert samples["optimlab_sweeps", (("state", "idle"),)] == 1
    # The epochs were recorded within the last minute, each by the worker that ran its job.
    per_second = {
        dict(labels)["worker"]: value
        for (name, labels), value in samples.items()
        if name == "optimlab_worker_epochs_per_second"
    }
    assert set(per_second) == workers
    assert sum(per_second.values()) * 60 == pytest.approx(len(LRS) * EPOCHS)
    assert all(value > 0 for (name, _), value in samples.items() if name == "optimlab_worker_samples_per_second")
    assert samples["optimlab_dispatcher_jobs_sent_total", ()] == len(LRS)
    posted = (
        "optimlab_http_request_duration_seconds_count",
        (("method", "POST"), ("route", "/v1/sweeps"), ("status", "2xx")),
    )
    assert samples[posted] == 1
