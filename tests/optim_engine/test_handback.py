"""A stop meant as a pause (a worker shutdown hands its jobs back): the run stops at an epoch
boundary it checkpoints, whatever ``checkpoint_every_s`` says, so the next run resumes exactly
there; a stop asked near an epoch's end waits for it (``stop_grace_s``); and the resumed run
trains what an uninterrupted one does."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from optim_engine import EpochMetrics, train_trials
from optim_engine._policy import CheckpointCadence, StopPoll
from tests.conftest import seed_spec
from tests.optim_engine.test_stop import FakeClock

NEVER_S = 3600.0  # a checkpoint cadence that never comes due in a test


def specs(packed: bool) -> list[dict[str, object]]:
    return [seed_spec({"name": "sgd", "lr": lr}, epochs=8, seed=3) for lr in ((0.01, 0.02) if packed else (0.01,))]


class StopAfter:
    """``should_stop`` that wants every trial stopped once ``epochs`` epochs of trial 0 are done,
    from the ``skip``-th ask after that on (0: the boundary ask right after the epoch)."""

    def __init__(self, epochs: int, skip: int = 0) -> None:
        self.epochs, self.skip = epochs, skip
        self.done: list[int] = []
        self.asks = 0

    def on_epoch(self, index: int, metrics: EpochMetrics) -> None:
        if index == 0:
            self.done.append(metrics.epoch)

    def __call__(self) -> Collection[int]:
        if len(self.done) < self.epochs:
            return set()
        self.asks += 1
        return {0, 1} if self.asks > self.skip else set()


def saved_epochs(directory: Path, packed: bool) -> int:
    import torch

    payload = torch.load(directory / ("pack.pt" if packed else "checkpoint.pt"), weights_only=True)
    if not packed:
        return int(payload["epoch"])
    assert {entry["outcome"] for entry in payload["trials"].values()} == {None}, "checkpointed live, not cancelled"
    return len(payload["trials"]["0"]["history"])


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_a_stop_at_a_boundary_checkpoints_it_and_the_resumed_run_is_the_uninterrupted_one(
    packed: bool, tmp_path: Path
) -> None:
    whole = train_trials(specs(packed), packed=packed)
    stop = StopAfter(3)
    stopped = train_trials(
        specs(packed),
        packed=packed,
        on_epoch=stop.on_epoch,
        should_stop=stop,
        checkpoint_dir=tmp_path,
        checkpoint_every_s=NEVER_S,
    )
    assert {r.outcome for r in stopped} == {"cancelled"}
    assert [m.epoch for m in stopped[0].history] == [1, 2, 3]
    assert saved_epochs(tmp_path, packed) == 3, "the stop's checkpoint, not none (the cadence never came due)"
    resumed = train_trials(specs(packed), packed=packed, checkpoint_dir=tmp_path, checkpoint_every_s=NEVER_S)
    for alone, again in zip(whole, resumed, strict=True):
        assert again.resumed_from_epoch == 3
        assert [m.train_loss for m in again.history] == [m.train_loss for m in alone.history]


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize(("grace_s", "kept"), [(60.0, [1, 2]), (0.0, [1])], ids=["grace", "no-grace"])
def test_a_stop_inside_an_epoch_that_ends_within_the_grace_lets_it_end(
    packed: bool, grace_s: float, kept: list[int], tmp_path: Path
) -> None:
    """The stop rises inside epoch 2 (asked every step): with a grace that epoch ends, is reported
    and checkpointed, and the run stops at its boundary; without one it is dropped as before."""
    stop = StopAfter(1, skip=1)  # not at the boundary after epoch 1: from the first step of epoch 2
    results = train_trials(
        specs(packed),
        packed=packed,
        on_epoch=stop.on_epoch,
        should_stop=stop,
        stop_poll_s=0.0,
        stop_grace_s=grace_s,
        checkpoint_dir=tmp_path,
        checkpoint_every_s=0.0 if not grace_s else NEVER_S,
    )
    assert {r.outcome for r in results} == {"cancelled"}
    assert [m.epoch for m in results[0].history] == stop.done == kept
    assert saved_epochs(tmp_path, packed) == kept[-1]


def test_the_stop_poll_waits_for_an_epoch_end_within_the_grace_only() -> None:
    clock = FakeClock()
    poll = StopPoll(lambda: True, every_s=0.1, clock=clock, grace_s=1.0)
    assert poll.boundary()
    clock.now = 0.15
    assert poll.inside() is True, "the first epoch: no estimate of its end, so no waiting"
    clock.now = 0.5
    poll.boundary()  # epochs take 0.5 s
    clock.now = 0.7
    assert poll.inside() is None, "it ends at about 1.0, within the grace"
    clock.now = 1.75
    assert poll.inside() is True, "it overran its estimate past the grace: abandon it"

    slow = StopPoll(lambda: True, every_s=0.1, clock=clock, grace_s=1.0)
    slow.boundary()
    clock.now += 5.0
    slow.boundary()  # epochs take 5 s
    clock.now += 0.2
    assert slow.inside() is True, "its end is 4.8 s away, past the grace"


def test_epochs_longer_than_the_grace_are_always_checkpointed() -> None:
    cadence = CheckpointCadence(NEVER_S, long_epoch_s=1.0)
    assert not cadence.due(epoch_s=0.5)
    assert cadence.due(epoch_s=2.0), "a stop inside the next epoch abandons it: resume from this boundary"
    assert not CheckpointCadence(NEVER_S).due(epoch_s=100.0), "without a grace, the cadence alone decides"
