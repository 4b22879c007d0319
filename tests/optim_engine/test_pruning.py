"""Pruning inside the loops: ``should_prune`` ends a trial as ``pruned`` after an epoch, keeping
that epoch; in a pack the pruned trial leaves and the others do not change by a bit."""

from __future__ import annotations

from typing import Any

import pytest

from optim_engine import EpochMetrics, train, train_packed, train_trials
from tests.conftest import digits_spec

COMPARED = ("train_loss", "val_loss", "val_accuracy", "lr", "grad_norm")
MLP = {"name": "mlp", "params": {"depth": 1, "width": 32}}
OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "sgd", "lr": 0.1},
    {"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9}},
    {"name": "adam", "lr": 1e-3},
    {"name": "rmsprop", "lr": 1e-3},
]


def _specs(epochs: int = 5) -> list[dict[str, Any]]:
    return [digits_spec(o, model=MLP, epochs=epochs, seed=i) for i, o in enumerate(OPTIMIZERS)]


def _curve(history: list[EpochMetrics]) -> list[tuple[Any, ...]]:
    return [tuple(getattr(m, name) for name in ("epoch", *COMPARED)) for m in history]


def test_a_pruned_run_ends_at_the_epoch_that_pruned_it_and_the_last_epoch_is_never_asked() -> None:
    asked: list[int] = []

    def prune(metrics: EpochMetrics) -> bool:
        asked.append(metrics.epoch)
        return metrics.epoch == 2

    result = train(_specs()[0], should_prune=prune)
    assert result.outcome == "pruned"
    assert [m.epoch for m in result.history] == [1, 2]
    assert asked == [1, 2]
    never = train(_specs(3)[0], should_prune=lambda m: asked.append(m.epoch) or False)
    assert never.outcome == "completed"
    assert asked[2:] == [1, 2]  # epoch 3 of 3 is the end anyway: not asked


def test_divergence_wins_over_pruning() -> None:
    spec = digits_spec({"name": "sgd", "lr": 1e4}, model=MLP, epochs=5)
    result = train(spec, should_prune=lambda m: True)
    assert result.outcome == "diverged"


@pytest.mark.parametrize("position", [0, 1, 3])
def test_a_pruned_trial_leaves_its_pack_and_the_others_are_bit_identical(position: int) -> None:
    """Pruned at epoch 2 in a pack of four: the other three equal, to the bit, the pack of
    three trained without it."""
    specs = _specs()
    results = train_packed(specs, should_prune=lambda i, m: i == position and m.epoch == 2)
    assert results[position].outcome == "pruned"
    assert [m.epoch for m in results[position].history] == [1, 2]
    others = [s for i, s in enumerate(specs) if i != position]
    without = train_packed(others)
    kept = [r for i, r in enumerate(results) if i != position]
    assert [r.outcome for r in kept] == ["completed"] * 3
    for mine, theirs in zip(kept, without, strict=True):
        assert _curve(mine.history) == _curve(theirs.history)


def test_train_trials_prunes_by_position_in_both_loops() -> None:
    specs = _specs(4)
    alone = train_trials(specs[:1], packed=False, should_prune=lambda i, m: i == 0 and m.epoch == 1)
    assert [(r.outcome, len(r.history)) for r in alone] == [("pruned", 1)]
    packed = train_trials(specs, should_prune=lambda i, m: i % 2 == 1 and m.epoch == 3)
    assert [(r.outcome, len(r.history)) for r in packed] == [
        ("completed", 4),
        ("pruned", 3),
        ("completed", 4),
        ("pruned", 3),
    ]
