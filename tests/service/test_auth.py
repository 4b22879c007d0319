"""Users, keys and ownership, on SQLite and on PostgreSQL: keys stored hashed, managed through the
API and the CLI; every /v1 route scoped to the key's owner (admins see all); start-up refusing an
auth configuration that would open the API by mistake."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from service.app import create_app
from service.auth.service import ConfigurationError, is_loopback
from service.cli import app as cli_app
from service.db.migrate import upgrade
from service.db.models import ApiKey, JobStatus
from service.db.session import make_engine
from service.settings import Settings, get_settings
from tests.conftest import seed_spec, service_settings
from tests.factories import advance, job_body

STATIC = "static-admin-token-0123456789"
SWEEP = {"base": seed_spec({"name": "sgd", "lr": 0.01}), "grid": {"optimizer.lr": [0.1, 0.01]}}

OWNED_ROUTES = {
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/metrics"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("POST", "/v1/sweeps"),
    ("GET", "/v1/sweeps"),
    ("GET", "/v1/sweeps/{sweep_id}"),
    ("POST", "/v1/sweeps/{sweep_id}/cancel"),
    ("GET", "/v1/sweeps/{sweep_id}/leaderboard"),
    ("GET", "/v1/sweeps/{sweep_id}/metrics"),
    ("GET", "/v1/sweeps/{sweep_id}/trials"),
    ("GET", "/v1/jobs/{job_id}/result"),
    ("GET", "/v1/sweeps/{sweep_id}/compare"),
    ("GET", "/v1/sweeps/{sweep_id}/divergence"),
    ("GET", "/v1/sweeps/{sweep_id}/budget"),
    ("GET", "/v1/sweeps/{sweep_id}/trajectories"),
    ("GET", "/v1/profiles"),
}
"""Every route over jobs and sweeps: ``test_owners_neither_see_nor_touch_each_other`` calls each."""
KEY_ROUTES = {("POST", "/v1/keys"), ("GET", "/v1/keys"), ("POST", "/v1/keys/{key_id}/revoke")}
OWNERLESS_ROUTES = {("GET", "/v1/catalog")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keyed(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    """An API with OPTIMLAB_AUTH=keys and one static admin token."""
    settings = service_settings(tmp_path, database_url, auth="keys", api_keys=[STATIC])
    with TestClient(create_app(settings)) as client:
        yield client


def make_key(client: TestClient, owner: str, *, admin: bool = False, by: str = STATIC) -> dict[str, Any]:
    response = client.post("/v1/keys", json={"owner": owner, "name": f"{owner}'s", "admin": admin}, headers=bearer(by))
    assert response.status_code == 201, response.text
    return dict(response.json())


# --- keys --------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_their_token_shown_once(
    keyed: TestClient, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = make_key(keyed, "alice")
    token = created["token"]
    assert token.startswith("olk_")
    assert len(token) >= 40
    assert created["prefix"] == token[:12]
    with sessions() as session:
        rows = session.execute(select(ApiKey.__table__)).mappings().all()
    assert len(rows) == 1
    assert rows[0]["hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert not any(token in str(value) for value in rows[0].values())
    assert keyed.get("/v1/jobs", headers=bearer(token)).status_code == 200
    listed = keyed.get("/v1/keys", headers=bearer(STATIC)).json()["items"]
    assert listed == [{name: value for name, value in created.items() if name != "token"}]
    assert token not in caplog.text


def test_create_list_and_revoke_keys_through_the_api(keyed: TestClient) -> None:
    alice = make_key(keyed, "alice")
    root = make_key(keyed, "root", admin=True)
    bob = make_key(keyed, "bob", by=root["token"])  # a database admin key manages keys too
    listed = keyed.get("/v1/keys", headers=bearer(root["token"])).json()["items"]
    assert [(k["owner"], k["admin"]) for k in listed] == [("alice", False), ("root", True), ("bob", False)]
    assert all("token" not in k and "hash" not in k for k in listed)

    for method, path in (("POST", "/v1/keys"), ("GET", "/v1/keys"), ("POST", f"/v1/keys/{bob['id']}/revoke")):
        refused = keyed.request(method, path, json={"owner": "mallory", "admin": True}, headers=bearer(alice["token"]))
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden"), path
    assert keyed.get("/v1/jobs", headers=bearer(bob["token"])).status_code == 200  # the refused revoke did nothing

    revoked = keyed.post(f"/v1/keys/{alice['id']}/revoke", headers=bearer(STATIC))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    gone = keyed.get("/v1/jobs", headers=bearer(alice["token"]))
    assert (gone.status_code, gone.json()["error"], gone.headers["www-authenticate"]) == (401, "unauthorized", "Bearer")
    again = keyed.post(f"/v1/keys/{alice['id']}/revoke", headers=bearer(STATIC))
    assert again.status_code == 200
    assert again.json() == revoked.json()  # idempotent: the first revocation's time stays
    missing = keyed.post("/v1/keys/999999/revoke", headers=bearer(STATIC))
    assert (missing.status_code, missing.json()["error"]) == (404, "key_not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"owner": ""}, "owner"),
        ({"owner": "has space"}, "owner"),
        ({"owner": "x" * 65}, "owner"),
        ({"owner": "alice", "name": "n" * 65}, "name"),
        ({"owner": "alice", "token": "olk_chosen-by-the-client"}, "token"),
    ],
)
def test_a_bad_key_body_is_422_naming_the_field(keyed: TestClient, body: dict[str, Any], field: str) -> None:
    response = keyed.post("/v1/keys", json=body, headers=bearer(STATIC))
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["detail"]] == [field]


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer", b"Bearer ", b"bearer olk_unknown", b"Token " + STATIC.encode(), "Bearer é".encode("latin-1")],
)
def test_a_malformed_or_unknown_credential_is_401(keyed: TestClient, authorization: bytes) -> None:
    response = keyed.get("/v1/jobs", headers={"Authorization": authorization})  # type: ignore[dict-item]
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized"


def test_openapi_declares_the_bearer_scheme(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/jobs"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


# --- ownership ---------------------------------------------------------------------------------


def test_every_v1_route_is_classified(keyed: TestClient) -> None:
    """A new /v1 route fails here until it is added to a set above (and owned ones to the test below)."""
    paths = keyed.get("/openapi.json").json()["paths"]
    routes = {
        (method.upper(), path) for path, operations in paths.items() if path.startswith("/v1") for method in operations
    }
    assert routes == OWNED_ROUTES | KEY_ROUTES | OWNERLESS_ROUTES


def _create(client: TestClient, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job and a sweep, both with Idempotency-Key 'same'."""
    headers = bearer(token) | {"Idempotency-Key": "same"}
    job = client.post("/v1/jobs", json=job_body(), headers=headers)
    sweep = client.post("/v1/sweeps", json=SWEEP, headers=headers)
    assert (job.status_code, sweep.status_code) == (201, 201), job.text + sweep.text
    return job.json(), sweep.json()


def _assert_hidden(client: TestClient, token: str, job: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Every owned route, called with ``token`` on another owner's job and sweep: not found."""
    headers = bearer(token)
    jobs = client.get("/v1/jobs", headers=headers).json()["items"]
    assert job["id"] not in {j["id"] for j in jobs}
    assert not {j["sweep_id"] for j in jobs} & {sweep["id"]}
    assert client.get("/v1/jobs", params={"sweep_id": sweep["id"]}, headers=headers).json()["items"] == []
    assert client.get("/v1/jobs", params={"owner": job["owner"]}, headers=headers).json()["items"] == []
    assert sweep["id"] not in {s["id"] for s in client.get("/v1/sweeps", headers=headers).json()["items"]}
    assert client.get("/v1/sweeps", params={"owner": job["owner"]}, headers=headers).json()["items"] == []
    job_paths = [f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/metrics", f"/v1/jobs/{job['id']}/metrics?format=csv"]
    job_paths += [f"/v1/jobs/{job['id']}/result"]
    sweep_paths = [f"/v1/sweeps/{sweep['id']}", f"/v1/sweeps/{sweep['id']}/leaderboard"]
    sweep_paths += [f"/v1/sweeps/{sweep['id']}/metrics", f"/v1/sweeps/{sweep['id']}/metrics?format=csv"]
    sweep_paths += [f"/v1/sweeps/{sweep['id']}/trials"]
    analyses = ("compare", "divergence", "budget", "trajectories")
    sweep_paths += [f"/v1/sweeps/{sweep['id']}/{name}" for name in analyses] + [f"/v1/profiles?sweeps={sweep['id']}"]
    for method, path, error in [
        *(("GET", p, "job_not_found") for p in job_paths),
        ("POST", f"/v1/jobs/{job['id']}/cancel", "job_not_found"),
        *(("GET", p, "sweep_not_found") for p in sweep_paths),
        ("POST", f"/v1/sweeps/{sweep['id']}/cancel", "sweep_not_found"),
    ]:
        response = client.request(method, path, headers=headers)
        # The same answer as for an id that does not exist: nothing says the object does.
        assert (response.status_code, response.json()["error"]) == (404, error), (method, path)


def test_owners_neither_see_nor_touch_each_other(keyed: TestClient, sessions: sessionmaker[Session]) -> None:
    alice, bob = make_key(keyed, "alice")["token"], make_key(keyed, "bob")["token"]
    a_job, a_sweep = _create(keyed, alice)
    assert (a_job["owner"], a_sweep["owner"]) == ("alice", "alice")
    advance(sessions, a_job["id"], losses=[1.0])  # running, with an epoch row
    a_sweep_jobs = keyed.get("/v1/jobs", params={"sweep_id": a_sweep["id"]}, headers=bearer(alice)).json()["items"]
    assert {j["owner"] for j in a_sweep_jobs} == {"alice"}
    advance(sessions, a_sweep_jobs[0]["id"], losses=[0.5], status=JobStatus.succeeded)

    _assert_hidden(keyed, bob, a_job, a_sweep)
    # The same Idempotency-Key by another owner is another key: a new job and sweep, bob's.
    b_job, b_sweep = _create(keyed, bob)
    assert (b_job["owner"], b_sweep["owner"]) == ("bob", "bob")
    assert (b_job["id"], b_sweep["id"]) != (a_job["id"], a_sweep["id"])
    _assert_hidden(keyed, alice, b_job, b_sweep)

    # Nothing bob did changed alice's objects, and her own retries still replay hers.
    mine = keyed.get(f"/v1/jobs/{a_job['id']}", headers=bearer(alice)).json()
    assert (mine["status"], mine["cancel_requested"]) == ("running", False)
    counts = keyed.get(f"/v1/sweeps/{a_sweep['id']}", headers=bearer(alice)).json()["counts"]
    assert (counts["cancelled"], counts["succeeded"]) == (0, 1)
    assert keyed.get(f"/v1/sweeps/{a_sweep['id']}/leaderboard", headers=bearer(alice)).json()["rows"][0]["n"] == 1
    metrics = keyed.get(f"/v1/sweeps/{a_sweep['id']}/metrics", headers=bearer(alice)).json()
    assert len(metrics["rows"]) == 1
    assert keyed.get(f"/v1/jobs/{a_job['id']}/metrics", headers=bearer(alice)).json()["epochs_done"] == 1
    headers = bearer(alice) | {"Idempotency-Key": "same"}
    replay = keyed.post("/v1/jobs", json=job_body(), headers=headers)
    assert (replay.status_code, replay.json()["id"]) == (200, a_job["id"])
    replay = keyed.post("/v1/sweeps", json=SWEEP, headers=headers)
    assert (replay.status_code, replay.json()["id"]) == (200, a_sweep["id"])
    cancelled = keyed.post(f"/v1/sweeps/{a_sweep['id']}/cancel", headers=bearer(alice))
    assert cancelled.json()["counts"]["cancelled"] == 1


def test_an_admin_sees_everything_and_filters_by_owner(keyed: TestClient) -> None:
    alice, bob = make_key(keyed, "alice")["token"], make_key(keyed, "bob")["token"]
    root = make_key(keyed, "root", admin=True)["token"]
    (a_job, a_sweep), (b_job, b_sweep) = _create(keyed, alice), _create(keyed, bob)
    for token in (root, STATIC):
        headers = bearer(token)
        owners = {j["owner"] for j in keyed.get("/v1/jobs", headers=headers).json()["items"]}
        assert owners == {"alice", "bob"}
        only_alice = keyed.get("/v1/jobs", params={"owner": "alice"}, headers=headers).json()["items"]
        assert {j["owner"] for j in only_alice} == {"alice"}
        assert a_job["id"] in {j["id"] for j in only_alice}
        sweeps = keyed.get("/v1/sweeps", params={"owner": "bob"}, headers=headers).json()["items"]
        assert [s["id"] for s in sweeps] == [b_sweep["id"]]
        assert keyed.get(f"/v1/jobs/{a_job['id']}", headers=headers).json()["owner"] == "alice"
        assert keyed.get(f"/v1/jobs/{b_job['id']}/metrics", headers=headers).status_code == 200
        assert keyed.get(f"/v1/sweeps/{a_sweep['id']}/leaderboard", headers=headers).status_code == 200
        assert keyed.get(f"/v1/sweeps/{b_sweep['id']}/metrics", headers=headers).status_code == 200
    assert keyed.post(f"/v1/jobs/{b_job['id']}/cancel", headers=bearer(root)).json()["status"] == "cancelled"
    assert keyed.post("/v1/jobs", json=job_body(), headers=bearer(root)).json()["owner"] == "root"
    assert keyed.post("/v1/jobs", json=job_body(), headers=bearer(STATIC)).json()["owner"] == "admin"


def test_with_auth_off_objects_have_no_owner_and_keys_are_not_served(tmp_path: Path, database_url: str) -> None:
    with TestClient(create_app(service_settings(tmp_path, database_url))) as client:
        assert client.post("/v1/jobs", json=job_body()).json()["owner"] == ""
        assert client.post("/v1/sweeps", json=SWEEP).json()["owner"] == ""
        # With auth off anyone here could mint a key that stays valid once auth is on: no.
        for method, path in (("POST", "/v1/keys"), ("GET", "/v1/keys"), ("POST", "/v1/keys/1/revoke")):
            refused = client.request(method, path, json={"owner": "mallory", "admin": True})
            assert (refused.status_code, refused.json()["error"]) == (403, "forbidden"), path


def test_the_client_sends_its_key(keyed: TestClient) -> None:
    from service.client import Client

    token = make_key(keyed, "alice")["token"]
    with Client("http://testserver", api_key=token, transport=keyed._transport) as client:
        assert client.submit(seed_spec({"name": "sgd", "lr": 0.01}))["owner"] == "alice"


# --- the command line --------------------------------------------------------------------------


def test_keys_cli_creates_lists_and_revokes_on_the_database(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIMLAB_DATABASE_URL", database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    created = runner.invoke(cli_app, ["keys", "create", "--owner", "alice", "--name", "laptop"])
    assert created.exit_code == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == f"{token}\n"  # the token alone on stdout: `KEY=$(optimlab keys create ...)`
    assert token.startswith("olk_")
    assert token not in created.stderr
    ops = runner.invoke(cli_app, ["keys", "create", "--owner", "ops", "--admin"]).stdout.strip()
    listed = runner.invoke(cli_app, ["keys", "ls"])
    assert listed.exit_code == 0, listed.stderr
    assert all(word in listed.stdout for word in ("alice", "laptop", token[:12], "ops", "True"))
    assert token not in listed.stdout
    assert ops not in listed.stdout

    with TestClient(create_app(service_settings(tmp_path, database_url, auth="keys"))) as client:
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
        keys = client.get("/v1/keys", headers=bearer(ops)).json()["items"]  # the CLI's admin key
        alice_id = next(k["id"] for k in keys if k["owner"] == "alice")
        for _ in range(2):  # revoking twice is fine
            revoked = runner.invoke(cli_app, ["keys", "revoke", str(alice_id)])
            assert revoked.exit_code == 0, revoked.stderr
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 401
    unknown = runner.invoke(cli_app, ["keys", "revoke", "999999"])
    assert (unknown.exit_code, "999999" in unknown.stderr) == (1, True)
    bad = runner.invoke(cli_app, ["keys", "create", "--owner", "has space"])
    assert (bad.exit_code, "--owner" in bad.stderr, bad.stdout) == (2, True, "")


# --- start-up ----------------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """``uvicorn.run`` recorded instead of serving; the CLI's state in a temporary home."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *_: calls.append({"host": server.config.host}))  # up
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # `up` would replace pytest's SIGTERM handler
    monkeypatch.setenv("OPTIMLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIMLAB_REQUEUE_QUEUED_AFTER_S", "0")  # `up` sets a default; restored after
    monkeypatch.setenv("OPTIMLAB_GPU_WORKERS", "unset")  # `up` sets it without GPUs; unset again after
    monkeypatch.delenv("OPTIMLAB_GPU_WORKERS")
    get_settings.cache_clear()
    return calls


@pytest.mark.parametrize(
    "env",
    [
        {"OPTIMLAB_API_KEYS": STATIC},  # keys, but auth off: they would be ignored
        {"OPTIMLAB_AUTH": "keys", "OPTIMLAB_API_KEYS": ","},
        {"OPTIMLAB_AUTH": "keys", "OPTIMLAB_API_KEYS": f"{STATIC},"},
        {"OPTIMLAB_AUTH": "keys", "OPTIMLAB_API_KEYS": "short-token"},
    ],
)
def test_misconfigured_keys_refuse_to_start(
    env: dict[str, str], served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="OPTIMLAB_API_KEYS"):
        create_app()
    for command in (["api"], ["up", "--workers", "0"]):
        result = CliRunner().invoke(cli_app, command)
        assert result.exit_code == 2, result.output
        assert "OPTIMLAB_API_KEYS" in result.stderr
    assert served == []


@pytest.mark.parametrize("command", [["api"], ["up", "--workers", "0"]])
def test_serving_beyond_loopback_needs_keys(
    command: list[str], served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    refused = CliRunner().invoke(cli_app, [*command, "--host", "0.0.0.0"])
    assert refused.exit_code == 2, refused.output
    assert "--host 0.0.0.0" in refused.stderr
    assert "OPTIMLAB_AUTH" in refused.stderr
    assert served == []
    assert not (tmp_path / "home").exists()  # nothing started: no database, no workers

    monkeypatch.setenv("OPTIMLAB_AUTH", "keys")
    get_settings.cache_clear()
    allowed = CliRunner().invoke(cli_app, [*command, "--host", "0.0.0.0"])
    assert allowed.exit_code == 0, allowed.output
    assert [call["host"] for call in served] == ["0.0.0.0"]


def test_up_with_auth_off_serves_loopback_and_says_it_is_open(served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(cli_app, ["up", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "open to anyone on this machine" in result.stderr
    assert [call["host"] for call in served] == ["127.0.0.1"]


@pytest.mark.parametrize(("gpus", "expected"), [("none", "false"), ("0", None)])
def test_up_without_gpus_tells_the_api_no_gpu_worker_serves_it(
    served: list[dict[str, Any]], gpus: str, expected: str | None
) -> None:
    result = CliRunner().invoke(cli_app, ["up", "--workers", "0", "--gpus", gpus])
    assert result.exit_code == 0, result.output
    assert os.environ.get("OPTIMLAB_GPU_WORKERS") == expected
    assert Settings().gpu_workers is (expected is None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True)],
        *[("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False), ("", False)],
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- the migration -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0004(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.url(server.create_database())
    upgrade(url, "0004")
    return url


def test_the_migration_keeps_existing_rows_as_created_with_auth_off(url_at_0004: str) -> None:
    """0005 copies jobs and sweeps on SQLite: their jobs, epoch rows and tags must survive it."""
    old = {"t": "2026-01-01 00:00:00", "no": False, "key": "shared"}
    engine = make_engine(url_at_0004)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sweeps (id, template, search, created_at, n_jobs, idempotency_key, execution) "
                "VALUES (1, '{}', '{}', :t, 1, :key, 'auto')"
            ),
            old,
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, sweep_id, spec, spec_hash, optimizer, queue, status, attempt, "
                "cancel_requested, created_at, epochs_done, idempotency_key) "
                "VALUES (1, 1, '{}', 'h', 'sgd', 'cpu', 'succeeded', 1, :no, :t, 1, :key)"
            ),
            old,
        )
        connection.execute(text("INSERT INTO job_tags (job_id, tag) VALUES (1, 'kept')"))
        connection.execute(text("INSERT INTO epoch_metrics (job_id, epoch, recorded_at) VALUES (1, 1, :t)"), old)
    engine.dispose()
    upgrade(url_at_0004)
    engine = make_engine(url_at_0004)
    with engine.begin() as connection:
        for table in ("sweeps", "jobs", "job_tags", "epoch_metrics"):
            assert connection.scalar(text(f"SELECT count(*) FROM {table}")) == 1, table
        assert connection.scalar(text("SELECT owner FROM jobs")) == ""
        assert connection.scalar(text("SELECT owner FROM sweeps")) == ""
        # Idempotency keys are now unique per owner: alice may use the one '' used.
        connection.execute(
            text(
                "INSERT INTO jobs (id, owner, spec, spec_hash, optimizer, queue, status, attempt, cancel_requested, "
                "created_at, epochs_done, idempotency_key) "
                "VALUES (2, 'alice', '{}', 'h', 'sgd', 'cpu', 'queued', 0, :no, :t, 0, :key)"
            ),
            old,
        )
    engine.dispose()
