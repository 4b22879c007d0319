"""A sweep's bulk curves as bytes: columnar JSON or CSV, whole or streamed a chunk of jobs at a
time; the strong ETag of a finished sweep's curves, and the cache of their encoded bodies."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from sqlalchemy import Engine

from service.responses import BodyCache, csv_text
from service.sweeps.repository import CurveReader, CurveState, curve_reader

ENCODING = 1
"""Part of every ETag: a server whose encoding changes changes its ETags with it."""

STREAM_CHUNK_JOBS = 500
"""Jobs per chunk of a streamed answer: 50,000 rows (about 2.5 MB of JSON) at 100 epochs."""


@dataclass(frozen=True)
class Curves:
    """An answer: ``content`` (bytes; chunks to stream; None: not modified since ``etag``), its
    media type, and its ETag (None while the sweep runs: its curves still change)."""

    content: bytes | Iterator[bytes] | None
    media_type: str
    etag: str | None


@dataclass(frozen=True)
class CurveQuery:
    """What a request asks for: the sweep, the row's columns (``curve_columns``), the format."""

    sweep_id: int
    names: list[str]
    as_csv: bool = False

    @property
    def media_type(self) -> str:
        return "text/csv" if self.as_csv else "application/json"

    def etag(self, state: CurveState) -> str:
        """A strong ETag: a digest of everything the bytes depend on (``state`` stands for the rows)."""
        form = "csv" if self.as_csv else "json"
        key = f"{ENCODING}|{self.sweep_id}|{form}|{','.join(self.names)}|{state.fingerprint()}"
        return f'"{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"'


def encode(reader: CurveReader, query: CurveQuery, state: CurveState) -> bytes:
    """The whole body: JSON ``{"sweep_id", "columns", "rows", "jobs"}`` or CSV (no jobs)."""
    rows: list[Any] = []
    jobs = b"[]"
    if state.first_job is not None and state.last_job is not None:
        rows = reader.rows(query.sweep_id, query.names, state.first_job, state.last_job)
        if not query.as_csv:
            jobs = reader.jobs_json(query.sweep_id, state.first_job, state.last_job)
    if query.as_csv:
        return csv_text(rows, query.names).encode()
    # orjson: a few ms for 50,000 rows where the standard library takes ~45. The jobs' JSON from
    # the database goes in as it is: a Fragment is never parsed.
    return orjson.dumps(
        {"sweep_id": query.sweep_id, "columns": query.names, "rows": rows, "jobs": orjson.Fragment(jobs)}
    )


def stream(engine: Engine, query: CurveQuery, job_ids: Sequence[int]) -> Iterator[bytes]:
    """The same bytes as ``encode`` would give (up to whitespace), ``STREAM_CHUNK_JOBS`` jobs at a
    time, each chunk read on a connection of its own when the client is ready for it: a sweep
    of any size is never held whole, here or in the database session."""
    chunks = (job_ids[i : i + STREAM_CHUNK_JOBS] for i in range(0, len(job_ids), STREAM_CHUNK_JOBS))
    ranges = [(chunk[0], chunk[-1]) for chunk in chunks]
    return _csv_chunks(engine, query, ranges) if query.as_csv else _json_chunks(engine, query, ranges)


def _json_chunks(engine: Engine, query: CurveQuery, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
    yield orjson.dumps({"sweep_id": query.sweep_id, "columns": query.names})[:-1] + b',"rows":['
    separator = b""
    for first, last in ranges:
        with curve_reader(engine) as reader:
            rows = reader.rows(query.sweep_id, query.names, first, last)
        if rows:  # a chunk of jobs without epochs adds nothing, not an empty element
            yield separator + orjson.dumps(rows)[1:-1]
            separator = b","
    yield b'],"jobs":['
    separator = b""
    for first, last in ranges:
        with curve_reader(engine) as reader:
            jobs = reader.jobs_json(query.sweep_id, first, last).strip()[1:-1].strip()
        if jobs:
            yield separator + jobs
            separator = b","
    yield b"]}"


def _csv_chunks(engine: Engine, query: CurveQuery, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
    yield csv_text([], query.names).encode()
    for first, last in ranges:
        with curve_reader(engine) as reader:
            rows = reader.rows(query.sweep_id, query.names, first, last)
        if rows:
            yield csv_text(rows).encode()


_caches: WeakKeyDictionary[Engine, BodyCache] = WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(engine: Engine, max_bytes: int) -> BodyCache:
    """The cache of finished sweeps' encoded curves read from ``engine``'s database: one per
    engine, since sweep ids are only unique within a database (an app has one engine)."""
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = BodyCache(max_bytes)
        return cache
