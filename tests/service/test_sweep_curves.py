"""Bulk curves (GET /v1/sweeps/{id}/metrics) on SQLite and PostgreSQL: every value exactly as
stored, a finished sweep's strong ETag, 304 and cache, a running sweep never cached, the cache's
bound, and a large sweep streamed as valid JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from optim_engine.results import METRIC_NAMES
from service.app import create_app
from service.auth.principal import Principal
from service.db import epochs, transitions
from service.db.epochs import EPOCHS
from service.db.models import Job, JobStatus
from service.responses import BodyCache, etag_matches
from service.sweeps import curves, repository
from service.sweeps import service as sweep_service
from tests.conftest import seed_spec, service_settings

ALL = ",".join(METRIC_NAMES)
TRICKY = [
    5e-324,  # the smallest subnormal
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1e300,
    0.1,
    1 / 3,
    1.0,  # stays a float: 1.0, not 1
    0.0,
    -0.0,
    1e16,
    123456789.12345679,
    1e-7,
    math.nextafter(1.0, 2.0),
    math.pi * 1e22,
    float("nan"),  # stored as NULL: JSON null
    float("inf"),
    0.30000000000000004,
]


@contextmanager
def serving(tmp_path: Path, database_url: str, **overrides: Any) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url, **overrides))) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with serving(tmp_path, database_url) as test_client:
        yield test_client


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times epoch rows were read from the database (once per read, whole or chunk)."""
    calls: list[int] = []
    original = repository.CurveReader.rows

    def counted(self: repository.CurveReader, *args: Any) -> list[tuple[Any, ...]]:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(repository.CurveReader, "rows", counted)
    return calls


def tricky_rows(shift: int, n: int = len(TRICKY)) -> list[dict[str, Any]]:
    """``n`` epochs, each metric a different one of ``TRICKY``."""
    return [
        {
            "epoch": epoch,
            **{name: TRICKY[(epoch * 7 + k * 3 + shift) % len(TRICKY)] for k, name in enumerate(METRIC_NAMES)},
        }
        for epoch in range(1, n + 1)
    ]


def make_sweep(client: TestClient, lrs: list[float], seeds: int = 2) -> tuple[int, list[int]]:
    body = {"base": seed_spec({"name": "sgd", "lr": 0.01}, epochs=50), "grid": {"optimizer.lr": lrs}}
    created = client.post("/v1/sweeps", json=body | {"seeds": list(range(seeds))})
    assert created.status_code == 201, created.text
    jobs = client.get("/v1/jobs", params={"sweep_id": created.json()["id"], "limit": 500}).json()["items"]
    return int(created.json()["id"]), sorted(job["id"] for job in jobs)


def claim(sessions: sessionmaker[Session], job_id: int) -> int:
    with sessions() as session, session.begin():
        (claimed,) = transitions.claim(session, [job_id], worker="test:1", stale_after_s=60)
    return claimed.attempt


def record(sessions: sessionmaker[Session], job_id: int, rows: list[dict[str, Any]]) -> None:
    with sessions() as session, session.begin():
        epochs.record(session, {job_id: rows})
        epochs.refresh_summary(session, [job_id])


def finish(sessions: sessionmaker[Session], job_id: int, rows: list[dict[str, Any]]) -> None:
    """Run a job as a worker does: claim, write ``rows``, succeed."""
    attempt = claim(sessions, job_id)
    record(sessions, job_id, rows)
    with sessions() as session, session.begin():
        assert transitions.finish(session, job_id, attempt, JobStatus.succeeded)


def finished_sweep(client: TestClient, sessions: sessionmaker[Session], lrs: list[float], epochs: int = 4) -> int:
    """A sweep whose jobs all succeeded with ``epochs`` rows each, but its last: cancelled unrun."""
    sweep_id, job_ids = make_sweep(client, lrs)
    for shift, job_id in enumerate(job_ids[:-1]):
        finish(sessions, job_id, tricky_rows(shift, epochs))
    assert client.post(f"/v1/jobs/{job_ids[-1]}/cancel").status_code == 200  # a job without epochs
    return sweep_id


def exact(value: Any) -> Any:
    """``value`` with every number tagged by its type and written exactly: 1 and 1.0, 0.0 and -0.0
    differ."""
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [exact(item) for item in value]
    if isinstance(value, float | int) and not isinstance(value, bool):
        return (type(value).__name__, repr(value))
    return value


def stored(sessions: sessionmaker[Session], sweep_id: int, names: list[str]) -> dict[str, Any]:
    """The body the curves must equal, from the rows read directly (through SQLAlchemy)."""
    with sessions() as session:
        rows = session.execute(
            select(*(EPOCHS.c[name] for name in names))
            .join(Job, Job.id == EPOCHS.c.job_id)
            .where(Job.sweep_id == sweep_id)
            .order_by(EPOCHS.c.job_id, EPOCHS.c.epoch)
        ).all()
        jobs = session.execute(
            select(Job.id, Job.config_hash, Job.config, Job.status, Job.spec)
            .where(Job.sweep_id == sweep_id)
            .order_by(Job.id)
        ).all()
    return {
        "sweep_id": sweep_id,
        "columns": names,
        "rows": [list(row) for row in rows],
        "jobs": [
            {
                "job_id": j.id,
                "config_hash": j.config_hash,
                "config": j.config,
                "status": j.status,
                "seed": j.spec["seed"],
            }
            for j in jobs
        ],
    }


def stored_csv(expected: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([expected["columns"], *expected["rows"]])
    return out.getvalue()


# --- the encoding ------------------------------------------------------------------------------


def test_every_value_is_the_stored_one_exactly(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sweep_id = finished_sweep(client, sessions, [0.1, 1e-05, 1.0], epochs=len(TRICKY))
    names = ["job_id", "epoch", *METRIC_NAMES]
    expected = stored(sessions, sweep_id, names)
    assert (len(expected["rows"]), len(expected["jobs"])) == (5 * len(TRICKY), 6)
    assert any(value is None for row in expected["rows"] for value in row)  # NaN and inf: NULL

    response = client.get(f"/v1/sweeps/{sweep_id}/metrics", params={"columns": ALL})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert exact(json.loads(response.content)) == exact(expected)
    assert list(json.loads(response.content)) == ["sweep_id", "columns", "rows", "jobs"]

    text = client.get(f"/v1/sweeps/{sweep_id}/metrics", params={"columns": ALL, "format": "csv"}).text
    assert text == stored_csv(expected)  # CSV unchanged: repr floats, empty nulls
    default = client.get(f"/v1/sweeps/{sweep_id}/metrics").json()
    assert default["columns"] == ["job_id", "epoch", "train_loss", "val_loss"]
    assert exact(default["rows"]) == exact([row[:4] for row in expected["rows"]])


def test_a_sweep_without_rows_and_unknown_columns(client: TestClient) -> None:
    sweep_id, job_ids = make_sweep(client, [0.1], seeds=1)
    body = client.get(f"/v1/sweeps/{sweep_id}/metrics").json()
    assert (body["rows"], [job["job_id"] for job in body["jobs"]]) == ([], job_ids)
    assert client.get(f"/v1/sweeps/{sweep_id}/metrics", params={"columns": "colour"}).status_code == 422


# --- ETag, 304 and the cache -------------------------------------------------------------------


def test_a_finished_sweep_has_a_strong_etag_and_if_none_match_is_a_304(
    client: TestClient, sessions: sessionmaker[Session], reads: list[int]
) -> None:
    sweep_id = finished_sweep(client, sessions, [0.1, 0.01])
    path = f"/v1/sweeps/{sweep_id}/metrics"
    first = client.get(path)
    etag = first.headers["etag"]
    assert (etag[0], etag[-1]) == ('"', '"')  # strong: no W/
    assert first.headers["cache-control"] == "private, no-cache"
    assert len(reads) == 1

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = client.get(path, headers={"If-None-Match": header})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag), header
    assert client.get(path, headers={"If-None-Match": '"other"'}).content == first.content

    cached = client.get(path)
    assert (cached.content, cached.headers["etag"]) == (first.content, etag)
    assert len(reads) == 1  # the second body came from the cache, 304s read nothing

    others = {
        client.get(path, params={"columns": "train_loss"}).headers["etag"],
        client.get(path, params={"format": "csv"}).headers["etag"],
    }
    assert len(others - {etag}) == 2


def test_owners_are_checked_before_the_etag(tmp_path: Path, database_url: str, sessions: sessionmaker[Session]) -> None:
    static = "static-admin-token-0123456789"
    with serving(tmp_path, database_url, auth="keys", api_keys=[static]) as client:
        keys = {}
        for owner in ("alice", "bob"):
            made = client.post("/v1/keys", json={"owner": owner}, headers={"Authorization": f"Bearer {static}"})
            keys[owner] = {"Authorization": f"Bearer {made.json()['token']}"}
        client.headers.update(keys["alice"])
        sweep_id = finished_sweep(client, sessions, [0.1])
        etag = client.get(f"/v1/sweeps/{sweep_id}/metrics").headers["etag"]
        as_bob = client.get(f"/v1/sweeps/{sweep_id}/metrics", headers=keys["bob"] | {"If-None-Match": etag})
        assert as_bob.status_code == 404


def test_a_running_sweep_is_read_afresh_with_no_etag(
    client: TestClient, sessions: sessionmaker[Session], reads: list[int]
) -> None:
    sweep_id, (running, *rest) = make_sweep(client, [0.1], seeds=2)
    for job_id in rest:
        finish(sessions, job_id, tricky_rows(0, 3))
    claim(sessions, running)
    record(sessions, running, tricky_rows(1, 1))
    path = f"/v1/sweeps/{sweep_id}/metrics"
    first = client.get(path, headers={"If-None-Match": "*"})
    assert (first.status_code, first.headers.get("etag")) == (200, None)
    record(sessions, running, tricky_rows(1, 2))  # its second epoch
    second = client.get(path)
    assert len(second.json()["rows"]) == len(first.json()["rows"]) + 1
    assert len(reads) == 2


def test_a_change_of_the_rows_changes_the_etag_and_the_body(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    sweep_id = finished_sweep(client, sessions, [0.1])
    path = f"/v1/sweeps/{sweep_id}/metrics"
    before = client.get(path)
    job_id = before.json()["rows"][0][0]
    record(sessions, job_id, tricky_rows(0, 5))  # one more epoch, as a repair through the summary would
    after = client.get(path, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200
    assert after.headers["etag"] != before.headers["etag"]
    assert len(after.json()["rows"]) == len(before.json()["rows"]) + 1
    assert exact(after.json()) == exact(stored(sessions, sweep_id, ["job_id", "epoch", "train_loss", "val_loss"]))


def test_the_cache_keeps_the_most_recent_bodies_within_its_bytes() -> None:
    cache = BodyCache(100)
    cache.put("a", b"a" * 40)
    cache.put("b", b"b" * 40)
    assert cache.get("a") == b"a" * 40  # now the most recent
    cache.put("c", b"c" * 40)
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, b"a" * 40, b"c" * 40)
    assert cache.size == 80 <= cache.max_bytes
    cache.put("huge", b"h" * 101)
    assert (cache.get("huge"), cache.size) == (None, 80)
    cache.put("a", b"A" * 60)
    assert (cache.size, cache.get("c"), len(cache)) == (100, b"c" * 40, 2)
    cache.put("d", b"d")
    assert (cache.get("a"), cache.size) == (None, 41)  # a was the least recently used


def test_the_servers_cache_holds_at_most_curve_cache_bytes(
    tmp_path: Path, database_url: str, sessions: sessionmaker[Session], reads: list[int]
) -> None:
    with serving(tmp_path, database_url) as client:
        sweep_id = finished_sweep(client, sessions, [0.1, 0.01])
    path = f"/v1/sweeps/{sweep_id}/metrics"
    with serving(tmp_path, database_url) as unbounded:
        one = len(unbounded.get(path).content)
        csv_size = len(unbounded.get(path, params={"format": "csv"}).content)
    assert csv_size < one  # no jobs in CSV
    reads.clear()
    with serving(tmp_path, database_url, curve_cache_bytes=one + 10) as client:
        client.get(path)
        client.get(path, params={"format": "csv"})  # both do not fit: the JSON body goes
        client.get(path)
        client.get(path)
        assert len(reads) == 3
    reads.clear()
    with serving(tmp_path, database_url, curve_cache_bytes=0) as client:
        client.get(path)
        client.get(path)
        assert len(reads) == 2


def test_if_none_match_lists() -> None:
    for header in ('W/"a", "b"', '"b" ,"a"', "*"):
        assert etag_matches(header, '"a"'), header
    for missing in (None, '"ab"', "", 'W/"b"'):
        assert not etag_matches(missing, '"a"'), missing


# --- streaming ---------------------------------------------------------------------------------


def test_a_large_sweep_streams_valid_json_and_csv(
    tmp_path: Path,
    database_url: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    reads: list[int],
) -> None:
    monkeypatch.setattr(curves, "STREAM_CHUNK_JOBS", 3)
    with serving(tmp_path, database_url, curve_stream_rows=20) as client:
        sweep_id = finished_sweep(client, sessions, [0.1, 0.01, 0.001, 1e-4], epochs=4)  # 7 x 4 rows + 1 job
        expected = stored(sessions, sweep_id, ["job_id", "epoch", *METRIC_NAMES])
        path = f"/v1/sweeps/{sweep_id}/metrics"
        streamed = client.get(path, params={"columns": ALL})
        assert (streamed.status_code, streamed.headers.get("content-length")) == (200, None)
        assert exact(json.loads(streamed.content)) == exact(expected)
        assert len(reads) == 3  # three chunks of 3 jobs (the last one's job has no rows)
        text = client.get(path, params={"columns": ALL, "format": "csv"})
        assert text.headers.get("content-length") is None
        assert text.text == stored_csv(expected)
        etag = streamed.headers["etag"]
        assert client.get(path, params={"columns": ALL}, headers={"If-None-Match": etag}).status_code == 304
        reads.clear()
        client.get(path, params={"columns": ALL})
        assert len(reads) == 3  # a stream is not cached


def test_a_stream_reads_one_chunk_at_a_time(
    tmp_path: Path,
    database_url: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    reads: list[int],
) -> None:
    monkeypatch.setattr(curves, "STREAM_CHUNK_JOBS", 2)
    settings = service_settings(tmp_path, database_url, curve_stream_rows=10)
    with TestClient(create_app(settings)) as client:
        sweep_id = finished_sweep(client, sessions, [0.1, 0.01, 0.001], epochs=5)
    with sessions() as session:
        answer = sweep_service.sweep_metrics(
            session, sweep_id, Principal("", admin=True), "train_loss", settings=settings
        )
    assert isinstance(answer.content, Iterator)
    chunks: list[bytes] = []
    pull: Callable[[], bytes] = answer.content.__next__
    chunks.append(pull())  # the head: nothing read yet
    assert reads == []
    chunks.append(pull())
    assert len(reads) == 1
    chunks.extend(answer.content)
    body = b"".join(chunks)
    assert max(len(chunk) for chunk in chunks) < len(body) / 2
    assert len(reads) == 3
    assert json.loads(body)["rows"] == stored(sessions, sweep_id, ["job_id", "epoch", "train_loss"])["rows"]
