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
import signal
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

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


@worker_ready.connect
def _one_term_at_a_time(**_: Any) -> None:
    """Let only the first SIGTERM reach Celery's warm-shutdown handler. That handler is not
    reentrant: it takes a lock to send ``worker_shutting_down``, and a second SIGTERM arriving
    while the first one holds the lock deadlocked the main thread. Its heartbeat thread went on
    beating, so its job was never requeued (seen when `optimlab up` was SIGKILLed and its orphaned
    worker got several SIGTERMs). A warm shutdown under way needs nothing from another one."""
    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler) or getattr(handler, "first_only", False):
        return
    taken = [False]

    def first_only(signum: int, frame: Any) -> None:
        if not taken[0]:
            taken[0] = True
            handler(signum, frame)

    first_only.first_only = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, first_only)
