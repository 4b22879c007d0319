"""The API process killed while it takes a large sweep: the client's idempotent retry against
the restarted process creates the sweep exactly once, and every job runs exactly once."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from service.client import Client
from tests.faults.conftest import assert_invariants, post_sweep, sweep_jobs, tiny_spec
from tests.integration.conftest import Deployment

pytestmark = pytest.mark.slow

DELAYS_S = (0.005, 0.05, 0.15)
"""How long after the POST goes out the API is killed: while it validates the 300 specs, inserts
or commits (the POST takes 0.2-0.6 s here). A machine fast enough to answer within the last
delay answers it: the retry is then not needed, and the sweep must still exist once."""


class Watched(httpx.HTTPTransport):
    """A transport that says when each request went out and when its answer came back."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = threading.Event()
        self.requests: list[float] = []
        self.answers: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(time.monotonic())
        self.sent.set()
        response = super().handle_request(request)
        self.answers.append(time.monotonic())
        return response


def _sweep_sizes(database_url: str) -> dict[int, int]:
    """Jobs per sweep, as the database has them."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT sweep_id, count(*) FROM jobs GROUP BY sweep_id")).all()
    finally:
        engine.dispose()
    return {sweep_id: n for sweep_id, n in rows}


def test_the_api_sigkilled_mid_post_is_retried_into_one_sweep(deployment: Deployment) -> None:
    """For each delay: a client (``service.client.Client``, which retries a POST with the same
    Idempotency-Key) posts a 300-job sweep; a few ms after the request goes out the API is
    SIGKILLed (mid-validation, mid-insert or mid-commit) and restarted on the same port. The
    retry creates the sweep once (201) or finds the committed one (200): one sweep per call,
    300 jobs each, every job run once."""
    port = deployment.api.http.base_url.port
    grid = {"optimizer.lr": [0.3, 0.1, 0.03, 0.01, 0.003], "optimizer.params.momentum": [0.0, 0.5, 0.9]}
    created: list[dict[str, Any]] = []
    for delay in DELAYS_S:
        transport = Watched()
        with Client(f"http://127.0.0.1:{port}", retries=8, transport=transport) as client:

            def post(client: Client = client) -> None:
                created.append(client.sweep(tiny_spec(), grid=grid, seeds=range(20), execution="auto"))

            poster = threading.Thread(target=post)
            poster.start()
            assert transport.sent.wait(10)
            time.sleep(delay)
            killed_at = time.monotonic()
            assert deployment.api_proc is not None
            deployment.api_proc.kill()
            deployment.start_api(port=port)
            poster.join(90)
        assert not poster.is_alive(), "the client's retry ended"
        in_flight = len(transport.requests) >= 2
        assert in_flight or delay == DELAYS_S[-1], f"killed {delay} s after sending: the POST was answered first"
        if in_flight:
            assert all(at > killed_at for at in transport.answers), "no answer came from the killed process"
    assert len(created) == len(DELAYS_S)
    assert {sweep["n_jobs"] for sweep in created} == {300}
    assert _sweep_sizes(deployment.database_url) == {sweep["id"]: 300 for sweep in created}, "one sweep per call"
    assert_invariants(deployment.database_url, deployment.every_worker())


@pytest.mark.parametrize("deployment", [{"OPTIMLAB_DISPATCH_INTERVAL_S": "0"}], indirect=True)
def test_an_api_killed_between_commit_and_send_loses_no_job(deployment: Deployment) -> None:
    """The API that takes the POSTs commits a large sweep and dies before sending a message (it
    does not dispatch: OPTIMLAB_DISPATCH_INTERVAL_S=0, then SIGKILL). The client's idempotent
    retry against a restarted API gets the same sweep (200), and its dispatcher sends every
    unsent job: each runs exactly once."""
    api, killed = deployment.api, deployment.api_proc
    assert killed is not None
    base = {
        "model": {"name": "mlp", "params": {"depth": 1, "width": 16}},
        "dataset": {"name": "digits"},
        "loss": "cross_entropy",
        "optimizer": {"name": "sgd"},
        "epochs": 2,
        "batch_size": 256,
        "device": "cpu",
    }
    grid = {"optimizer.lr": [0.3, 0.1, 0.03, 0.01, 0.003], "optimizer.params.momentum": [0.0, 0.5, 0.9]}
    packed = {"base": base, "grid": grid, "seeds": list(range(20)), "execution": "auto"}  # 300 jobs
    separate = {"base": base, "grid": {"optimizer.lr": [0.1, 0.01]}, "seeds": list(range(10)), "execution": "separate"}
    key = {"Idempotency-Key": "kill-between-commit-and-send"}
    first = post_sweep(api, packed, **key)
    other = post_sweep(api, separate, **{"Idempotency-Key": "the-separate-one"})
    killed.kill()
    killed.stop()
    database = create_engine(deployment.database_url)
    with database.connect() as connection:
        counts = connection.execute(text("SELECT status, enqueued_at IS NULL, count(*) FROM jobs GROUP BY 1, 2")).all()
    database.dispose()
    assert counts == [("queued", True, 320)], "committed, none sent"

    restarted = deployment.start_api(OPTIMLAB_DISPATCH_INTERVAL_S="0.5")
    retried = post_sweep(restarted, packed, **key)
    assert retried["id"] == first["id"]
    assert retried["n_jobs"] == 300
    jobs = sweep_jobs(restarted, first["id"]) + sweep_jobs(restarted, other["id"])
    assert len(jobs) == 320
    done = assert_invariants(deployment.database_url, deployment.every_worker(), timeout=240)
    assert {job["attempt"] for job in done} == {1}, "each job was claimed exactly once"
    assert len({job["pack_id"] for job in jobs if job["sweep_id"] == first["id"]}) == 10
