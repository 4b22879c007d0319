"""Load on the deployed service, then an audit of every job it accepted.

Starts its own PostgreSQL, Redis, one API process and two worker processes, then runs
``--clients`` concurrent clients for ``--seconds`` on loopback. Each client loops over a mix of
requests: job POSTs (a tiny spec, so the workers keep up or a queue builds; every POST carries
its own Idempotency-Key, and a POST that got no answer is retried with the same key), GET of a
job and of its metrics, job lists filtered by status and sorted, and the sweep list. It prints
requests/s and p50/p95/p99 latency per route, then waits for every accepted job to finish and
audits the database: each accepted key has exactly one job, the one the API answered with,
succeeded with epochs 1..N stored once and a summary equal to its rows. The last line counts
what must never happen: lost or duplicated jobs (a job accepted but missing, unfinished or
inconsistent; a key with two jobs) plus 5xx answers (a request with no answer counts as one).

    python bench/load.py [--clients 50] [--seconds 60] [--drain-timeout 900]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _harness import api_client, migrated_database, percentile, service_env, start, wait_ready
from sqlalchemy import create_engine, text

from tests.servers import free_port, redis_server

SPEC: dict[str, Any] = {
    "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
    "dataset": {"name": "synthetic_regression", "params": {"n_samples": 256, "n_features": 10}},
    "loss": "mse",
    "optimizer": {"name": "sgd", "lr": 0.01},
    "epochs": 3,
    "batch_size": 32,
    "device": "cpu",
}
STATUSES = ("queued", "running", "succeeded")
SORTS = ("-created_at", "best_loss", "-final_val_loss", "created_at")
POST_RETRIES = 10


@dataclass
class Tally:
    """One route's answers: latencies (ms) of the answered requests, status codes, and the
    requests that got no answer, by error."""

    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    no_answer: Counter[str] = field(default_factory=Counter)


@dataclass
class Load:
    """The clients' shared state: the tallies and the jobs the API accepted (key → job id)."""

    http: httpx.AsyncClient
    tallies: dict[str, Tally] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    job_ids: list[int] = field(default_factory=list)

    async def call(self, route: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One request, timed and counted under ``route``; None when no answer came."""
        tally = self.tallies.setdefault(route, Tally())
        started = time.perf_counter()
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            tally.no_answer[type(exc).__name__] += 1
            return None
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        tally.codes[response.status_code] += 1
        return response

    async def post_job(self) -> None:
        """Submit a job under a fresh key; retried with the same key while there is no answer or a
        503, as ``service.client.Client`` does."""
        key = uuid.uuid4().hex
        body = {"spec": SPEC | {"seed": random.randrange(1_000_000)}, "tags": ["load"]}
        for _ in range(POST_RETRIES):
            response = await self.call("POST /v1/jobs", "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if response is not None and response.status_code != 503:
                if response.status_code in (200, 201):  # 200: an earlier try of this key created it
                    self.accepted[key] = int(response.json()["id"])
                    self.job_ids.append(self.accepted[key])
                return
            await asyncio.sleep(0.5)

    async def get_job(self) -> None:
        await self.call("GET /v1/jobs/{id}", "GET", f"/v1/jobs/{random.choice(self.job_ids)}")

    async def get_metrics(self) -> None:
        await self.call("GET /v1/jobs/{id}/metrics", "GET", f"/v1/jobs/{random.choice(self.job_ids)}/metrics")

    async def list_jobs(self) -> None:
        params = {"status": random.choice(STATUSES), "sort": random.choice(SORTS), "limit": 50}
        await self.call("GET /v1/jobs?status&sort", "GET", "/v1/jobs", params=params)

    async def list_sweeps(self) -> None:
        await self.call("GET /v1/sweeps", "GET", "/v1/sweeps")

    def mix(self) -> list[tuple[Callable[[], Awaitable[None]], int]]:
        """The requests a client picks from, with their weights (a job POST one time in ten)."""
        return [
            (self.post_job, 1),
            (self.get_job, 3),
            (self.get_metrics, 2),
            (self.list_jobs, 2),
            (self.list_sweeps, 2),
        ]

    async def client(self, deadline: float) -> None:
        actions, weights = zip(*self.mix(), strict=True)
        while time.monotonic() < deadline:
            action = random.choices(actions, weights)[0] if self.job_ids else self.post_job
            await action()


async def run_clients(base_url: str, clients: int, seconds: float) -> Load:
    # Idle connections expire on the client's side before the server's keep-alive timeout
    # (uvicorn: 5 s, httpx's default expiry too): with equal timeouts a request now and then goes
    # out on a connection the server is closing and gets a ReadError, a client-side race.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        load = Load(http)
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(load.client(deadline) for _ in range(clients)))
    return load


def print_table(load: Load, seconds: float) -> int:
    """The per-route table; returns the number of 5xx answers and requests without an answer."""
    header = f"{'route':<28} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  codes"
    print(header)
    print("-" * len(header))
    failures = 0
    totals = Tally()
    for route, tally in sorted(load.tallies.items()):
        _row(route, tally, seconds)
        failures += sum(n for code, n in tally.codes.items() if code >= 500) + tally.no_answer.total()
        totals.latencies_ms += tally.latencies_ms
        totals.codes += tally.codes
        totals.no_answer += tally.no_answer
    print("-" * len(header))
    _row("all", totals, seconds)
    return failures


def _row(route: str, tally: Tally, seconds: float) -> None:
    answered = len(tally.latencies_ms)
    quantiles = [percentile(tally.latencies_ms, q) if answered else float("nan") for q in (0.5, 0.95, 0.99)]
    codes = " ".join(f"{code}:{n}" for code, n in sorted(tally.codes.items()))
    codes += "".join(f" {error}:{n}" for error, n in sorted(tally.no_answer.items()))
    p50, p95, p99 = quantiles
    print(f"{route:<28} {answered:>9} {answered / seconds:>8.1f} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}  {codes}")


def wait_drained(database_url: str, timeout: float) -> int:
    """Wait until no job is queued or running (printing progress); returns how many still are."""
    engine = create_engine(database_url)
    deadline, last_print = time.monotonic() + timeout, 0.0
    try:
        while True:
            with engine.connect() as connection:
                left = int(connection.scalar(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")))
            if left == 0 or time.monotonic() > deadline:
                return left
            if time.monotonic() - last_print >= 10:
                print(f"  {left} job(s) queued or running")
                last_print = time.monotonic()
            time.sleep(1)
    finally:
        engine.dispose()


def audit(database_url: str, accepted: dict[str, int]) -> Counter[str]:
    """Lost, duplicated and inconsistent jobs among the accepted ones (see the module docstring)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            jobs = connection.execute(
                text("SELECT id, idempotency_key, status, spec, epochs_done, final_train_loss FROM jobs")
            ).all()
            rows: dict[int, list[Any]] = {}
            for row in connection.execute(text("SELECT job_id, epoch, train_loss FROM epoch_metrics ORDER BY 1, 2")):
                rows.setdefault(row.job_id, []).append(row)
    finally:
        engine.dispose()
    by_key: dict[str, list[Any]] = {}
    for job in jobs:
        by_key.setdefault(job.idempotency_key, []).append(job)
    problems: Counter[str] = Counter()
    for key, job_id in accepted.items():
        found = by_key.get(key, [])
        if len(found) != 1 or found[0].id != job_id:
            problems["duplicated" if len(found) > 1 else "lost"] += 1
        elif not _consistent(found[0], rows.get(job_id, [])):
            problems["inconsistent"] += 1
    return problems


def _consistent(job: Any, rows: list[Any]) -> bool:
    """Succeeded, epochs 1..N stored once, and a summary equal to its rows."""
    spec = job.spec if isinstance(job.spec, dict) else json.loads(job.spec)
    epochs = list(range(1, spec["epochs"] + 1))
    return (
        job.status == "succeeded"
        and [row.epoch for row in rows] == epochs
        and job.epochs_done == epochs[-1]
        and job.final_train_loss == rows[-1].train_loss
    )


def start_service(stack: ExitStack, home: Path) -> tuple[str, str]:
    """PostgreSQL, Redis, an API process and two workers; returns (API URL, database URL)."""
    database_url = migrated_database(stack, "postgresql", home)
    env = service_env(
        OPTIMLAB_DATABASE_URL=database_url,
        OPTIMLAB_BROKER_URL=stack.enter_context(redis_server()) + "/0",
        OPTIMLAB_HOME=str(home),
        OPTIMLAB_TORCH_THREADS="1",
    )
    port = free_port()
    start(stack, ["api", "--port", str(port), "--log-level", "warning"], env, home / "api.log")
    for name in ("w1", "w2"):
        start(stack, ["worker", "--queues", "cpu", "--gpus", "none", "--name", f"{name}@%h"], env, home / f"{name}.log")
    http = api_client(stack, port)
    for name in ("w1", "w2"):
        wait_ready(home / f"{name}.log")
    for seeds in ([0, 1], [2, 3]):  # something for the sweep list to return
        body = {"base": SPEC, "grid": {"optimizer.lr": [0.01, 0.02]}, "seeds": seeds, "execution": "packed"}
        http.post("/v1/sweeps", json=body).raise_for_status()
    return str(http.base_url), database_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--drain-timeout", type=float, default=900, help="Seconds to wait for the accepted jobs.")
    args = parser.parse_args()

    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-load-")))
        base_url, database_url = start_service(stack, home)
        print(f"{args.clients} clients for {args.seconds:g} s against {base_url} (1 API process, 2 workers)\n")
        load = asyncio.run(run_clients(base_url, args.clients, args.seconds))
        failures = print_table(load, args.seconds)
        print(f"\n{len(load.accepted)} job(s) accepted; waiting for every one to finish")
        started = time.monotonic()
        left = wait_drained(database_url, args.drain_timeout)
        print(f"drained in {time.monotonic() - started:.0f} s ({left} left)")
        problems = audit(database_url, load.accepted)
        print(f"audit of {len(load.accepted)} accepted job(s): {dict(problems) or 'all present once, consistent'}")
        print(f"lost or duplicated jobs + 5xx answers: {sum(problems.values()) + failures}")


if __name__ == "__main__":
    main()
