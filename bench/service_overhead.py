"""What the service costs over calling the engine directly, side by side in one run.

The same 16 short jobs (digits MLP 64-128-10, Adam, batch 64, 20 epochs, 16 seeds, one torch
thread) run (1) one after another through ``optim_engine.train`` in this process, and (2) through
the deployed path: POST /v1/jobs to an API process, Redis, one Celery worker process, every epoch
upserted into the database, while this process polls the running job's new epochs every 50 ms
like a live progress view. Rounds alternate the two, each round on new seeds (the service's
result cache would answer a job it has seen from its stored result); the ratio is the median over rounds of
service wall time (first POST to the last job's finished_at) over engine wall time. Also prints POST /v1/jobs and
GET /v1/jobs/{id}/metrics latencies (p50, p95) seen by the client during the service runs.

Needs redis-server and PostgreSQL binaries (or --database sqlite); starts its own servers.

    python bench/service_overhead.py [--rounds 3] [--jobs 16] [--database postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from _harness import api_client, migrated_database, percentile, service_env, start

from optim_engine import train
from tests.servers import free_port, redis_server

SPEC: dict[str, Any] = {
    "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "loss": "cross_entropy",
    "optimizer": {"name": "adam", "lr": 1e-3},
    "batch_size": 64,
    "epochs": 20,
    "device": "cpu",
}


POLL_S = 0.05  # a 20 Hz progress view: far more eager than a dashboard, so a load on the API


def spec(seed: int) -> dict[str, Any]:
    return SPEC | {"seed": seed}


def run_direct(seeds: range) -> float:
    start = time.perf_counter()
    for seed in seeds:
        train(spec(seed), num_threads=1)
    return time.perf_counter() - start


def run_service(http: httpx.Client, seeds: range, post_ms: list[float], get_ms: list[float]) -> float:
    """Seconds from the first POST to the last job's finished_at (server clock, same machine),
    while a progress view polls the oldest unfinished job's new epochs every POLL_S."""
    start = time.time()
    ids = []
    for seed in seeds:
        t = time.perf_counter()
        response = http.post("/v1/jobs", json={"spec": spec(seed), "tags": ["bench"]})
        post_ms.append((time.perf_counter() - t) * 1000)
        response.raise_for_status()
        ids.append(response.json()["id"])
    pending = {job_id: 0 for job_id in ids}
    while pending:
        job_id = next(iter(pending))
        t = time.perf_counter()
        body = http.get(f"/v1/jobs/{job_id}/metrics", params={"since_epoch": pending[job_id]}).json()
        get_ms.append((time.perf_counter() - t) * 1000)
        if body["rows"]:
            pending[job_id] = body["rows"][-1]["epoch"]
        if body["status"] not in ("queued", "running"):
            if body["status"] != "succeeded" or body["epochs_done"] != SPEC["epochs"]:
                raise RuntimeError(f"job {job_id} ended {body['status']}")
            del pending[job_id]
        time.sleep(POLL_S)
    finished = [dt.datetime.fromisoformat(http.get(f"/v1/jobs/{job_id}").json()["finished_at"]) for job_id in ids]
    return max(finished).timestamp() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()

    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-bench-")))
        broker_url = stack.enter_context(redis_server()) + "/0"
        env = service_env(
            OPTIMLAB_DATABASE_URL=migrated_database(stack, args.database, home),
            OPTIMLAB_BROKER_URL=broker_url,
            OPTIMLAB_HOME=str(home),
            OPTIMLAB_TORCH_THREADS="1",
        )
        port = free_port()
        start(stack, ["api", "--port", str(port), "--log-level", "warning"], env, home / "api.log")
        start(stack, ["worker", "--queues", "cpu", "--gpus", "none"], env, home / "worker.log")
        http = api_client(stack, port, timeout=30)
        deadline = time.monotonic() + 60
        while b"ready." not in (home / "worker.log").read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start; see logs in " + str(home))
            time.sleep(0.1)

        # Warm-up, both sides: first-run costs (imports, allocator, dataset cache) are not overhead.
        run_direct(range(10_000, 10_002))
        run_service(http, range(10_000, 10_002), [], [])

        post_ms: list[float] = []
        get_ms: list[float] = []
        ratios = []
        print(f"{args.jobs} jobs per round, database {args.database}, broker redis, 1 worker process x 1 thread")
        for round_ in range(args.rounds):
            seeds = range(round_ * args.jobs, (round_ + 1) * args.jobs)
            direct = run_direct(seeds)
            service = run_service(http, seeds, post_ms, get_ms)
            ratios.append(service / direct)
            print(f"round {round_ + 1}: engine {direct:.2f} s, service {service:.2f} s, ratio {service / direct:.3f}")
        print(f"POST /v1/jobs latency: p50 {percentile(post_ms, 0.5):.1f} ms, p95 {percentile(post_ms, 0.95):.1f} ms")
        print(
            f"GET /v1/jobs/{{id}}/metrics latency: p50 {percentile(get_ms, 0.5):.1f} ms, "
            f"p95 {percentile(get_ms, 0.95):.1f} ms ({len(get_ms)} polls)"
        )
        print(
            f"service/engine wall-time ratio (median of {args.rounds}, target <= 1.25): {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
