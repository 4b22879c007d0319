"""Stopping inside an epoch: both loops ask ``should_stop`` every ``stop_poll_s`` of wall time, so
a run whose one epoch would take minutes stops within about that long; the interrupted epoch is
neither reported nor checkpointed. And ``may_checkpoint`` fences every checkpoint write."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from optim_engine import EpochMetrics, TrainResult, train, train_trials
from optim_engine._policy import StopPoll
from tests.conftest import seed_spec

POLL_S = 0.25
SLACK_S = 2.5  # a loaded two-core machine: the stop itself is measured to be within POLL_S


def long_epoch(seed: int = 0, n_samples: int = 200_000, **overrides: Any) -> dict[str, Any]:
    """An MLP trained one sample per step: one epoch takes minutes here, with ~20 MB of data and model."""
    model = {"name": "mlp", "params": {"depth": 2, "width": 1024}}
    dataset = {"name": "synthetic_regression", "params": {"n_samples": n_samples, "n_features": 10}}
    return seed_spec({"name": "sgd", "lr": 1e-4}, model=model, dataset=dataset, batch_size=1, seed=seed, **overrides)


class Flag:
    """A stop flag raised from a timer thread; remembers when it rose and what was asked after."""

    def __init__(self, after_s: float, positions: set[int]) -> None:
        self.raised_at: float | None = None
        self.positions = positions
        self.polls_after = 0
        self._timer = threading.Timer(after_s, self._raise)

    def _raise(self) -> None:
        self.raised_at = time.monotonic()

    def start(self) -> Flag:
        self._timer.start()
        return self

    def plain(self) -> bool:
        return bool(self.trials())

    def trials(self) -> set[int]:
        if self.raised_at is None:
            return set()
        self.polls_after += 1
        return self.positions


def test_a_plain_run_stops_inside_a_minutes_long_epoch(tmp_path: Path) -> None:
    epochs: list[EpochMetrics] = []
    flag = Flag(1.0, {0}).start()
    result = train(
        long_epoch(epochs=3),
        on_epoch=epochs.append,
        should_stop=flag.plain,
        stop_poll_s=POLL_S,
        checkpoint_dir=tmp_path,
    )
    stopped_after = time.monotonic() - (flag.raised_at or 0)
    assert (result.outcome, result.history, epochs) == ("cancelled", [], [])
    assert stopped_after < POLL_S + SLACK_S
    assert flag.polls_after == 1  # it stopped at the first poll that saw the flag
    assert list(tmp_path.iterdir()) == []  # the partial epoch was not checkpointed


def test_a_stop_inside_an_epoch_keeps_the_whole_epochs_before_it(tmp_path: Path) -> None:
    """Epoch 1 ends; the flag rises inside epoch 2: history and checkpoint hold epoch 1 only."""
    done: list[int] = []
    polls_in_epoch_2 = [0]

    def should_stop() -> set[int]:
        if done:
            polls_in_epoch_2[0] += 1
        return {0} if polls_in_epoch_2[0] > 3 else set()  # the boundary poll, then two inside

    (result,) = train_trials(
        [long_epoch(n_samples=3_000, epochs=3)],
        on_epoch=lambda _, metrics: done.append(metrics.epoch),
        should_stop=should_stop,
        stop_poll_s=0.02,
        checkpoint_dir=tmp_path,
    )
    assert result.outcome == "cancelled"
    assert [m.epoch for m in result.history] == done == [1]
    import torch

    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert [m["epoch"] for m in saved["history"]] == [1]


def test_a_whole_pack_stops_at_once_inside_a_minutes_long_epoch(tmp_path: Path) -> None:
    finished: list[tuple[int, str, int]] = []
    flag = Flag(1.0, {0, 1}).start()
    results = train_trials(
        [long_epoch(seed=0, epochs=2), long_epoch(seed=1, epochs=2)],
        packed=True,
        on_epoch=lambda i, m: pytest.fail(f"trial {i} reported a partial epoch {m.epoch}"),
        on_finish=lambda i, r: finished.append((i, r.outcome, r.epochs_done)),
        should_stop=flag.trials,
        stop_poll_s=POLL_S,
        checkpoint_dir=tmp_path,
    )
    stopped_after = time.monotonic() - (flag.raised_at or 0)
    assert [(r.outcome, r.history) for r in results] == [("cancelled", [])] * 2
    assert sorted(finished) == [(0, "cancelled", 0), (1, "cancelled", 0)]
    assert stopped_after < POLL_S + SLACK_S
    assert list(tmp_path.iterdir()) == []


def test_a_trial_stopped_inside_a_pack_epoch_ends_at_once_and_the_others_go_on(tmp_path: Path) -> None:
    """Trial 1 is stopped a few polls into epoch 1: it is reported cancelled at once, without the
    partial epoch; the others train as if it had never stopped (epoch 2, with one row fewer in
    the pack, within float32 drift)."""
    specs = [long_epoch(seed=i, n_samples=1_000, epochs=2) for i in range(3)]
    reference = train_trials(specs, packed=True)
    events: list[tuple[str, int]] = []
    polls = [0]

    def should_stop() -> set[int]:
        polls[0] += 1
        return {1} if polls[0] > 3 else set()  # the boundary poll, then two inside epoch 1

    def on_finish(i: int, result: TrainResult) -> None:
        events.append(("finish", i))
        if i == 1:
            assert (result.outcome, result.history) == ("cancelled", [])

    results = train_trials(
        specs,
        packed=True,
        on_epoch=lambda i, m: events.append(("epoch", i)),
        on_finish=on_finish,
        should_stop=should_stop,
        stop_poll_s=0.02,
        checkpoint_dir=tmp_path,
    )
    assert events[0] == ("finish", 1), "the stopped trial ends before the epoch does"
    assert ("epoch", 1) not in events
    assert [(r.outcome, r.epochs_done) for r in results] == [("completed", 2), ("cancelled", 0), ("completed", 2)]
    for i in (0, 2):
        mine, theirs = ([m.train_loss for m in r.history] for r in (results[i], reference[i]))
        assert mine[0] == theirs[0]
        assert mine == pytest.approx(theirs, rel=1e-5)
    import torch

    saved = torch.load(tmp_path / "pack.pt", weights_only=True)["trials"]["1"]
    assert (saved["outcome"], saved["history"]) == ("cancelled", [])


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_may_checkpoint_false_writes_nothing(packed: bool, tmp_path: Path) -> None:
    asked: list[bool] = []

    def refuse() -> bool:
        asked.append(False)
        return False

    spec = seed_spec({"name": "sgd", "lr": 0.01}, epochs=3)
    (result,) = train_trials([spec], packed=packed, checkpoint_dir=tmp_path / "ckpt", may_checkpoint=refuse)
    assert (result.outcome, result.epochs_done) == ("completed", 3)
    assert len(asked) == 3  # asked before each epoch's checkpoint
    assert not (tmp_path / "ckpt").exists()  # not even the folder


def test_may_checkpoint_is_asked_again_just_before_the_rename(tmp_path: Path) -> None:
    """Ownership lost while the checkpoint was being serialized: the file is not put in place."""
    answers = iter([True, False])
    (result,) = train_trials(
        [seed_spec({"name": "sgd"}, epochs=1)], checkpoint_dir=tmp_path, may_checkpoint=lambda: next(answers)
    )
    assert result.outcome == "completed"
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def test_the_stop_poll_reads_the_clock_rarely_and_asks_at_most_every_period() -> None:
    clock = FakeClock()
    asked: list[float] = []
    poll = StopPoll(lambda: asked.append(clock.now), every_s=1.0, clock=clock)
    for _ in range(100_000):  # 100 s of 1 ms steps
        clock.now += 0.001
        if poll.due():
            poll.ask()
    assert clock.reads < 100_000 / 50  # the stride grew to ~125 steps (an eighth of a second)
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    assert len(asked) >= 100 / (1 + 1 / 8) - 1
    assert all(1.0 <= gap <= 1.0 + 1 / 8 + 0.002 for gap in gaps)  # late by at most a stride


def test_the_stop_poll_reads_the_clock_every_step_when_steps_are_slow() -> None:
    clock = FakeClock()
    poll = StopPoll(lambda: None, every_s=1.0, clock=clock)
    due = []
    for step in range(10):  # 2 s steps: every step is past the period
        clock.now += 2.0
        if poll.due():
            poll.ask()
            due.append(step)
    assert due == list(range(10))
