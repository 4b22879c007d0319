"""The checker every fault test ends with catches what it claims to: two attempts of a job at
once, told from the workers' logs, with frozen spans and kills taken into account."""

from __future__ import annotations

import datetime as dt
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.conftest import logged_attempts, overlaps

pytestmark = pytest.mark.slow

T0 = 1_800_000_000.0


@dataclass
class LoggedProc:
    """What the checker reads of a worker process: its log and the signals the test sent it."""

    log: Path
    lines: list[str]
    signals: list[tuple[float, int]] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)


def line(at: float, message: str, process: str = "ForkPoolWorker-1") -> str:
    stamp = dt.datetime.fromtimestamp(T0 + at)
    return f"[{stamp:%Y-%m-%d %H:%M:%S},{stamp.microsecond // 1000:03d}: INFO/{process}] {message}"


def task(start: float, end: float | None, job_ids: str = "[7]") -> list[str]:
    lines = [
        line(start - 0.01, "Task workers.run[ab-1] received", "MainProcess"),
        line(start, f"jobs {job_ids}: starting"),
    ]
    return lines + ([line(end, "Task workers.run[ab-1] succeeded in 1.0s: 'succeeded=1'")] if end is not None else [])


def worker(tmp_path: Path, name: str, lines: list[str], *signals: tuple[float, int]) -> LoggedProc:
    return LoggedProc(tmp_path / name, lines, [(T0 + at, sig) for at, sig in signals])


def test_two_live_attempts_at_once_are_caught(tmp_path: Path) -> None:
    first = worker(tmp_path, "w1.log", task(0, 5))
    second = worker(tmp_path, "w2.log", task(3, 8, "[6, 7]"))
    attempts = logged_attempts([first, second])
    assert [round(t - T0, 3) for a in attempts[7] for t in (a.start, a.end)] == [0, 5, 3, 8]
    assert len(attempts[6]) == 1
    assert len(overlaps(attempts[7])) == 1


def test_a_frozen_or_killed_attempt_does_not_run_meanwhile(tmp_path: Path) -> None:
    frozen = worker(tmp_path, "w1.log", task(0, 10.5), (1, signal.SIGSTOP), (10, signal.SIGCONT))
    killed = worker(tmp_path, "w2.log", task(11, None), (12, signal.SIGKILL))
    other = worker(tmp_path, "w3.log", task(4, 8) + task(15, 16))
    attempts = logged_attempts([frozen, killed, other])[7]
    assert len(attempts) == 4
    assert overlaps(attempts) == []
    assert overlaps([*attempts, *logged_attempts([worker(tmp_path, "w4.log", task(11.5, 13))])[7]])


def test_an_attempt_still_running_stays_open(tmp_path: Path) -> None:
    (attempt,) = logged_attempts([worker(tmp_path, "w1.log", task(0, None))])[7]
    assert attempt.end == float("inf")
