"""How fast a large sweep answers through the HTTP API, on SQLite and on PostgreSQL.

The database holds the measured sweep (500 jobs x 100 epochs = 50,000 epoch rows) and two other
sweeps of the same size around it. Jobs and epochs are written through the same job operations
the workers use. Then two API processes (`optimlab api`) answer over real HTTP, one with the
curve cache off (OPTIMLAB_CURVE_CACHE_BYTES=0: every answer encoded from the database, as a
running sweep's always is) and one as configured by default:
GET /v1/sweeps/{id}/metrics (train_loss and val_loss of every epoch of every job, columnar JSON)
uncached, cached (the sweep is finished), and conditional (If-None-Match: its ETag, a 304), and
GET /v1/sweeps/{id}/leaderboard (500 jobs in 50 configurations x 10 seeds). Reports p50 and p95
of 30 requests each after warm-up. Targets: metrics p50 <= 50 ms uncached on both databases,
cached and 304 a few ms; leaderboard p50 <= 30 ms. The last line: the slower database's figures.

    python bench/sweep_queries.py [--requests 30] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from _harness import api_client, migrated_database, percentile, service_env, start

from service.db import epochs, transitions
from service.db.models import JobStatus
from service.db.session import make_engine, make_session_factory
from tests.servers import free_port

JOBS, EPOCHS, SWEEPS = 500, 100, 3
BASE: dict[str, Any] = {
    "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
    "dataset": {"name": "synthetic_regression", "params": {"n_samples": 1024, "n_features": 10}},
    "loss": "mse",
    "optimizer": {"name": "sgd", "lr": 0.01},
    "epochs": EPOCHS,
    "device": "cpu",
}
SWEEP = {
    "base": BASE,
    "grid": {"optimizer.lr": [round(0.2 / 1.3**i, 6) for i in range(25)], "optimizer.params.momentum": [0.0, 0.9]},
    "seeds": list(range(10)),
}


def populate(http: httpx.Client, database_url: str, sweeps: int = SWEEPS) -> int:
    """``sweeps`` sweeps through the API (the first is returned: the measured one); every job's
    epochs written as a worker writes them. bench/dashboard_perf.py builds one the same way."""
    sessions = make_session_factory(make_engine(database_url))
    measured = 0
    for index in range(sweeps):
        created = http.post("/v1/sweeps", json=SWEEP | {"name": f"bench {index}"})
        created.raise_for_status()
        sweep_id = created.json()["id"]
        measured = measured or sweep_id
        page = http.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}).json()["items"]
        for job in page:
            lr, seed = job["spec"]["optimizer"]["lr"], job["spec"]["seed"]
            rows = [_epoch(epoch, lr, seed) for epoch in range(1, EPOCHS + 1)]
            with sessions() as session, session.begin():
                (claim,) = transitions.claim(session, [job["id"]], worker="bench:1", stale_after_s=60)
                epochs.record(session, {job["id"]: rows})
                transitions.finish(session, job["id"], claim.attempt, JobStatus.succeeded)
    return measured


def _epoch(epoch: int, lr: float, seed: int) -> dict[str, Any]:
    loss = 0.01 + math.exp(-lr * epoch) * (1 + 0.01 * seed)
    return {
        "epoch": epoch,
        "train_loss": loss,
        "val_loss": loss * 1.05,
        "val_accuracy": None,
        "lr": lr,
        "grad_norm": 1.0 / epoch,
        "epoch_seconds": 0.01,
        "samples_per_second": 80_000.0,
    }


def timed(
    http: httpx.Client, path: str, params: dict[str, Any], requests: int, headers: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """p50 and p95 in ms of ``requests`` GETs after three of warm-up, and the last body's size."""
    expected = 304 if headers and "If-None-Match" in headers else 200
    for _ in range(3):
        http.get(path, params=params, headers=headers)
    times = []
    size = 0
    for _ in range(requests):
        start = time.perf_counter()
        response = http.get(path, params=params, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != expected:
            raise RuntimeError(f"GET {path}: {response.status_code}, not {expected}: {response.text[:200]}")
        size = len(response.content)
    return percentile(times, 0.5), percentile(times, 0.95), size


def api(stack: ExitStack, env: dict[str, str], log: Path) -> httpx.Client:
    """An API process with ``env``, and a client for it."""
    port = free_port()
    start(stack, ["api", "--port", str(port), "--log-level", "warning"], env, log)
    return api_client(stack, port)


def measure(database: str, requests: int, stack: ExitStack) -> dict[str, float]:
    """Each case's p50 on ``database`` (printing p50 and p95)."""
    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-bench-")))
    database_url = migrated_database(stack, database, home)
    env = service_env(OPTIMLAB_DATABASE_URL=database_url, OPTIMLAB_HOME=str(home), OPTIMLAB_MAX_SWEEP_JOBS="1000")
    http = api(stack, env, home / "api.log")
    uncached = api(
        stack, env | {"OPTIMLAB_CURVE_CACHE_BYTES": "0", "OPTIMLAB_DISPATCH_INTERVAL_S": "0"}, home / "u.log"
    )
    started = time.perf_counter()
    sweep_id = populate(http, database_url)
    print(
        f"{database}: {SWEEPS} sweeps x {JOBS} jobs x {EPOCHS} epochs written in {time.perf_counter() - started:.1f} s"
    )
    path, params = f"/v1/sweeps/{sweep_id}/metrics", {"columns": "train_loss,val_loss"}
    etag = http.get(path, params=params).headers["etag"]
    cases = {
        "uncached": timed(uncached, path, params, requests),
        "cached": timed(http, path, params, requests),
        "304": timed(http, path, params, requests, headers={"If-None-Match": etag}),
    }
    for case, (p50, p95, size) in cases.items():
        what = f"{size / 1e6:.1f} MB, 50,000 rows" if size else "no body"
        print(f"  GET {path} {case:>8}: p50 {p50:6.1f} ms, p95 {p95:6.1f} ms ({what})")
    l50, l95, _ = timed(http, f"/v1/sweeps/{sweep_id}/leaderboard", {"metric": "val_loss"}, requests)
    print(f"  GET /v1/sweeps/{sweep_id}/leaderboard: p50 {l50:.1f} ms, p95 {l95:.1f} ms (50 configurations)")
    return {case: p50 for case, (p50, _, _) in cases.items()} | {"leaderboard": l50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--databases", default="postgresql,sqlite")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for database in args.databases.split(","):
        with ExitStack() as stack:
            results[database] = measure(database, args.requests, stack)
    worst = {case: max(result[case] for result in results.values()) for case in next(iter(results.values()))}
    print(
        f"sweep metrics p50 {worst['uncached']:.1f} ms uncached, {worst['cached']:.1f} ms cached, "
        f"{worst['304']:.1f} ms 304; leaderboard p50 {worst['leaderboard']:.1f} ms (slower of {', '.join(results)})"
    )


if __name__ == "__main__":
    main()
