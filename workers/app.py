"""The workers' Celery app, configured from the same settings as the API.

Start with ``optimlab worker`` (one process per GPU, each pinned to its own) or
``celery -A workers.app worker -Q gpu,cpu``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, get_args

from celery.signals import worker_process_init

from service.broker import make_celery
from service.settings import get_settings
from workers import shutdown  # noqa: F401  (connects the shutdown signal in the worker's main process)

app = make_celery(get_settings(), include=["workers.tasks"])
log = logging.getLogger("optimlab.worker")

GPUS_ENV = "OPTIMLAB_WORKER_GPUS"


def child_gpu(index: int, gpus: str | None) -> str | None:
    """The GPU a pool child owns: the ``index``-th of the comma-separated list, or None."""
    ids = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    return ids[index % len(ids)] if ids else None


_warm_up: list[threading.Thread] = []  # this pool child's warm-up, once started
_engine_warm = threading.Event()  # its first stage (torch, the engine) is over


@worker_process_init.connect
def _pin_and_warm(**_: Any) -> None:
    """After the fork: pin this child to its GPU before CUDA starts, then warm it up (``warm_up``)
    so that its first job costs what its tenth does.

    The warm-up runs on a thread: Celery kills a child that has not reported ready within
    ``worker_proc_alive_timeout`` (4 s), and this hook runs before that report, so importing
    torch here under load killed children in a loop. The pinning stays here, before the thread
    starts: CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when torch first initializes it.
    """
    from billiard.process import current_process

    gpu = child_gpu(getattr(current_process(), "index", 0) or 0, os.environ.get(GPUS_ENV))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("pool child %s pinned to GPU %s", os.getpid(), gpu)
    if _warmed_before_start.is_set():  # a solo worker warmed up before it started consuming
        return
    thread = threading.Thread(target=warm_up, args=("cuda" if gpu is not None else None,), name="warm-up", daemon=True)
    _warm_up.append(thread)
    thread.start()


_warmed_before_start = threading.Event()


def warm_up_before_start(gpu: str | None = None) -> None:
    """A solo worker (``optimlab up``'s), whose tasks run in its own process and which has no
    child start-up timeout to respect: torch, the engine and the database warm up at once, before
    it reports ready, so that ready means its first job costs what its tenth does. The datasets
    stage goes on a thread, as a pool child's, which only a job needing scikit-learn waits for
    (``wait_for_datasets``): the jobs ``up`` handed back when it last stopped resume as soon as
    its restarted worker is ready, 1-2.7 s sooner."""
    _warm_engine_stage(gpu)
    _attempt(_warm_database)
    thread = threading.Thread(target=_attempt, args=(_warm_datasets,), name="warm-up", daemon=True)
    _warm_up.append(thread)
    thread.start()
    _warmed_before_start.set()


def wait_for_torch() -> None:
    """Wait for the first stage of this child's warm-up: torch and the engine (at once
    elsewhere). A task calls it before its first torch import: two threads importing torch's
    modules at once can deadlock on Python's per-module import locks."""
    if _warm_up:
        _engine_warm.wait()


def wait_for_datasets() -> None:
    """Wait for the whole warm-up, whose second stage may import scikit-learn (for the import
    locks' sake, as ``wait_for_torch``): a task whose dataset needs scikit-learn's own loader
    calls it first; the others (digits, iris, wine and breast_cancer are read without it,
    ``optim_engine._bundled``) need not wait for an import they never make."""
    for thread in _warm_up:
        thread.join()


def warm_up(gpu: str | None = None) -> None:
    """Pay, once, what a fresh process's first job pays on top of its tenth's (measured by
    ``tests/workers/test_warm.py``): importing torch, ``torch._dynamo`` (1-2.3 s: torch imports
    it lazily, on the first optimizer constructed) and scikit-learn's dataset code (1-2.7 s).

    First stage (``wait_for_torch``): one tiny 1-epoch run of the plain loop on synthetic data,
    the way a job runs, with the settings' torch threads, leaving the global RNG as it found
    it; on a child pinned to a GPU (``gpu``), a second run initializes CUDA there. Second stage
    (``wait_for_datasets``): this process's database connection opened and the job path's
    statements compiled (``_warm_database``), then each bundled scikit-learn dataset built
    once. A step that fails
    is logged and skipped, and costs nothing else: the first job pays for it, as before.
    """
    started = time.monotonic()
    warm = _warm_engine_stage(gpu)
    warm.append(_attempt(_warm_database))
    warm.append(_attempt(_warm_datasets))
    if all(warm):
        log.info("pool child %s warmed up in %.1f s", os.getpid(), time.monotonic() - started)


def _warm_engine_stage(gpu: str | None) -> list[bool]:
    """The first stage of ``warm_up`` (``wait_for_torch`` waits for it): whether each run went well."""
    try:
        return [_attempt(partial(_warm_engine, device)) for device in ("cpu", gpu) if device is not None]
    finally:
        _engine_warm.set()


def _attempt(step: Callable[[], None]) -> bool:
    """Run a warm-up step; log its failure (the first job pays for that step) and go on."""
    try:
        step()
    except Exception:
        log.warning("warm-up failed; the first job pays for what it did not do", exc_info=True)
        return False
    return True


def _warm_engine(device: str) -> None:
    import torch

    from optim_engine import train, train_trials

    spec = _tiny_spec({"name": "synthetic_classification", "params": {"n_samples": 256}}, "cross_entropy", device)
    threads = get_settings().torch_threads
    with torch.random.fork_rng(devices=[]):  # the runs seed the global RNG; leave it as it was
        train(spec, num_threads=threads)
        # A sweep's jobs train as packs: their loop's first run pays its own first-time costs.
        packed = [spec, {**spec, "optimizer": {"name": "sgd", "lr": 0.1, "params": {"momentum": 0.9}}}]
        train_trials(packed, packed=True, num_threads=threads)


def _warm_database() -> None:
    """Open this process's connection and run the job path's statements (claim, heartbeat,
    ownership, finish, summary) over a job that does not exist, in a transaction rolled back:
    SQLAlchemy configures its mappers and compiles each statement on first use (about 25 ms,
    paid by a fresh worker's first job otherwise)."""
    from service.db import epochs, transitions
    from service.db.models import JobStatus
    from workers.database import session_factory

    settings = get_settings()
    sessions = session_factory(settings.resolved_database_url(), os.getpid(), settings.stale_after_s / 2)
    nobody = {-1: 0}
    with sessions() as session:
        transaction = session.begin()
        try:
            transitions.claim(session, list(nobody), worker="warm-up", stale_after_s=settings.stale_after_s)
            transitions.heartbeat(session, nobody, worker="warm-up", device="cpu")
            transitions.heartbeat(session, nobody, worker="warm-up")
            transitions.finish(session, -1, 0, JobStatus.succeeded, environment={}, wall_seconds=0.0, spec_hash="-")
            epochs.refresh_summary(session, list(nobody))
        finally:
            transaction.rollback()


def _warm_datasets() -> None:
    from optim_engine import build_dataset
    from optim_engine.spec import SklearnDataset, static_info

    for name in get_args(SklearnDataset.model_fields["name"].annotation):
        info = static_info(SklearnDataset(name=name))
        regression = info is not None and info.task == "regression"
        build_dataset(_tiny_spec({"name": name}, "mse" if regression else "cross_entropy"))


def _tiny_spec(dataset: dict[str, Any], loss: str, device: str = "cpu") -> dict[str, Any]:
    """A spec of a few milliseconds' training on ``dataset``: one epoch of a narrow MLP, Adam."""
    return {
        "model": {"name": "mlp", "params": {"depth": 1, "width": 8}},
        "dataset": dataset,
        "loss": loss,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "epochs": 1,
        "batch_size": 256,
        "device": device,
    }
