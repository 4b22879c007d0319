"""The workers' Celery app, configured from the same settings as the API.

Start with ``optimlab worker`` (one process per GPU, each pinned to its own) or
``celery -A workers.app worker -Q gpu,cpu``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_process_init

from service.broker import make_celery
from service.settings import get_settings

app = make_celery(get_settings(), include=["workers.tasks"])
log = logging.getLogger("optimlab.worker")

GPUS_ENV = "OPTIMLAB_WORKER_GPUS"


def child_gpu(index: int, gpus: str | None) -> str | None:
    """The GPU a pool child owns: the ``index``-th of the comma-separated list, or None."""
    ids = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    return ids[index % len(ids)] if ids else None


@worker_process_init.connect
def _pin_and_warm(**_: Any) -> None:
    """After the fork: pin this child to its GPU before CUDA starts, then import torch once so
    the first job does not pay for it."""
    from billiard.process import current_process

    gpu = child_gpu(getattr(current_process(), "index", 0) or 0, os.environ.get(GPUS_ENV))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("pool child %s pinned to GPU %s", os.getpid(), gpu)
    import torch  # noqa: F401  (warm-up import; CUDA itself initializes lazily on first use)
