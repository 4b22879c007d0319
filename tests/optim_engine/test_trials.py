"""``train_trials``: the one entry point that picks the loop, and the run control both loops share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from optim_engine import EpochMetrics, TrainResult, train, train_trials
from tests.conftest import digits_spec, seed_spec
from tests.optim_engine.test_packed import PACKED_TRIALS, _max_abs, _spec

LOOPS = pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
CHECKPOINT = {False: "checkpoint.pt", True: "pack.pt"}


def _loop(result: TrainResult) -> str:
    return "packed" if result.environment["optimizer_implementation"] == "packed" else "plain"


def test_one_spec_trains_plain_and_several_packed() -> None:
    specs = [seed_spec({"name": "sgd", "lr": lr}, seed=i) for i, lr in enumerate([0.01, 0.02])]
    assert [_loop(r) for r in train_trials(specs[:1])] == ["plain"]
    assert [_loop(r) for r in train_trials(specs)] == ["packed", "packed"]
    assert [_loop(r) for r in train_trials(specs[:1], packed=True)] == ["packed"]
    assert [_loop(r) for r in train_trials(specs[:1], packed=False)] == ["plain"]


def test_plain_takes_exactly_one_spec() -> None:
    specs = [seed_spec({"name": "sgd", "lr": lr}) for lr in (0.01, 0.02)]
    with pytest.raises(ValueError, match="exactly one spec"):
        train_trials(specs, packed=False)
    with pytest.raises(ValueError, match="exactly one spec"):
        train_trials([], packed=False)
    with pytest.raises(ValueError, match="keys"):
        train_trials(specs[:1], keys=["a", "b"], packed=False)


def test_more_than_one_unpackable_spec_is_refused() -> None:
    specs = [digits_spec({"name": "nadam"}), digits_spec({"name": "sgd"})]
    with pytest.raises(ValueError, match=r"optimizer\.name: nadam"):
        train_trials(specs)


def test_a_pack_of_one_equals_train() -> None:
    for seed, (optimizer, scheduler) in enumerate(PACKED_TRIALS[2:5]):
        spec = _spec(optimizer, scheduler, seed)
        (packed,) = train_trials([spec], packed=True)
        alone = train(spec)
        assert packed.environment["pack_size"] == 1
        assert (packed.outcome, packed.epochs_done) == (alone.outcome, alone.epochs_done)
        assert _max_abs(packed.history, alone.history) <= 1e-5


@LOOPS
def test_callbacks_speak_of_trial_positions(packed: bool) -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.01}, epochs=6)
    epochs: list[tuple[int, int]] = []
    finished: list[tuple[int, TrainResult]] = []
    polls: list[int] = []

    def should_stop() -> set[int]:
        polls.append(len(epochs))
        return {0} if len(epochs) >= 2 else {7}  # a position that is not a trial changes nothing

    def on_epoch(i: int, metrics: EpochMetrics) -> None:
        epochs.append((i, metrics.epoch))

    (result,) = train_trials(
        [spec],
        packed=packed,
        on_epoch=on_epoch,
        on_finish=lambda i, r: finished.append((i, r)),
        should_stop=should_stop,
    )
    assert _loop(result) == ("packed" if packed else "plain")
    assert epochs == [(0, 1), (0, 2)]
    assert polls == [0, 1, 2]  # before each epoch
    assert (result.outcome, result.epochs_done) == ("cancelled", 2)
    assert finished == [(0, result)]  # once, with the result returned


@LOOPS
def test_every_outcome_is_reported_once(packed: bool) -> None:
    specs = {
        "completed": seed_spec({"name": "sgd", "lr": 0.01}, epochs=3),
        "diverged": seed_spec({"name": "sgd", "lr": 10.0}, epochs=20),
        "early_stopped": seed_spec(
            {"name": "sgd", "lr": 1e-9}, epochs=50, early_stopping={"patience": 3, "min_delta": 0.1}
        ),
    }
    for outcome, spec in specs.items():
        finished: list[tuple[int, str]] = []
        (result,) = train_trials([spec], packed=packed, on_finish=lambda i, r, to=finished: to.append((i, r.outcome)))
        assert result.outcome == outcome
        assert finished == [(0, outcome)]
        assert result.diverged_epoch == (result.epochs_done if outcome == "diverged" else None)
    assert train_trials([specs["early_stopped"]], packed=packed)[0].epochs_done == 4


def _checkpoint(path: Path) -> dict[str, Any]:
    """The (only) trial's entry of a checkpoint: the plain loop's payload or the pack's trial."""
    payload: dict[str, Any] = torch.load(path, weights_only=True)
    return payload["trials"]["0"] if "trials" in payload else payload


@LOOPS
def test_an_early_stopped_or_diverged_run_resumes_as_it_ended(packed: bool, tmp_path: Path) -> None:
    runs = {
        "early_stopped": seed_spec(
            {"name": "sgd", "lr": 1e-9}, epochs=50, early_stopping={"patience": 2, "min_delta": 0.1}
        ),
        "diverged": seed_spec({"name": "sgd", "lr": 0.85}, epochs=10),  # at epoch 3
    }
    for outcome, spec in runs.items():
        directory = tmp_path / outcome
        (result,) = train_trials([spec], packed=packed, checkpoint_dir=directory)
        assert result.outcome == outcome
        assert result.epochs_done > 1
        saved = _checkpoint(directory / CHECKPOINT[packed])
        if outcome == "early_stopped" or packed:
            # The epoch that stops a run early is checkpointed, so a resume finds it stopped; a
            # pack also checkpoints a diverged trial, as ended, since its other trials go on.
            assert len(saved["history"]) == result.epochs_done
        else:
            assert len(saved["history"]) == result.epochs_done - 1  # a diverged epoch is not saved
        (again,) = train_trials([spec], packed=packed, checkpoint_dir=directory)
        assert (again.outcome, again.epochs_done, again.diverged_epoch) == (
            result.outcome,
            result.epochs_done,
            result.diverged_epoch,
        )


@LOOPS
def test_checkpoint_every_s_skips_young_checkpoints(packed: bool, tmp_path: Path) -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.01}, epochs=3)
    train_trials([spec], packed=packed, checkpoint_dir=tmp_path / "every", checkpoint_every_s=0)
    train_trials([spec], packed=packed, checkpoint_dir=tmp_path / "hourly", checkpoint_every_s=3600)
    assert len(_checkpoint(tmp_path / "every" / CHECKPOINT[packed])["history"]) == 3
    assert not (tmp_path / "hourly").exists()


@LOOPS
def test_resume_through_train_trials(packed: bool, tmp_path: Path) -> None:
    spec: dict[str, Any] = _spec({"name": "adam", "lr": 1e-3}, {"name": "step_lr", "params": {"step_size": 2}}, 3)
    uninterrupted = train_trials([spec], packed=packed)[0]
    polls = [0]

    def stop_after_three() -> set[int]:
        polls[0] += 1
        return {0} if polls[0] > 3 else set()

    (first,) = train_trials([spec], packed=packed, should_stop=stop_after_three, checkpoint_dir=tmp_path)
    assert (first.outcome, first.epochs_done) == ("cancelled", 3)
    (resumed,) = train_trials([spec], packed=packed, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 3
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in uninterrupted.history]
    assert [m.lr for m in resumed.history] == [m.lr for m in uninterrupted.history]
