"""What every fault test shares: the invariants it ends with (``assert_invariants``), read from
the database and from the workers' logs, and small specs and sweep helpers.

The processes, the ``deployment``/``logs`` fixtures and the log dump on failure come from
``tests/integration/conftest.py``; they are imported here so that pytest registers them for
this directory too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import signal
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.integration.conftest import (  # noqa: F401  (fixtures and the report hook, registered by name)
    Api,
    deployment,
    logs,
    pytest_runtest_makereport,
    slow_spec,
    wait_for,
)

# A Celery log line: "[2026-11-30 19:34:14,289: INFO/ForkPoolWorker-1] message".
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/([^\]]+)\] (.*)$")
STARTING = re.compile(r"^jobs \[([\d, ]+)\]: starting")
# The end of a task, logged by the process that ran it ("received" is logged on arrival).
TASK_END = re.compile(r"^Task workers\.\w+\[[\w-]+\] (?!received)")


def tiny_spec(epochs: int = 2, n_samples: int = 256, **overrides: Any) -> dict[str, Any]:
    """Linear(10, 1) on a small synthetic regression: a few milliseconds an epoch."""
    return slow_spec(epochs, n_samples=n_samples, **overrides)


def post_sweep(api: Api, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = api.http.post("/v1/sweeps", json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def sweep_jobs(api: Api, sweep_id: int) -> list[dict[str, Any]]:
    return list(api.http.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}).json()["items"])


class Logged(Protocol):
    """What the invariants read of a worker process (a ``Proc`` is one): its log, and the
    signals the test sent it, with their times."""

    log: Path
    signals: list[tuple[float, int]]

    def output(self) -> str: ...


@dataclass(frozen=True)
class Attempt:
    """One attempt at a job, as a worker's log tells it: when it started, when its task ended
    (the kill time for a process killed before that; inf while it runs), and when the test
    had its process frozen (SIGSTOP to SIGCONT)."""

    job_id: int
    where: str
    start: float
    end: float
    paused: tuple[tuple[float, float], ...] = ()

    def running(self) -> list[tuple[float, float]]:
        """The spans in which this attempt could act: start to end, less its frozen spans."""
        spans, begin = [], self.start
        for stop, resume in self.paused:
            if begin < stop < self.end:
                spans.append((begin, stop))
            begin = max(begin, resume)
        if begin < self.end:
            spans.append((begin, self.end))
        return spans


def _log_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged


def _signal_times(proc: Logged) -> tuple[float, tuple[tuple[float, float], ...]]:
    """When ``proc`` was SIGKILLed (inf: never) and its frozen spans (SIGSTOP to SIGCONT)."""
    killed, paused, stopped = math.inf, [], None
    for at, sig in proc.signals:
        if sig == signal.SIGKILL:
            killed = min(killed, at)
        elif sig == signal.SIGSTOP:
            stopped = at
        elif sig == signal.SIGCONT and stopped is not None:
            paused.append((stopped, at))
            stopped = None
    if stopped is not None:
        paused.append((stopped, math.inf))
    return killed, tuple(paused)


def logged_attempts(procs: Iterable[Logged]) -> dict[int, list[Attempt]]:
    """Every attempt the workers' logs show, by job."""
    found: dict[int, list[Attempt]] = defaultdict(list)
    for proc in procs:
        for attempt in _attempts_of(proc):
            found[attempt.job_id].append(attempt)
    return found


def _attempts_of(proc: Logged) -> list[Attempt]:
    """A task's ``jobs [..]: starting`` line opens one attempt per job; the same process's next
    task outcome line closes them (a pool child runs one task at a time), else the kill."""
    killed, paused = _signal_times(proc)
    running: dict[str, tuple[float, list[int]]] = {}
    attempts: list[Attempt] = []

    def close(process: str, end: float) -> None:
        start, job_ids = running.pop(process)
        attempts.extend(Attempt(job_id, f"{proc.log.name}/{process}", start, end, paused) for job_id in job_ids)

    for line in proc.output().splitlines():
        if not (match := LOG_LINE.match(line)):
            continue
        stamp, process, message = match.groups()
        if started := STARTING.match(message):
            running[process] = (_log_time(stamp), [int(i) for i in started.group(1).split(",")])
        elif TASK_END.match(message) and process in running:
            close(process, _log_time(stamp))
    for process in list(running):
        close(process, killed)
    return attempts


def overlaps(attempts: list[Attempt]) -> list[tuple[Attempt, Attempt]]:
    """The pairs of these attempts (of one job) that ran at the same time."""
    return [
        (a, b)
        for i, a in enumerate(attempts)
        for b in attempts[i + 1 :]
        if any(s1 < e2 and s2 < e1 for s1, e1 in a.running() for s2, e2 in b.running())
    ]


def _final_jobs(database_url: str, timeout: float) -> tuple[list[dict[str, Any]], dict[int, list[Any]]]:
    """Wait until no job is queued or running (riding out a database that is just back), then
    read every job and its epoch rows."""
    engine = create_engine(database_url)

    def settled() -> bool:
        try:
            with engine.connect() as connection:
                return connection.scalar(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")) == 0
        except OperationalError:
            return False

    try:
        wait_for(settled, timeout, "every job to reach a final state")
        with engine.connect() as connection:
            jobs = [
                dict(row._mapping)
                for row in connection.execute(
                    text("SELECT id, status, attempt, spec, epochs_done, final_train_loss FROM jobs ORDER BY id")
                )
            ]
            rows: dict[int, list[Any]] = defaultdict(list)
            for row in connection.execute(
                text("SELECT job_id, epoch, train_loss FROM epoch_metrics ORDER BY job_id, epoch")
            ):
                rows[row.job_id].append(row)
    finally:
        engine.dispose()
    return jobs, rows


def assert_invariants(
    database_url: str, workers: Iterable[Logged], *, timeout: float = 180, statuses: Iterable[str] = ("succeeded",)
) -> list[dict[str, Any]]:
    """The fault suite's invariants, over every job of the database; returns the jobs.

    - every job reaches a final state, one of ``statuses``, within ``timeout`` seconds;
    - a succeeded job has the rows of epochs 1..N exactly once (N: its spec's epochs) and a
      summary equal to its rows (epochs_done, final_train_loss); any other job rows 1..epochs_done;
    - the workers' logs show as many attempts as the job's attempt counter, and no two attempts
      of a job ran at once (a process frozen with SIGSTOP does not run; one SIGKILLed ends).
    """
    workers = list(workers)
    jobs, rows = _final_jobs(database_url, timeout)
    assert jobs, "the database has no job"
    allowed = set(statuses)
    for job in jobs:
        assert job["status"] in allowed, f"job {job['id']} ended {job['status']}"
        spec = job["spec"] if isinstance(job["spec"], dict) else json.loads(job["spec"])
        epochs = spec["epochs"] if job["status"] == "succeeded" else job["epochs_done"]
        stored = rows.get(job["id"], [])
        assert [row.epoch for row in stored] == list(range(1, epochs + 1)), f"job {job['id']}: epochs 1..{epochs} once"
        assert job["epochs_done"] == epochs, f"job {job['id']}: summary says {job['epochs_done']} epochs"
        if stored:
            assert job["final_train_loss"] == stored[-1].train_loss, f"job {job['id']}: summary equals its rows"

    def every_task_ended() -> tuple[dict[int, list[Attempt]]] | None:
        attempts = logged_attempts(workers)
        return (attempts,) if all(a.end < math.inf for each in attempts.values() for a in each) else None

    (attempts,) = wait_for(every_task_ended, 30, "every task the workers started to end")
    for job in jobs:
        mine = attempts.get(job["id"], [])
        assert len(mine) == job["attempt"], f"job {job['id']}: attempt {job['attempt']}, logged {mine}"
        assert not overlaps(mine), f"job {job['id']}: two attempts at once: {overlaps(mine)}"
    return jobs
