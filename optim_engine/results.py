"""What a training run reports: one record per epoch and the run's result. Imports no torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["completed", "early_stopped", "diverged", "cancelled"]


@dataclass(frozen=True, slots=True)
class EpochMetrics:
    """Metrics of one epoch (1-based), as DESIGN.md defines them.

    ``train_loss`` is the sample-weighted mean of the epoch's minibatch losses; ``val_loss`` and
    ``val_accuracy`` are measured after the epoch in eval mode (None without a validation set;
    accuracy only for classification); ``lr`` is the first param group's lr at the epoch's first
    step; ``grad_norm`` is the global L2 norm of the gradients at the epoch's last step (before
    clipping); ``epoch_seconds`` covers training and evaluation, ``samples_per_second`` the
    training part. A diverged epoch keeps its NaN/inf values.
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    grad_norm: float
    epoch_seconds: float
    samples_per_second: float

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict."""
        return asdict(self)

    @property
    def monitored_loss(self) -> float:
        """Validation loss where there is one, else training loss."""
        return self.val_loss if self.val_loss is not None else self.train_loss


@dataclass(frozen=True)
class TrainResult:
    """The outcome of ``train``: how the run ended, every epoch's metrics and where it ran."""

    outcome: Outcome
    history: list[EpochMetrics]
    environment: dict[str, Any] = field(default_factory=dict)
    diverged_epoch: int | None = None
    resumed_from_epoch: int | None = None

    @property
    def epochs_done(self) -> int:
        """Number of epochs with metrics."""
        return len(self.history)

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the lowest finite monitored loss (validation loss when there is one)."""
        finite = [m for m in self.history if math.isfinite(m.monitored_loss)]
        return min(finite, key=lambda m: m.monitored_loss).epoch if finite else None

    @property
    def best(self) -> EpochMetrics | None:
        """Metrics of the best epoch."""
        best = self.best_epoch
        return next((m for m in self.history if m.epoch == best), None)

    @property
    def final(self) -> EpochMetrics | None:
        """Metrics of the last epoch."""
        return self.history[-1] if self.history else None
