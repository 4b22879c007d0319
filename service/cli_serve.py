"""``optimlab up``, ``api``, ``worker`` and ``db``: the commands that run the service (the client
commands are in ``service/cli.py``, which registers these)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from service.cli_keys import serving_settings
from service.settings import get_settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
console = Console(stderr=True)

EMBEDDED_REQUEUE_AFTER_S = "30"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    from service.db.migrate import upgrade

    url = get_settings().resolved_database_url()
    upgrade(url, revision)
    console.print(f"database at [bold]{_redact(url)}[/] is at {revision}")


def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: str = "info",
) -> None:
    """Serve the REST API (the database must be migrated: `optimlab db upgrade`). A host other than
    loopback needs OPTIMLAB_AUTH=keys."""
    import uvicorn

    from service.app import create_app

    settings = serving_settings(host)
    _logging(log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


def worker(
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: gpu with GPUs, else cpu).")
    ] = None,
    gpus: Annotated[str, typer.Option(help="'auto' (nvidia-smi), 'none', or GPU ids like '0,1'.")] = "auto",
    concurrency: Annotated[int | None, typer.Option(help="Processes (default: one per GPU, else 1).")] = None,
    name: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    pool: Annotated[str, typer.Option(help="prefork (a child process per GPU) or solo (in this process).")] = "prefork",
    remote_control: Annotated[
        bool,
        typer.Option(
            help="Answer `celery inspect` / Flower and send heartbeats; off stops faster on the embedded broker."
        ),
    ] = True,
    log_level: str = "info",
) -> None:
    """Run a Celery worker: one pool process per GPU, each pinned to its own GPU."""
    if pool not in ("prefork", "solo"):
        raise typer.BadParameter("use prefork or solo", param_hint="--pool")
    gpu_ids = _detect_gpus(gpus)
    if gpu_ids:
        os.environ["OPTIMLAB_WORKER_GPUS"] = ",".join(gpu_ids)
    argv = [
        "worker",
        "--queues",
        queues or ("gpu" if gpu_ids else "cpu"),
        "--pool",
        pool,
        "--loglevel",
        log_level.upper(),
        "--without-gossip",
        "--without-mingle",
    ]
    if not remote_control:  # nobody to send heartbeat events to either
        argv += ["--without-heartbeat"]
    if pool == "prefork":
        argv += ["--concurrency", str(concurrency or max(len(gpu_ids), 1))]
    if name:
        argv += ["--hostname", name]
    from workers.app import app as celery_app

    celery_app.conf.worker_enable_remote_control = remote_control
    if pool == "solo":
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids[0]
        from workers.app import warm_up_before_start

        warm_up_before_start("cuda" if gpu_ids else None)  # torch, the engine, the datasets: not the first job
    celery_app.worker_main(argv)


def up(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes to start.")] = 1,
    log_level: str = "info",
) -> None:
    """Everything on one machine: migrations, the API and worker processes, no servers to install.

    State (SQLite database, broker folders, checkpoints) lives in OPTIMLAB_HOME (default ./.optimlab).
    With OPTIMLAB_AUTH=none (the default) it serves loopback only: anyone on this machine may use it.
    """
    import uvicorn

    from service.app import create_app
    from service.db.migrate import upgrade

    _logging(log_level)
    # The filesystem broker loses a killed consumer's message; the API re-sends stalled jobs.
    os.environ.setdefault("OPTIMLAB_REQUEUE_QUEUED_AFTER_S", EMBEDDED_REQUEUE_AFTER_S)
    get_settings.cache_clear()
    settings = serving_settings(host)
    if settings.auth == "none":
        console.print("[yellow]OPTIMLAB_AUTH=none[/]: the API is open to anyone on this machine (loopback only)")
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url())
    pool = _WorkerPool(workers, log_level)
    pool.start()
    console.print(
        f"optimlab: API on [bold]http://{host}:{port}[/] (docs at /docs), {workers} worker(s), "
        f"state in {settings.home.resolve()}"
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn that into a normal exit so the
    # workers are stopped below instead of orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
    finally:
        pool.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


class _WorkerPool:
    """Worker subprocesses for ``optimlab up``, restarted if one dies."""

    def __init__(self, count: int, log_level: str) -> None:
        self._count = count
        self._log_level = log_level
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._supervise, name="optimlab-workers", daemon=True)

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # solo pool, no remote control: nothing here uses them, and the filesystem broker's
        # control channel and pool teardown make a stop take several seconds longer.
        command = [sys.executable, "-m", "service.cli", "worker", "--queues", "gpu,cpu", "--gpus", "none"]
        command += ["--pool", "solo", "--no-remote-control"]
        command += ["--name", f"embedded{index}@%h", "--log-level", self._log_level]
        return subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: S603 (fixed argv)

    def start(self) -> None:
        self._procs = [self._spawn(i) for i in range(self._count)]
        self._watch.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    console.print(f"worker {i} exited with {proc.returncode}; restarting it")
                    self._procs[i] = self._spawn(i)

    def stop(self, grace_s: float = 10.0) -> None:
        """Warm shutdown (a running job finishes its epoch loop or is requeued on the next start)."""
        self._stopping.set()
        for proc in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM if `optimlab up` itself is killed, so none is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _detect_gpus(spec: str) -> list[str]:
    if spec == "none":
        return []
    if spec != "auto":
        return [g.strip() for g in spec.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout  # noqa: S603
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True) if "://" in url else str(Path(url))
