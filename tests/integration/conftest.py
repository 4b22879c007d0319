"""Real processes for the integration tests: API servers, Celery workers and `optimlab up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 15) -> None:
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait()
        self._out.close()


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

    def start_api(self, **env: str) -> Api:
        """Start an API process (``env`` overrides this deployment's); it becomes ``self.api``."""
        port = free_port()
        self.api_proc = Proc(optimlab("api", "--port", str(port)), self.env | env, self.logs / f"api-{port}.log")
        self.api = Api(f"http://127.0.0.1:{port}")
        wait_for(self.api.up, 60, "the API")
        return self.api

    def start_worker(self, name: str) -> Proc:
        proc = Proc(
            optimlab("worker", "--queues", "cpu", "--gpus", "none", "--name", f"{name}@%h"),
            self.env,
            self.logs / f"{name}.log",
        )
        wait_for(lambda: "ready." in proc.output(), 60, f"worker {name} to be ready")
        self.workers.append(proc)
        return proc

    def replace_worker_of(self, job: dict[str, Any]) -> None:
        """SIGKILL the worker process running ``job`` (and its pool child, mid-epoch: no ack, no
        cleanup), then start a fresh one."""
        child_pid = int(job["worker"].rsplit(":", 1)[1])
        victim = next(w for w in self.workers if w.popen.pid == os.getpgid(child_pid))
        victim.kill(signal.SIGKILL)
        self.workers.remove(victim)
        self.start_worker(f"w{len(self.workers) + 10}")


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, logs: Path, postgres: Any, redis_url: str
) -> Iterator[Deployment]:
    database_url = postgres.url(postgres.create_database())
    upgrade(database_url)
    db_index = 1 + int(time.monotonic_ns() % 14)
    broker_url = f"{redis_url}/{db_index}"
    redis.Redis.from_url(broker_url).flushdb()
    env = service_env(
        OPTIMLAB_DATABASE_URL=database_url,
        OPTIMLAB_BROKER_URL=broker_url,
        OPTIMLAB_HOME=str(tmp_path / "home"),
        **getattr(request, "param", {}),
    )
    deployment = Deployment(Api("http://127.0.0.1:1"), env, logs, [], broker_url)
    apis: list[Proc] = []
    try:
        deployment.start_api()
        assert deployment.api_proc is not None
        apis.append(deployment.api_proc)
        deployment.start_worker("w1")
        deployment.start_worker("w2")
        yield deployment
    finally:
        if deployment.api_proc is not None and deployment.api_proc not in apis:
            apis.append(deployment.api_proc)
        for proc in [*apis, *deployment.workers]:
            proc.stop()
