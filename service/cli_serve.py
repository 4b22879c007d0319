"""``optimlab up``, ``api``, ``worker`` and ``db``: the commands that run the service (the client
commands are in ``service/cli.py``, which registers these)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli_common import console
from service.cli_keys import serving_settings
from service.settings import get_settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)

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
    _exit_now(0)


def _exit_now(code: int) -> None:
    """End a process whose work is done (a worker: Celery's shutdown complete, its jobs finished
    or handed back and their messages acknowledged) without the interpreter's teardown: with
    torch loaded, a worker's final garbage collection took 1-2 s, most of what a stopped
    ``optimlab up`` waited for."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def up(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes to start.")] = 1,
    gpus: Annotated[
        str,
        typer.Option(help="'none', 'auto' (nvidia-smi) or GPU ids like '0,1': worker i gets the i-th, round robin."),
    ] = "none",
    log_level: str = "info",
) -> None:
    """Everything on one machine: migrations, the API and worker processes, no servers to install.

    State (SQLite database, broker folders, checkpoints) lives in OPTIMLAB_HOME (default ./.optimlab).
    With OPTIMLAB_AUTH=none (the default) it serves loopback only: anyone on this machine may use it.
    """
    from service.app import create_app
    from service.db.migrate import upgrade

    _logging(log_level)
    # The filesystem broker loses a killed consumer's message; the API re-sends stalled jobs.
    os.environ.setdefault("OPTIMLAB_REQUEUE_QUEUED_AFTER_S", EMBEDDED_REQUEUE_AFTER_S)
    gpu_ids = _detect_gpus(gpus)
    if not gpu_ids:  # no worker here can run a CUDA job: the API refuses them at submission
        os.environ.setdefault("OPTIMLAB_GPU_WORKERS", "false")
    get_settings.cache_clear()
    settings = serving_settings(host)
    if settings.auth == "none":
        console.print("[yellow]OPTIMLAB_AUTH=none[/]: the API is open to anyone on this machine (loopback only)")
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url())
    pool = _WorkerPool(workers, log_level, gpu_ids)
    pool.start()
    console.print(
        f"optimlab: API on [bold]http://{host}:{port}[/] (docs at /docs), {workers} worker(s), "
        f"state in {settings.home.resolve()}"
    )
    signalled = False
    try:
        signalled = _serve(create_app(settings), host, port, log_level, pool)
    finally:
        # The API is down; a Ctrl-C from here on kills the workers still handing jobs back.
        signal.signal(signal.SIGINT, pool.force)
        signal.signal(signal.SIGTERM, pool.force)
        pool.stop(settings.stop_within_s + 2)
        _report(settings.resolved_database_url(), pool)
    if signalled:  # all is done and said: skip the teardown of the API's modules (~0.6 s measured)
        _exit_now(130 if pool.forced else 0)
    if pool.forced:
        raise typer.Exit(130)


SERVE_GRACE_S = 1
"""How long ``up``'s API waits for open requests (a long-poll may hold one for many seconds) once
asked to stop: it stops while its workers hand their jobs back, and both fit ``up``'s 3 s exit."""


def _serve(app: Any, host: str, port: int, log_level: str, pool: _WorkerPool) -> bool:
    """Serve the API until Ctrl-C or SIGTERM, which also tells the workers to hand their jobs
    back at once, not after the API's own shutdown; a second Ctrl-C kills them. Returns whether
    a signal stopped it.

    uvicorn records a signal it handled and raises it again once it has shut down (a Ctrl-C
    would end ``up`` with a KeyboardInterrupt); here the signal is the request to stop, and
    ``up`` goes on to stop its workers and exit normally, so nothing is recorded."""
    import uvicorn

    signals: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            signals.append(sig)
            if self.should_exit:  # a second Ctrl-C: no more waiting
                pool.force()
                self.force_exit = True
            else:
                dispatcher = getattr(app.state, "dispatcher", None)  # set once the app has started
                if dispatcher is not None:
                    dispatcher.halt()  # first: the jobs the workers hand back must stay unsent
                pool.ask_to_stop()
                self.should_exit = True

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=SERVE_GRACE_S)
    Server(config).run()
    return bool(signals)


class _WorkerPool:
    """Worker subprocesses for ``optimlab up``, restarted if one dies."""

    def __init__(self, count: int, log_level: str, gpu_ids: list[str] | None = None) -> None:
        self._count = count
        self._log_level = log_level
        self._gpu_ids = gpu_ids or []  # worker i is pinned to GPU i (round robin); none: CPU workers
        self._procs: list[subprocess.Popen[bytes]] = []
        self._pids: list[int] = []  # every worker started, restarted ones included
        self._signalled: set[tuple[int, int]] = set()
        self._stopping = threading.Event()
        self.stop_asked: dt.datetime | None = None
        self.forced = False
        self._watch = threading.Thread(target=self._supervise, name="optimlab-workers", daemon=True)

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # solo pool, no remote control: nothing here uses them, and the filesystem broker's
        # control channel and pool teardown make a stop take several seconds longer.
        gpu = self._gpu_ids[index % len(self._gpu_ids)] if self._gpu_ids else "none"
        command = [sys.executable, "-m", "service.cli", "worker", "--queues", "gpu,cpu", "--gpus", gpu]
        command += ["--pool", "solo", "--no-remote-control"]
        command += ["--name", f"embedded{index}@%h", "--log-level", self._log_level]
        proc = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: S603 (fixed argv)
        self._pids.append(proc.pid)
        return proc

    def start(self) -> None:
        self._procs = [self._spawn(i) for i in range(self._count)]
        self._watch.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    console.print(f"worker {i} exited with {proc.returncode}; restarting it")
                    self._procs[i] = self._spawn(i)

    def ask_to_stop(self) -> None:
        """Ask every worker to hand its jobs back and exit (SIGTERM: Celery's warm shutdown, which
        ``workers.shutdown`` turns into a stop at the next safe point). Returns at once: a signal
        handler calls it."""
        if self.stop_asked is None:
            self.stop_asked = dt.datetime.now(dt.UTC)
        self._stopping.set()
        self._signal(signal.SIGTERM)

    def force(self, *_: object) -> None:
        """Kill every worker now (a second Ctrl-C): their running jobs stay ``running`` until their
        heartbeat goes stale after the next start (``OPTIMLAB_STALE_AFTER_S``)."""
        self.forced = True
        self._stopping.set()
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        for proc in list(self._procs):
            if proc.poll() is None and (proc.pid, sig) not in self._signalled:
                self._signalled.add((proc.pid, sig))
                with contextlib.suppress(ProcessLookupError):  # it exited just now
                    os.killpg(proc.pid, sig)

    def stop(self, grace_s: float) -> None:
        """Ask the workers to stop (unless asked already) and wait for them; kill any still there
        after ``grace_s`` (stuck: a healthy one hands back within ``OPTIMLAB_STOP_WITHIN_S``)."""
        self.ask_to_stop()
        self._watch.join(2.0)  # it restarts no worker once stopping; then the list is final
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.force()
                proc.wait()

    def worker_names(self) -> set[str]:
        """The names jobs record for the workers this pool started."""
        from service.db.transitions import worker_name

        return {worker_name(pid) for pid in self._pids}


REPORTED_JOBS = 10
"""How many handed-back jobs ``up`` names one by one when it stops; the rest are counted."""


def _report(database_url: str, pool: _WorkerPool) -> None:
    """Say what became of the jobs the workers ran when ``up`` was asked to stop: handed back
    (queued and unsent, so the next start sends them at once and they resume from the checkpoint
    of the epoch they stopped at), or left running by killed workers (requeued once their
    heartbeat is older than ``OPTIMLAB_STALE_AFTER_S``, after the next start)."""
    if pool.stop_asked is None:
        return
    from sqlalchemy import select

    from service.db.models import Job, JobStatus
    from service.db.session import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            back = connection.execute(
                select(Job.id, Job.epochs_done, Job.spec)
                .where(Job.status == JobStatus.queued, Job.enqueued_at.is_(None), Job.attempt > 0)
                .where(Job.heartbeat_at >= pool.stop_asked)  # a release writes the heartbeat too
                .order_by(Job.id)
            ).all()
            left = connection.scalars(
                select(Job.id).where(Job.status == JobStatus.running, Job.worker.in_(pool.worker_names()))
            ).all()
    except Exception as exc:  # the report must not turn a clean stop into a traceback
        console.print(f"could not read what the workers handed back: {exc}")
        return
    finally:
        engine.dispose()
    for job_id, epochs_done, spec in back[:REPORTED_JOBS]:
        total = spec.get("epochs", "?") if isinstance(spec, dict) else "?"
        console.print(f"handed back job {job_id} at epoch {epochs_done}/{total}; it resumes on the next start")
    if len(back) > REPORTED_JOBS:
        console.print(f"handed back {len(back) - REPORTED_JOBS} more job(s); they resume on the next start")
    if left:
        ids = ", ".join(str(job_id) for job_id in left)
        console.print(f"job(s) {ids} left running by killed workers: requeued after the next start, once stale")


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
