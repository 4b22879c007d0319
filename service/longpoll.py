"""Long-polling for GET /v1/jobs/{id} and /v1/sweeps/{id}: the state tokens that say whether what a
waiter watches has changed, and the wait that holds a request until it does.

Workers are other processes, so the API learns of a change by reading the database: each waiter
reads one cheap row or count in the threadpool when a job event says it may have changed
(``service.events``; every ``longpoll_interval_s`` where there are none), and waits on the event
loop in between, so a thousand waiters pin no thread."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import anyio
from fastapi import Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service import events
from service.settings import Settings

MAX_WAIT_S = 60.0
"""The schema's bound on ``wait_s``; a server may hold requests for less (``max_wait_s``)."""

TokenReader = Callable[[Session], tuple[str, bool, int | None]]
"""Reads one watched object's current state token, whether it is finished, and how many of its
jobs must still finish before it can be (None: not known from its jobs alone, as for an adaptive
sweep, whose next trials the API creates), in the session it is given."""

WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description=(
            "Long-poll: with `since`, hold the answer up to this many seconds until the state differs from "
            "`since` (0: answer at once). The server may cap it lower (OPTIMLAB_MAX_WAIT_S)."
        ),
    ),
]
Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description=(
            "Long-poll: the `state_token` (or the `ETag`) of an earlier answer. A different current state "
            "is answered at once; the same one waits (see `wait_s`)."
        ),
    ),
]

Until = Annotated[
    Literal["change", "done"],
    Query(
        description=(
            "Long-poll: `change` answers once the state differs from `since`; `done` once the job or sweep is "
            "finished (no `since` needed): one held request for a waiter that wants only the end."
        ),
    ),
]

ETAG_HEADER: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "ETag": {
                "description": 'W/"<state_token>": weak, since fields outside the token (timings) may differ.',
                "schema": {"type": "string"},
            }
        }
    }
}
"""The OpenAPI ``responses`` entry of a long-pollable GET: its 200 carries the token as an ETag."""


def state_token(*parts: object) -> str:
    """An opaque token of ``parts``: equal parts give equal tokens in every API process (no
    ``hash()``, which is salted per process), so a waiter may ask any replica."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def job_token(status: str, epochs_done: int, attempt: int, cancel_requested: bool) -> str:
    """What a job's waiter watches: its status, its progress, a new attempt and a cancel request."""
    return state_token("job", str(status), epochs_done, attempt, cancel_requested)


def sweep_token(counts: Mapping[str, int], trials: int | None = None) -> str:
    """What a sweep's waiter watches: its jobs per status and, for an adaptive sweep, its trials
    created (a pass whose trials are all invalid or served from the cache moves no count; ``done``
    follows from them and the budget). Its ``best`` is not hashed: it is computed from succeeded
    jobs, whose summary is written in the transaction that makes them succeeded, so it only moves
    when the counts do."""
    parts = [f"{status}={counts[status]}" for status in sorted(counts)]
    return state_token("sweep", *parts, *([] if trials is None else [f"trials={trials}"]))


def etag(token: str) -> str:
    return f'W/"{token}"'


async def hold(
    request: Request,
    settings: Settings,
    watch: Callable[[], TokenReader],
    *,
    scope: events.Scope,
    since: str | None,
    wait_s: float,
    until: str = "change",
) -> None:
    """Return once the watched state's token differs from ``since`` (``until="done"``: once the
    object is finished), ``wait_s`` (capped at ``settings.max_wait_s``) has passed, or the client
    has gone; at once with ``wait_s`` 0, or without ``since`` when waiting for a change.
    ``watch`` runs first, in the threadpool, with the request's session: it checks that the
    principal sees the object (raising its 404 error otherwise) and returns the reader each
    check runs in a session of its own, so a waiting request holds no connection.

    Where workers send job events (``service.events``), a check runs when one that can matter
    arrives (until done: once as many jobs have finished as were left), and every
    ``events.FALLBACK_S`` anyway; elsewhere every ``longpoll_interval_s`` (sooner at first)."""
    if wait_s <= 0 or (since is None and until == "change"):
        return
    since = (since or "").removeprefix("W/").strip('"')  # the ETag says the same as the token
    read = await run_in_threadpool(watch)
    session_factory = request.app.state.read_session_factory
    left: list[int | None] = [None]  # jobs the last check found still to finish

    def waiting() -> bool:
        with session_factory() as session:
            token, done, left[0] = read(session)
        return not done if until == "done" else token == since

    hub: events.Hub | None = getattr(request.app.state, "events", None)
    kinds = _kinds(scope, until)
    subscribed = hub.subscribe(scope, kinds) if hub is not None and hub.live else contextlib.nullcontext(None)
    deadline = time.monotonic() + min(wait_s, settings.max_wait_s)
    interval = settings.longpoll_interval_s / 4  # a change about to land is seen sooner
    with subscribed as subscription:
        while True:
            if subscription is not None:
                subscription.reset()
            if not await run_in_threadpool(waiting):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or await request.is_disconnected():
                return
            if subscription is not None and left[0] is not None:
                finishes = max(left[0], 1) if until == "done" else 1
                await subscription.wait(min(events.FALLBACK_S, remaining), finishes=finishes)
                continue
            await anyio.sleep(min(interval, remaining))
            interval = min(interval * 1.5, settings.longpoll_interval_s)


def _kinds(scope: events.Scope, until: str) -> frozenset[str]:
    """The events that can end a wait on ``scope``: until done, only a job's end and other changes
    (a cancel, a hand-back); a claim or new rows finish nothing, and a separate sweep's waiter
    would read the database once per claim for nothing. A sweep's token has no progress."""
    if until == "done":
        return frozenset({events.FINISHED, events.CHANGED})
    return events.ALL if scope[0] == "job" else events.ALL - {events.PROGRESS}
