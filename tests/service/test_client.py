"""Client behaviour that a live server cannot show on demand: retries and their idempotency,
and error mapping (the integration tests run the client against a real server)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from service.client import Client, Conflict, InvalidRequest, Unauthorized, Unavailable, flatten, label


def test_a_retried_post_reuses_its_idempotency_key() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) < 3:
            return httpx.Response(503, json={"error": "unavailable", "detail": "broker down"})
        return httpx.Response(201, json={"id": 7, "status": "queued"})

    with Client("http://test", transport=httpx.MockTransport(handler), backoff=0.001) as client:
        assert client.submit({"optimizer": {"name": "sgd"}})["id"] == 7
    assert len(seen) == 3
    assert len(set(seen)) == 1, "every retry of one submit carries the same key"


def test_connection_errors_are_retried_then_reported() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    transport = httpx.MockTransport(handler)
    with Client("http://test", transport=transport, retries=3, backoff=0.001) as client, pytest.raises(Unavailable):
        client.catalog()
    assert calls == 4


@pytest.mark.parametrize(("status", "kind"), [(401, Unauthorized), (409, Conflict), (422, InvalidRequest)])
def test_errors_map_to_exceptions_with_the_servers_detail(status: int, kind: type[Exception]) -> None:
    detail = [{"field": "spec.optimizer.sgd.lr", "msg": "Input should be greater than 0"}]
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"error": "x", "detail": detail}))
    with Client("http://test", transport=transport) as client, pytest.raises(kind) as info:
        client.job(1)
    assert "spec.optimizer.sgd.lr: Input should be greater than 0" in str(info.value)


def test_api_key_is_sent_as_a_bearer_token() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"auth": request.headers["Authorization"]})
    )
    with Client("http://test", api_key="k1", transport=transport) as client:
        assert client.catalog() == {"auth": "Bearer k1"}


def test_a_jobs_metrics_frame_has_a_column_per_metric_even_before_its_first_epoch() -> None:
    from optim_engine.results import METRIC_NAMES

    rows: list[dict[str, float]] = []
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"rows": rows}))
    with Client("http://test", transport=transport) as client:
        assert list(client.metrics(1).columns) == ["epoch", *METRIC_NAMES]
        rows.append({"epoch": 1, "train_loss": 0.5} | {name: None for name in METRIC_NAMES[1:]})
        frame = client.metrics(1)
    assert list(frame.columns) == ["epoch", *METRIC_NAMES]
    assert frame["train_loss"].tolist() == [0.5]


def test_configuration_labels() -> None:
    config = {"optimizer": {"name": "sgd", "lr": 0.01, "params": {"momentum": 0.9}}, "scheduler": None}
    assert label(flatten(config)) == "sgd lr=0.01 momentum=0.9 | scheduler=none"
    assert label(flatten({"optimizer.lr": 0.1})) == "lr=0.1"


def test_the_client_imports_neither_torch_nor_the_web_app() -> None:
    code = "import sys, service.client; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
