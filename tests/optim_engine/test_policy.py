"""The after-epoch policy both training loops share: divergence, scheduler steps, early stopping
and the checkpoint cadence."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from optim_engine import EpochMetrics, JobSpec, build_optimizer, build_scheduler
from optim_engine._checkpoint import RunState
from optim_engine._policy import CheckpointCadence, after_epoch, diverged, steps_per_batch
from tests.conftest import seed_spec

SGD = {"name": "sgd", "lr": 0.1}


def _metrics(epoch: int, train_loss: float, val_loss: float | None = None) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=None,
        lr=0.1,
        grad_norm=1.0,
        epoch_seconds=0.01,
        samples_per_second=1e4,
    )


def _spec(scheduler: Any = None, **overrides: Any) -> JobSpec:
    return JobSpec.model_validate(seed_spec(SGD, scheduler, epochs=10, **overrides))


def _scheduled(spec: JobSpec) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = build_optimizer(spec, [torch.zeros(1, requires_grad=True)])
    optimizer._opt_called = True  # type: ignore[attr-defined]  # stepped without a real step
    return optimizer, build_scheduler(spec, optimizer, steps_per_epoch=4)


def _epochs(spec: JobSpec, losses: list[float], scheduler: Any = None, per_step: bool = False) -> list[Any]:
    """The verdict after each epoch of a run with these training losses."""
    state = RunState(history=[], first_loss=losses[0])
    verdicts = []
    for epoch, loss in enumerate(losses, start=1):
        metrics = _metrics(epoch, loss)
        state.history.append(metrics)
        verdicts.append(after_epoch(spec, state, metrics, scheduler, per_step))
    return verdicts


@pytest.mark.parametrize(
    ("train_loss", "val_loss", "expected"),
    [
        (1.0, None, False),
        (math.nan, None, True),
        (math.inf, None, True),
        (1.0, math.nan, True),
        (1.0, -math.inf, True),
        (1000.0, 1.0, False),  # exactly max_ratio times the first loss: not yet
        (1000.5, 1.0, True),
    ],
)
def test_divergence_is_a_non_finite_loss_or_a_loss_ratio(
    train_loss: float, val_loss: float | None, expected: bool
) -> None:
    assert diverged(_metrics(1, train_loss, val_loss), first_loss=1.0, max_ratio=1e3) is expected


def test_no_ratio_without_a_positive_first_loss() -> None:
    assert not diverged(_metrics(1, 1e9), first_loss=None, max_ratio=10.0)
    assert not diverged(_metrics(1, 1e9), first_loss=0.0, max_ratio=10.0)


def test_a_diverged_epoch_ends_the_trial_before_its_scheduler_and_early_stopping() -> None:
    spec = _spec({"name": "step_lr", "params": {"step_size": 1, "gamma": 0.5}}, early_stopping={"patience": 1})
    optimizer, scheduler = _scheduled(spec)
    state = RunState(history=[], first_loss=1.0)
    metrics = _metrics(1, math.nan)
    state.history.append(metrics)
    assert after_epoch(spec, state, metrics, scheduler, per_step=False) == "diverged"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # not stepped
    assert (state.best_monitored, state.epochs_without_improvement) == (None, 0)


def test_divergence_can_be_switched_off() -> None:
    spec = _spec(divergence={"enabled": False})
    assert _epochs(spec, [1.0, math.nan, 1e9]) == [None, None, None]


def test_early_stopping_after_patience_epochs_without_improvement() -> None:
    spec = _spec(early_stopping={"patience": 2, "min_delta": 0.1, "monitor": "train_loss"})
    # 0.95 improves on 1.0 by less than min_delta: no improvement; 0.8 is one.
    assert _epochs(spec, [1.0, 0.95, 0.8, 0.75, 0.72]) == [None, None, None, None, "early_stopped"]
    assert _epochs(_spec(), [1.0] * 5) == [None] * 5  # no early stopping without the setting


def test_early_stopping_monitors_the_validation_loss() -> None:
    spec = _spec(early_stopping={"patience": 1})
    state = RunState(history=[], first_loss=1.0)
    verdicts = []
    for epoch, (train_loss, val_loss) in enumerate([(1.0, 1.0), (0.5, 1.5), (0.2, 2.0)], start=1):
        metrics = _metrics(epoch, train_loss, val_loss)
        state.history.append(metrics)
        verdicts.append(after_epoch(spec, state, metrics, None, per_step=False))
    assert verdicts == [None, "early_stopped", "early_stopped"]


def test_an_epoch_scheduler_steps_once_per_epoch_and_a_step_scheduler_not_at_all() -> None:
    spec = _spec({"name": "step_lr", "params": {"step_size": 1, "gamma": 0.5}})
    optimizer, scheduler = _scheduled(spec)
    _epochs(spec, [1.0, 0.9, 0.8], scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    _epochs(spec, [1.0, 0.9, 0.8], scheduler, per_step=True)  # the step loop steps it
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_plateau_gets_the_monitored_loss() -> None:
    spec = _spec({"name": "reduce_lr_on_plateau", "params": {"patience": 0, "factor": 0.5}})
    optimizer, scheduler = _scheduled(spec)
    state = RunState(history=[], first_loss=1.0)
    # The training loss falls, the validation loss (the monitored one) rises: the lr is cut.
    for epoch, (train_loss, val_loss) in enumerate([(1.0, 1.0), (0.5, 1.5), (0.2, 2.0)], start=1):
        metrics = _metrics(epoch, train_loss, val_loss)
        state.history.append(metrics)
        after_epoch(spec, state, metrics, scheduler, per_step=False)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


def test_steps_per_batch_follows_the_scheduler_interval() -> None:
    assert not steps_per_batch(_spec())
    assert not steps_per_batch(_spec({"name": "step_lr", "params": {"step_size": 2}}))
    assert steps_per_batch(_spec({"name": "one_cycle_lr", "params": {"max_lr": 0.1}, "interval": "step"}))


def test_checkpoint_cadence() -> None:
    now = [100.0]
    cadence = CheckpointCadence(5.0, clock=lambda: now[0])
    assert not cadence.due()  # the start of the run counts as the last checkpoint
    now[0] = 105.0
    assert cadence.due()
    cadence.mark()
    now[0] = 109.0
    assert not cadence.due()
    now[0] = 110.0
    assert cadence.due()
    assert CheckpointCadence(0.0).due()  # 0: after every epoch
