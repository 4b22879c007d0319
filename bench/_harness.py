"""What the service benchmarks need: a migrated database, optimlab processes started with a
given environment, an HTTP client that waits for /healthz, a wait for a worker, and percentiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.db.migrate import upgrade  # noqa: E402
from tests.servers import postgres_server  # noqa: E402


def migrated_database(stack: ExitStack, database: str, home: Path) -> str:
    """A fresh, migrated PostgreSQL (its own server) or SQLite database; returns its URL."""
    if database == "postgresql":
        pg = stack.enter_context(postgres_server())
        url = pg.url(pg.create_database())
    else:
        url = f"sqlite:///{home / 'bench.db'}"
    upgrade(url)
    return url


def service_env(**values: str) -> dict[str, str]:
    """This environment without any OPTIMLAB_* setting of the caller's, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMLAB_")}
    return env | values


def start(stack: ExitStack, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``optimlab ARGS`` in the background, logging to ``log``, stopped when ``stack`` closes."""
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(proc.wait)
    stack.callback(proc.terminate)
    return proc


def api_client(stack: ExitStack, port: int, timeout: float = 60) -> httpx.Client:
    """A client for the API on ``port``, once it answers /healthz."""
    http = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout))
    deadline = time.monotonic() + 60
    while True:
        try:
            if http.get("/healthz").status_code == 200:
                return http
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API on port {port} did not start")
        time.sleep(0.1)


def wait_ready(log: Path, timeout: float = 60) -> None:
    """Wait until the worker logging to ``log`` says it is ready (its pool imported torch)."""
    deadline = time.monotonic() + timeout
    while b"ready." not in log.read_bytes():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start; see {log}")
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_workers_ready(log: Path, workers: int, timeout: float = 90) -> None:
    """Wait until ``workers`` worker processes logging to ``log`` each said they are ready, as
    ``optimlab up --workers N`` does with all its workers writing to its own output."""
    deadline = time.monotonic() + timeout
    while log.read_bytes().count(b" ready.") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {workers} workers started; see {log}")
        time.sleep(0.05)
