"""The workers' Celery app, configured from the same settings as the API.

Start with ``optimlab worker`` (one process per GPU, each pinned to its own) or
``celery -A workers.app worker -Q gpu,cpu``.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any

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


_torch_import: list[threading.Thread] = []  # this pool child's warm-up import, once started


@worker_process_init.connect
def _pin_and_warm(**_: Any) -> None:
    """After the fork: pin this child to its GPU before CUDA starts, then import torch once so
    the first job does not pay for it.

    The import runs on a thread: Celery kills a child that has not reported ready within
    ``worker_proc_alive_timeout`` (4 s), and this hook runs before that report, so importing
    torch here under load killed children in a loop. The pinning stays here, before the thread
    starts: CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when torch first initializes it.
    """
    from billiard.process import current_process

    gpu = child_gpu(getattr(current_process(), "index", 0) or 0, os.environ.get(GPUS_ENV))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("pool child %s pinned to GPU %s", os.getpid(), gpu)
    # CUDA itself initializes lazily, on first use, in the task.
    thread = threading.Thread(target=importlib.import_module, args=("torch",), name="torch-import", daemon=True)
    _torch_import.append(thread)
    thread.start()


def wait_for_torch() -> None:
    """Wait for this child's warm-up import of torch (at once elsewhere). A task calls it before
    its first torch import: two threads importing torch's modules at once can deadlock on
    Python's per-module import locks."""
    for thread in _torch_import:
        thread.join()
