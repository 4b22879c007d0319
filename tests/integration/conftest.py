"""Real processes for the integration tests: API servers, Celery workers and `optimlab up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from service.db.migrate import upgrade
from tests.servers import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]

# Fast failure detection so the kill tests take seconds, not minutes.
FAST_RECOVERY = {
    "OPTIMLAB_HEARTBEAT_INTERVAL_S": "0.5",
    "OPTIMLAB_STALE_AFTER_S": "3",
    "OPTIMLAB_REAPER_INTERVAL_S": "0.5",
    "OPTIMLAB_DISPATCH_INTERVAL_S": "0.5",
    "OPTIMLAB_VISIBILITY_TIMEOUT_S": "5",
    "OPTIMLAB_UNACKED_RESTORE_INTERVAL_S": "1",
}


def wait_for(predicate: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    """Poll until ``predicate`` returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Proc:
    """A child process in its own process group, with its output in a log file. Every signal the
    test sends is recorded with its time (``signals``): the fault suite's invariants need to
    know when a worker died or was frozen."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self.signals: list[tuple[float, int]] = []
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.signals.append((time.time(), sig))
            with suppress(ProcessLookupError):  # it exited just now
                os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM (and SIGCONT, so that a frozen process handles it); ``stop`` waits."""
        self.kill(signal.SIGTERM)
        self.kill(signal.SIGCONT)

    def stop(self, grace: float = 15) -> None:
        stop_all([self], grace)


def stop_all(procs: list[Proc], grace: float = 15) -> None:
    """SIGTERM every process at once, then wait for each; SIGKILL what is left after ``grace``."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.popen.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill(signal.SIGKILL)
            proc.popen.wait()
        proc._out.close()


def optimlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def service_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMLAB_")}
    return {**env, **FAST_RECOVERY, **values}


class Api:
    """A thin HTTP client for the tests."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def up(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def submit(self, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
        response = self.http.post("/v1/jobs", json={"spec": spec, **extra})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def metrics(self, job_id: int) -> list[dict[str, Any]]:
        return list(self.http.get(f"/v1/jobs/{job_id}/metrics").json()["rows"])

    def wait_status(self, job_id: int, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        return wait_for(
            lambda: job if (job := self.job(job_id))["status"] in statuses else None,
            timeout,
            f"job {job_id} to be {statuses}",
        )

    def watch(self, job_id: int, timeout: float = 120) -> tuple[dict[str, Any], set[int]]:
        """Poll a job as a user would until it ends: (final job, epochs_done values seen while running)."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] in ("queued", "running"):
            if job["status"] == "running":
                seen.add(job["summary"]["epochs_done"])
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(0.02)
        return job, seen

    def wait_epochs(self, job_id: int, epochs: int, timeout: float = 120) -> dict[str, Any]:
        return wait_for(
            lambda: job if (job := self.job(job_id))["summary"]["epochs_done"] >= epochs else None,
            timeout,
            f"job {job_id} to reach epoch {epochs}",
        )


def slow_spec(epochs: int, n_samples: int = 16384, **overrides: Any) -> dict[str, Any]:
    """The seed article's Linear(10, 1) + SGD problem, sized so an epoch takes ~0.1 s here."""
    spec: dict[str, Any] = {
        "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
        "dataset": {"name": "synthetic_regression", "params": {"n_samples": n_samples, "n_features": 10}},
        "loss": "mse",
        "optimizer": {"name": "sgd", "lr": 0.01},
        "epochs": epochs,
        "batch_size": 32,
        "seed": 0,
        "device": "cpu",
    }
    return spec | overrides


def assert_every_epoch_once(rows: list[dict[str, Any]], epochs: int) -> None:
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """Where this test's processes log; printed when the test fails."""
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "logs" in getattr(item, "funcargs", {}):
        for log in sorted(item.funcargs["logs"].glob("*.log")):  # type: ignore[attr-defined]
            report.sections.append((f"log {log.name}", log.read_text(errors="replace")[-6000:]))
    return report


@pytest.fixture
def embedded(tmp_path: Path, logs: Path) -> Iterator[tuple[Api, Proc, float]]:
    """`optimlab up` on a free port, as a user starts it; yields (api, process, seconds to /healthz)."""
    port = free_port()
    env = service_env(OPTIMLAB_HOME=str(tmp_path / "home"))
    started = time.monotonic()
    proc = Proc(optimlab("up", "--port", str(port), "--workers", "1"), env, logs / "up.log", cwd=tmp_path)
    api = Api(f"http://127.0.0.1:{port}")
    wait_for(api.up, 60, "optimlab up to answer /healthz")
    healthy_after = time.monotonic() - started
    yield api, proc, healthy_after
    proc.stop()
    assert proc.popen.returncode == 0, "optimlab up did not shut down cleanly on SIGTERM"


@dataclass
class Deployment:
    api: Api
    env: dict[str, str]
    logs: Path
    workers: list[Proc]
    redis_url: str
    api_proc: Proc | None = None
    gone: list[Proc] = field(default_factory=list)  # workers killed (and replaced)
    old_apis: list[Proc] = field(default_factory=list)  # API processes replaced by ``start_api``

    @property
    def database_url(self) -> str:
        return self.env["OPTIMLAB_DATABASE_URL"]

    def start_api(self, port: int | None = None, wait: bool = True, **env: str) -> Api:
        """Start an API process (``env`` overrides this deployment's) on ``port`` (default: a free
        one); it becomes ``self.api`` and ``self.api_proc``."""
        port = port or free_port()
        if self.api_proc is not None:
            self.old_apis.append(self.api_proc)
        self.api_proc = Proc(optimlab("api", "--port", str(port)), self.env | env, self.logs / f"api-{port}.log")
        self.api = Api(f"http://127.0.0.1:{port}")
        if wait:
            wait_for(self.api.up, 60, "the API")
        return self.api

    def start_worker(self, name: str, wait: bool = True) -> Proc:
        proc = Proc(
            optimlab("worker", "--queues", "cpu", "--gpus", "none", "--name", f"{name}@%h"),
            self.env,
            self.logs / f"{name}.log",
        )
        self.workers.append(proc)
        if wait:
            wait_ready(proc, name)
        return proc

    def start_workers(self, *names: str) -> list[Proc]:
        """Start the workers together (their torch imports overlap), then wait for each."""
        procs = [self.start_worker(name, wait=False) for name in names]
        for proc, name in zip(procs, names, strict=True):
            wait_ready(proc, name)
        return procs

    def every_worker(self) -> list[Proc]:
        """Every worker this deployment started, killed ones included."""
        return [*self.gone, *self.workers]

    def replace_worker_of(self, job: dict[str, Any]) -> None:
        """SIGKILL the worker process running ``job`` (and its pool child, mid-epoch: no ack, no
        cleanup), then start a fresh one."""
        victim = self.worker_of(job)
        victim.kill(signal.SIGKILL)
        self.workers.remove(victim)
        self.gone.append(victim)
        self.start_worker(f"w{len(self.every_worker()) + 10}")

    def kill_workers(self) -> None:
        """SIGKILL every live worker (each with its pool child) at once."""
        for worker in self.workers:
            worker.kill(signal.SIGKILL)
        self.gone += self.workers
        self.workers = []

    def worker_of(self, job: dict[str, Any]) -> Proc:
        """The worker process whose pool child runs ``job`` (by the job's ``worker``, host:pid)."""
        child_pid = int(job["worker"].rsplit(":", 1)[1])
        return next(w for w in self.workers if w.popen.pid == os.getpgid(child_pid))

    def stop(self) -> None:
        stop_all([p for p in [self.api_proc, *self.old_apis, *self.gone, *self.workers] if p is not None])


def wait_ready(proc: Proc, name: str) -> None:
    wait_for(lambda: "ready." in proc.output(), 60, f"worker {name} to be ready")


@contextmanager
def deployed(database_url: str, broker_url: str, home: Path, logs: Path, **env: str) -> Iterator[Deployment]:
    """An API process and two prefork workers (w1, w2) on a migrated database and a broker,
    started together; every process this deployment started is stopped at the end."""
    env = service_env(
        OPTIMLAB_DATABASE_URL=database_url, OPTIMLAB_BROKER_URL=broker_url, OPTIMLAB_HOME=str(home), **env
    )
    deployment = Deployment(Api("http://127.0.0.1:1"), env, logs, [], broker_url)
    try:
        deployment.start_api(wait=False)
        deployment.start_workers("w1", "w2")
        wait_for(deployment.api.up, 60, "the API")
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, logs: Path, postgres: Any, redis_url: str
) -> Iterator[Deployment]:
    """`deployed` on a fresh database of the session's PostgreSQL and a flushed Redis database;
    ``request.param`` (indirect parametrization) adds settings."""
    database_url = postgres.url(postgres.create_database())
    upgrade(database_url)
    db_index = 1 + int(time.monotonic_ns() % 14)
    broker_url = f"{redis_url}/{db_index}"
    redis.Redis.from_url(broker_url).flushdb()
    with deployed(database_url, broker_url, tmp_path / "home", logs, **getattr(request, "param", {})) as running:
        yield running
