"""A worker asked to stop (SIGTERM: Celery's warm shutdown) stops its training within
``OPTIMLAB_STOP_WITHIN_S`` and hands its jobs back to the queue, instead of keeping the worker
until they end (an epoch can take many minutes).

Celery tells only its main process (``worker_shutting_down``); the pool children, which train,
learn it from one shared byte: an anonymous shared mapping made at import, before the pool forks,
so the parent's write is seen by every child (and by the main process itself with the solo or
threads pool). A plain memory write is safe in a signal handler, where a lock is not.
"""

from __future__ import annotations

import mmap
from typing import Any

from celery.signals import worker_shutting_down

_flag = mmap.mmap(-1, 1)  # MAP_SHARED: shared with the processes forked after this import


def requested() -> bool:
    """Whether this worker is shutting down (cheap: a memory read)."""
    return _flag[0] == 1


def request() -> None:
    """Ask this worker's training to stop and hand its jobs back (the shutdown signal does)."""
    _flag[0] = 1


def clear() -> None:
    """Forget a request (tests run several shutdowns in one process)."""
    _flag[0] = 0


@worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    request()  # runs in the main process's signal handler: no logging, no locks
