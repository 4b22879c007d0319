"""Hostile input, on SQLite and on PostgreSQL: every class that once answered a 500 now answers a
4xx whose detail names the field (ids out of the int4 range, malformed cursors, an empty grid list,
deep JSON, malformed JSON, thousands of columns, NUL in stored or filtered strings, huge bodies);
cancel is idempotent; the OpenAPI document lists every status each operation answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import JobStatus
from service.errors import printable
from service.limits import json_depth
from tests.conftest import seed_spec, service_settings
from tests.factories import advance, job_body

SPEC = seed_spec({"name": "sgd", "lr": 0.01})
SWEEP = {"base": SPEC, "grid": {"optimizer.lr": [0.1, 0.01]}}
TOKEN = "inputs-admin-token-0123456789"

ID_ROUTES = [
    ("GET", "/v1/jobs/{}"),
    ("GET", "/v1/jobs/{}/metrics"),
    ("POST", "/v1/jobs/{}/cancel"),
    ("GET", "/v1/sweeps/{}"),
    ("POST", "/v1/sweeps/{}/cancel"),
    ("GET", "/v1/sweeps/{}/leaderboard"),
    ("GET", "/v1/sweeps/{}/metrics"),
    ("POST", "/v1/keys/{}/revoke"),
]


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    """The API with auth on (an admin token on every request), so the key routes answer too."""
    settings = service_settings(tmp_path, database_url, auth="keys", api_keys=[TOKEN], max_json_depth=16)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client


def rejected(response: Any, field: str, status: int = 422) -> dict[str, Any]:
    """Assert ``response`` is ``status`` with a detail entry naming ``field`` (its dotted field,
    or the end of it); return that entry."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    named = [entry for entry in detail if entry["field"] == field or entry["field"].endswith(f".{field}")]
    assert named, f"no detail entry names {field!r}: {detail}"
    return dict(named[0])


def cursor(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# --- ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 2**31, 2**63, 2**64, 10**30])
@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
def test_an_id_outside_1_to_2_31_minus_1_is_a_422_naming_it(
    client: TestClient, method: str, route: str, value: int
) -> None:
    name = {"jobs": "job_id", "sweeps": "sweep_id", "keys": "key_id"}[route.split("/")[2]]
    entry = rejected(client.request(method, route.format(value)), name)
    assert entry["loc"] == ["path", name]


@pytest.mark.parametrize("value", [0, 2**31, 2**63])
def test_a_sweep_id_filter_outside_the_range_is_a_422_naming_it(client: TestClient, value: int) -> None:
    rejected(client.get("/v1/jobs", params={"sweep_id": value}), "sweep_id")
    assert client.get("/v1/jobs", params={"sweep_id": 2**31 - 1}).json()["items"] == []


def test_since_epoch_is_bounded_like_an_id(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    rejected(client.get(f"/v1/jobs/{job_id}/metrics", params={"since_epoch": 2**63}), "since_epoch")


# --- cursors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        ("-created_at", "garbage"),
        ("-created_at", ""),
        ("-created_at", "%%%"),
        ("-created_at", "²"),
        ("-created_at", cursor([1, 2])),
        ("-created_at", cursor({"k": "best_loss", "v": None, "id": 1})),  # another sort's cursor
        ("-created_at", cursor({"k": "created_at", "v": "2024-01-01T00:00:00+00:00", "id": 2**63})),
        ("-created_at", cursor({"k": "created_at", "v": "2024-01-01T00:00:00+00:00", "id": True})),
        ("-created_at", cursor({"k": "created_at", "v": "not a time", "id": 1})),
        ("-created_at", cursor({"k": "created_at", "v": "0001-01-01T00:00:00+05:00", "id": 1})),
        ("-created_at", cursor({"k": "created_at", "id": 1})),
        ("best_loss", cursor({"k": "best_loss", "v": "abc", "id": 1})),
        ("best_loss", cursor({"k": "best_loss", "v": 10**400, "id": 1})),
        ("-epochs_done", cursor({"k": "epochs_done", "v": 2**63, "id": 1})),
        ("-epochs_done", cursor({"k": "epochs_done", "v": 1.5, "id": 1})),
        ("-created_at", base64.urlsafe_b64encode(b"[" * 20_000).decode()),
        ("-created_at", base64.urlsafe_b64encode(b"\xff\xfe").decode()),
    ],
)
def test_a_malformed_job_cursor_is_a_422_naming_the_cursor(client: TestClient, sort: str, value: str) -> None:
    entry = rejected(client.get("/v1/jobs", params={"sort": sort, "cursor": value}), "cursor")
    assert entry["loc"] == ["query", "cursor"]


@pytest.mark.parametrize("value", ["x", "", "0", "-1", "²", "2147483648", "9" * 25, "1" * 5000])
def test_a_malformed_sweep_cursor_is_a_422_naming_the_cursor(client: TestClient, value: str) -> None:
    rejected(client.get("/v1/sweeps", params={"cursor": value}), "cursor")


def test_real_cursors_still_page(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=job_body()).json()["id"] for _ in range(3)]
    client.post("/v1/sweeps", json=SWEEP)
    client.post("/v1/sweeps", json=SWEEP)
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    rest = client.get("/v1/jobs", params={"limit": 10, "cursor": first["next_cursor"]}).json()
    assert len(first["items"]) + len(rest["items"]) == 3 + 4
    assert set(ids) <= {job["id"] for job in first["items"] + rest["items"]}
    sweeps = client.get("/v1/sweeps", params={"limit": 1}).json()
    assert client.get("/v1/sweeps", params={"cursor": sweeps["next_cursor"]}).json()["items"]


# --- sweeps and columns ---------------------------------------------------------------------------


def test_an_empty_grid_list_is_a_422_naming_grid(client: TestClient) -> None:
    entry = rejected(client.post("/v1/sweeps", json={"base": SPEC, "grid": []}), "grid")
    assert entry["loc"] == ["body", "grid"]
    assert client.get("/v1/sweeps").json()["items"] == []


def test_columns_are_known_bounded_and_each_once(client: TestClient) -> None:
    sweep_id = client.post("/v1/sweeps", json=SWEEP).json()["id"]
    url = f"/v1/sweeps/{sweep_id}/metrics"
    rejected(client.get(url, params={"columns": ",".join(["train_loss"] * 5000)}), "columns")
    rejected(client.get(url, params={"columns": "train_loss,colour"}), "columns")
    body = client.get(url, params={"columns": "train_loss, lr,train_loss,lr"}).json()
    assert body["columns"] == ["job_id", "epoch", "train_loss", "lr"]


# --- JSON bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [17, 300, 100_000])
def test_json_nested_past_the_limit_is_a_400_naming_the_body(client: TestClient, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    for url, body in [
        ("/v1/jobs", f'{{"spec": {json.dumps(SPEC)}, "name": {deep}}}'),
        ("/v1/sweeps", f'{{"base": {deep}}}'),
    ]:
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
        entry = rejected(response, "body", status=400)
        assert response.json()["error"] == "invalid_json"
        assert (entry["type"], entry["field"]) == ("json_too_deep", "body")


def test_json_at_the_limit_reaches_validation(client: TestClient) -> None:
    at_limit = {"spec": SPEC, "name": json.loads("[" * 15 + "]" * 15)}  # 16 levels with the body
    rejected(client.post("/v1/jobs", json=at_limit), "name")


def test_brackets_inside_strings_do_not_count() -> None:
    assert json_depth(b'{"a": "[[[[{{{{", "b": ["\\"[[["]}') == 2
    assert json_depth(b"[" * 10 + b"]" * 10) == 10
    assert json_depth(b"") == 0


@pytest.mark.parametrize("body", [b'{"spec": ', b"{'spec': {}}", b'{"spec": {}}}', b"\xff\xfe{}", b"NaN]"])
def test_malformed_json_is_a_400_naming_the_body(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    rejected(response, "body", status=400)
    assert response.json()["error"] == "invalid_json"


def test_a_body_over_the_limit_is_a_413_before_parsing(tmp_path: Path, database_url: str) -> None:
    settings = service_settings(tmp_path, database_url, max_body_bytes=1000)
    with TestClient(create_app(settings)) as client:
        small = client.post("/v1/jobs", json=job_body())
        assert small.status_code == 201, small.text
        big = client.post("/v1/jobs", json=job_body(name="x" * 2000))
        assert big.status_code == 413
        assert big.json()["error"] == "payload_too_large"
        assert "1000 bytes" in big.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the middleware counts what arrives
            yield b'{"spec": {}, "name": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}'

        chunked = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413
        assert "content-length" not in {key.lower() for key in chunked.request.headers}


# --- strings the database cannot store ------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_unstorable_strings_in_bodies_are_a_422_naming_the_field(client: TestClient, bad: str) -> None:
    csv = {"name": "csv", "params": {"path": "data.csv", "target": "y"}}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/jobs", job_body(name=bad), "name"),
        ("/v1/jobs", job_body(tags=[bad]), "tags.0"),
        ("/v1/jobs", job_body(seed_spec({"name": "sgd", "lr": 0.1}, dataset=csv | {"params": {"path": bad}})), "path"),
        (
            "/v1/jobs",
            job_body(seed_spec({"name": "sgd", "lr": 0.1}, dataset=csv | {"params": {"target": bad}})),
            "target",
        ),
        ("/v1/sweeps", SWEEP | {"name": bad}, "name"),
        ("/v1/sweeps", SWEEP | {"tags": [bad]}, "tags.0"),
        ("/v1/sweeps", {"base": SPEC | {bad: 1}}, f"base.{printable(bad)}"),  # a lone surrogate, escaped
        ("/v1/jobs", job_body(SPEC | {bad: 1}), f"spec.{printable(bad)}"),
        ("/v1/sweeps", {"base": SPEC, "grid": {"dataset.params.path": ["ok.csv", bad]}}, "dataset.params.path.1"),
        ("/v1/sweeps", {"base": SPEC, "random": {"n": 1, "params": {"name": {"choice": [bad]}}}}, "choice.0"),
    ]
    for url, body, field in cases:
        # json.dumps writes a lone surrogate as the escape "\ud800", which is what an attacker sends
        response = client.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})
        rejected(response, field)
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.get("/v1/sweeps").json()["items"] == []


@pytest.mark.parametrize("param", ["optimizer", "tag", "owner"])
def test_nul_in_a_filter_is_a_422_naming_it(client: TestClient, param: str) -> None:
    rejected(client.get("/v1/jobs", params={param: "sgd\x00"}), param)


@pytest.mark.parametrize("url", ["/v1/jobs", "/v1/sweeps"])
def test_nul_in_an_idempotency_key_is_a_422_naming_it(client: TestClient, url: str) -> None:
    body = job_body() if url == "/v1/jobs" else SWEEP
    rejected(client.post(url, json=body, headers={"Idempotency-Key": "key\x00"}), "idempotency-key")


def test_an_integral_float_is_an_integer_as_json_schema_says(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=job_body(seed_spec({"name": "sgd", "lr": 0.1}, epochs=3.0)))
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["epochs"] == 3
    rejected(client.post("/v1/sweeps", json=SWEEP | {"seeds": [True]}), "seeds.0")


# --- cancel is idempotent -------------------------------------------------------------------------


def test_cancelling_a_cancelled_job_answers_it_and_a_finished_one_is_a_409(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    first, again = client.post(f"/v1/jobs/{job_id}/cancel"), client.post(f"/v1/jobs/{job_id}/cancel")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["status"] == "cancelled"
    assert again.json()["finished_at"] == first.json()["finished_at"]  # nothing moved the second time

    for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.diverged):
        done = client.post("/v1/jobs", json=job_body()).json()["id"]
        advance(sessions, done, losses=[1.0], status=status)
        refused = client.post(f"/v1/jobs/{done}/cancel")
        assert refused.status_code == 409
        assert refused.json()["error"] == "illegal_transition"


def test_cancelling_a_sweep_twice_answers_it_both_times(client: TestClient) -> None:
    sweep_id = client.post("/v1/sweeps", json=SWEEP).json()["id"]
    first, again = client.post(f"/v1/sweeps/{sweep_id}/cancel"), client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["counts"]["cancelled"] == 2


# --- the OpenAPI document -------------------------------------------------------------------------


def test_every_operation_documents_the_statuses_it_answers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("post", "/v1/jobs"): {"200", "201", "400", "401", "409", "413", "422", "503"},
        ("post", "/v1/sweeps"): {"200", "201", "400", "401", "409", "413", "422", "503"},
        ("get", "/v1/jobs"): {"200", "400", "401", "413", "422", "503"},
        ("get", "/v1/jobs/{job_id}"): {"200", "400", "401", "404", "413", "422", "503"},
        ("post", "/v1/jobs/{job_id}/cancel"): {"200", "400", "401", "404", "409", "413", "422", "503"},
        ("post", "/v1/sweeps/{sweep_id}/cancel"): {"200", "400", "401", "404", "413", "422", "503"},
        ("get", "/v1/sweeps/{sweep_id}/metrics"): {"200", "400", "401", "404", "413", "422", "503"},
    }
    for (method, path), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (method, path, sorted(responses))
        for status in statuses - {"200", "201"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
    for operations in paths.values():
        for operation in operations.values():
            assert {"400", "413"} <= set(operation["responses"])


@pytest.mark.parametrize("lr", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_float_is_a_422_saying_finite_not_a_bound(client: TestClient, lr: str) -> None:
    body = json.dumps(job_body(SPEC | {"optimizer": {"name": "sgd", "lr": 0.0}})).replace('"lr": 0.0', f'"lr": {lr}')
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    entry = rejected(response, "spec.optimizer.lr")
    assert entry["type"] == "finite_number"
    assert entry["msg"].startswith("must be a finite number, not "), entry["msg"]
    as_string = client.post("/v1/jobs", json=job_body(SPEC | {"optimizer": {"name": "sgd", "lr": lr}}))
    assert rejected(as_string, "spec.optimizer.lr")["msg"] == entry["msg"], "a YAML string 'NaN' reads the same"
    grid = {"base": SPEC, "grid": {"optimizer.params.momentum": [0.9, float(lr)]}}
    swept = client.post("/v1/sweeps", content=json.dumps(grid), headers={"Content-Type": "application/json"})
    assert "finite number" in rejected(swept, "spec.optimizer.params.momentum")["msg"]


def test_infinity_stays_valid_where_it_means_no_bound(client: TestClient) -> None:
    prodigy = SPEC | {"optimizer": {"name": "prodigy", "lr": 1.0, "params": {"growth_rate": "Infinity"}}}
    assert client.post("/v1/jobs", json=job_body(prodigy)).status_code == 201
    prodigy["optimizer"]["params"]["growth_rate"] = "NaN"
    entry = rejected(client.post("/v1/jobs", json=job_body(prodigy)), "spec.optimizer.params.growth_rate")
    assert entry["msg"] == "must be a number, not nan"


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/sweeps"])
def test_a_name_too_long_is_counted_in_characters(client: TestClient, route: str) -> None:
    body = (job_body(SPEC) if route == "/v1/jobs" else dict(SWEEP)) | {"name": "n" * 100_000}
    entry = rejected(client.post(route, json=body), "name")
    assert entry["msg"] == "should have at most 200 characters, not 100000"


@pytest.mark.parametrize("sort", ["evil", "-evil", "--created_at", "created_at;drop"])
def test_an_unknown_sort_key_is_a_422_listing_the_keys(client: TestClient, sort: str) -> None:
    entry = rejected(client.get("/v1/jobs", params={"sort": sort}), "sort")
    assert f"unknown sort key {sort!r}; use one of " in entry["msg"]
    assert "created_at, epochs_done" in entry["msg"], "the keys"
    assert "^" not in entry["msg"], "not a regex"
    assert client.get("/v1/jobs", params={"sort": "-wall_seconds"}).status_code == 200
