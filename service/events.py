"""Job events on one host: processes that change a job tell the API, so a held long-poll answers
within a millisecond or two of the commit instead of reading the database every 50 ms.

With SQLite (``optimlab up``, or API and workers on one host) the API binds a datagram socket
named after the database file; a worker sends a few bytes after each commit that changes what a
waiter watches (a claim, epoch rows, a final status, a hand-back), and the API's own changes (a
cancel) go the same way. Events are hints, never the record: one can be lost (no API listening,
its queue full, a process killed between its commit and its send) and a waiter that heard
nothing still reads the database every ``FALLBACK_S``. With PostgreSQL workers may run on other
hosts, and waiters read the database every ``longpoll_interval_s`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from sqlalchemy.engine import URL, make_url

log = logging.getLogger("optimlab.events")

STARTED, PROGRESS, FINISHED, CHANGED = "started", "progress", "finished", "changed"
"""What happened to a job: claimed, new epoch rows, a final status, anything else (a hand-back,
a cancel, a requeue). Only FINISHED can end a job; CHANGED makes every waiter on it look."""

ALL = frozenset({STARTED, PROGRESS, FINISHED, CHANGED})

FALLBACK_S = 1.0
"""How often a waiter that heard no event reads the database anyway (events are only hints)."""

Scope = tuple[str, int]
"""What a waiter watches: ``("job", id)`` or ``("sweep", id)``."""


@cache
def address(database_url: str | URL) -> str | None:
    """The socket of the API serving ``database_url``: a short name in the temporary folder made
    from the database file's absolute path (socket paths are limited to ~100 bytes); None for
    anything but an SQLite file."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    digest = hashlib.blake2b(str(Path(url.database).resolve()).encode(), digest_size=8).hexdigest()
    return os.path.join(tempfile.gettempdir(), f"optimlab-{digest}.events")


@cache
def _sender(pid: int) -> socket.socket:
    """This process's sending socket (keyed by pid: a forked child makes its own)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def publish(database_url: str | URL, kind: str, jobs: Iterable[tuple[int | None, int | None]]) -> None:
    """Tell the API serving ``database_url`` that ``kind`` happened to ``jobs`` ((sweep id or
    None, job id) each; a job id None: to the sweep's jobs). Call it after the commit. Never raises and never waits: no API
    listening, or a full queue, loses the hint, and the API's waiters read the database anyway."""
    target = address(database_url)
    items = [[sweep_id, job_id] for sweep_id, job_id in jobs]
    if target is None or not items:
        return
    with contextlib.suppress(OSError):
        _sender(os.getpid()).sendto(json.dumps([kind, items]).encode(), target)


class Subscription:
    """One waiter's events: ``wait`` returns when one arrives that could matter to it."""

    def __init__(self, kinds: frozenset[str]) -> None:
        self._kinds = kinds
        self._event = asyncio.Event()
        self._finished: set[int] = set()
        self._changed = False

    def note(self, kind: str, job_id: int) -> None:
        if kind not in self._kinds:
            return
        if kind == FINISHED:
            self._finished.add(job_id)
        self._changed = self._changed or kind != FINISHED
        self._event.set()

    def reset(self) -> None:
        """Forget the events so far: call it before reading the state they would change, so an
        event that lands during the read is still waited on, not lost."""
        self._finished.clear()
        self._changed = False
        self._event.clear()

    def satisfied(self, finishes: int = 1) -> bool:
        """Whether, since the last ``reset``, an event other than a job's end came, or
        ``finishes`` distinct jobs ended."""
        return self._changed or len(self._finished) >= finishes

    async def wait(self, timeout: float, *, finishes: int = 1) -> None:
        """Until, since the last ``reset``, any other event came or ``finishes`` jobs finished
        (a waiter for the end of a sweep with 40 jobs left need not look before 40 have ended),
        or ``timeout`` seconds have passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.satisfied(finishes):
                    await self._event.wait()
                    self._event.clear()


class Hub:
    """The API's end: the socket, read by the event loop, and the waiters by what they watch."""

    def __init__(self) -> None:
        self._waiters: dict[Scope, set[Subscription]] = {}
        self._transport: asyncio.BaseTransport | None = None
        self._path: str | None = None
        self._inode: int | None = None

    @property
    def live(self) -> bool:
        """Whether workers' events reach this hub: its socket is bound and still the one at its
        path (a temp-folder cleaner may have removed it); else waiters poll."""
        return self._transport is not None and self._owns()

    def _owns(self) -> bool:
        try:
            return self._path is not None and os.stat(self._path).st_ino == self._inode
        except OSError:
            return False

    async def start(self, database_url: str) -> bool:
        """Bind the socket of ``database_url`` (taking over one a dead API left); False when there
        is none to bind (PostgreSQL), another live API on the same database has it (workers
        tell that one; this one's waiters poll, as without events), or binding failed."""
        path = address(database_url)
        if path is None:
            return False
        if _listened(path):
            log.info("job events off: another API on this database receives them; long-polls here poll")
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a dead API's: nobody receives on it
            sock.bind(path)
            self._inode = os.stat(path).st_ino
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=sock)
        except OSError as exc:
            sock.close()
            log.warning("job events off (%s): long-polls read the database instead", exc)
            return False
        self._path = path
        return True

    def close(self) -> None:
        """Stop receiving, and remove the socket unless it is another API's by now."""
        owned = self._owns()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if owned and self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    @contextlib.contextmanager
    def subscribe(self, scope: Scope, kinds: frozenset[str]) -> Iterator[Subscription]:
        """Events of the jobs of ``scope`` (a job, or a sweep's jobs) of ``kinds``, while open."""
        subscription = Subscription(kinds)
        self._waiters.setdefault(scope, set()).add(subscription)
        try:
            yield subscription
        finally:
            waiters = self._waiters[scope]
            waiters.discard(subscription)
            if not waiters:
                del self._waiters[scope]

    def received(self, data: bytes) -> None:
        try:
            kind, items = json.loads(data)
            jobs = [(_id(sweep_id), _id(job_id)) for sweep_id, job_id in items]
        except (ValueError, TypeError):
            return  # not ours: ignored
        for sweep_id, job_id in jobs:
            scopes: list[Scope] = [("job", job_id)] if job_id is not None else []
            scopes += [("sweep", sweep_id)] if sweep_id is not None else []
            for scope in scopes:
                for subscription in self._waiters.get(scope, ()):
                    subscription.note(str(kind), job_id or 0)


def _listened(path: str) -> bool:
    """Whether a live process receives on the socket at ``path``: a datagram socket connects
    to a bound one, and is refused by the file a dead process left."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _id(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._hub.received(data)
