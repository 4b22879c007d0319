"""How fast a large sweep answers through the HTTP API, on SQLite and on PostgreSQL.

The database holds the measured sweep (500 jobs x 100 epochs = 50,000 epoch rows) and two other
sweeps of the same size around it. Jobs and epochs are written through the same job operations
the workers use. Then an API process (`optimlab api`) answers, over real HTTP:
GET /v1/sweeps/{id}/metrics (train_loss and val_loss of every epoch of every job, columnar JSON)
and GET /v1/sweeps/{id}/leaderboard (500 jobs in 50 configurations x 10 seeds). Reports p50 and
p95 of 30 requests each after warm-up. Targets: metrics p50 <= 100 ms, leaderboard p50 <= 30 ms.
The last line is the SQLite figures.

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


def populate(http: httpx.Client, database_url: str) -> int:
    """Three sweeps through the API; every job's epochs written as a worker writes them."""
    sessions = make_session_factory(make_engine(database_url))
    measured = 0
    for index in range(SWEEPS):
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


def timed(http: httpx.Client, path: str, params: dict[str, Any], requests: int) -> tuple[float, float, int]:
    for _ in range(3):
        http.get(path, params=params).raise_for_status()
    times = []
    size = 0
    for _ in range(requests):
        start = time.perf_counter()
        response = http.get(path, params=params)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return percentile(times, 0.5), percentile(times, 0.95), size


def measure(database: str, requests: int, stack: ExitStack) -> tuple[float, float]:
    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-bench-")))
    database_url = migrated_database(stack, database, home)
    env = service_env(OPTIMLAB_DATABASE_URL=database_url, OPTIMLAB_HOME=str(home), OPTIMLAB_MAX_SWEEP_JOBS="1000")
    port = free_port()
    start(stack, ["api", "--port", str(port), "--log-level", "warning"], env, home / "api.log")
    http = api_client(stack, port)
    started = time.perf_counter()
    sweep_id = populate(http, database_url)
    print(
        f"{database}: {SWEEPS} sweeps x {JOBS} jobs x {EPOCHS} epochs written in {time.perf_counter() - started:.1f} s"
    )
    m50, m95, size = timed(http, f"/v1/sweeps/{sweep_id}/metrics", {"columns": "train_loss,val_loss"}, requests)
    print(f"  GET /v1/sweeps/{sweep_id}/metrics: p50 {m50:.1f} ms, p95 {m95:.1f} ms ({size / 1e6:.1f} MB, 50,000 rows)")
    l50, l95, _ = timed(http, f"/v1/sweeps/{sweep_id}/leaderboard", {"metric": "val_loss"}, requests)
    print(f"  GET /v1/sweeps/{sweep_id}/leaderboard: p50 {l50:.1f} ms, p95 {l95:.1f} ms (50 configurations)")
    return m50, l50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--databases", default="postgresql,sqlite")
    args = parser.parse_args()
    results = {}
    for database in args.databases.split(","):
        with ExitStack() as stack:
            results[database] = measure(database, args.requests, stack)
    metrics_p50, leaderboard_p50 = results.get("sqlite", next(iter(results.values())))
    print(f"sweep metrics p50 {metrics_p50:.1f} ms; leaderboard p50 {leaderboard_p50:.1f} ms")


if __name__ == "__main__":
    main()
