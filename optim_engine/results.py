"""What a training run reports: one record per epoch and the run's result. Imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Outcome = Literal["completed", "early_stopped", "diverged", "cancelled", "pruned"]


def _metric(description: str, best: Literal["min", "max"] | None = None) -> Any:
    """A metric field: ``best`` ("min"/"max") makes it a summary metric, with ``final_<name>`` and
    ``best_<name>`` columns on every job (derived from its epoch rows)."""
    return field(metadata={"description": description, "best": best})


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
    train_loss: float = _metric("Sample-weighted mean of the epoch's minibatch losses.", best="min")
    val_loss: float | None = _metric("Loss on the validation set after the epoch (eval mode).", best="min")
    val_accuracy: float | None = _metric("Accuracy on the validation set (classification only).", best="max")
    lr: float = _metric("The first param group's learning rate at the epoch's first step.")
    grad_norm: float = _metric("Global L2 norm of the gradients at the epoch's last step, before clipping.")
    epoch_seconds: float = _metric("Wall time of training and evaluation.")
    samples_per_second: float = _metric("Training throughput.")

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (its fields are numbers: no deep copy needed)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def monitored_loss(self) -> float:
        """Validation loss where there is one, else training loss."""
        return self.val_loss if self.val_loss is not None else self.train_loss


@dataclass(frozen=True)
class TrainResult:
    """The outcome of ``train``: how the run ended, every epoch's metrics and where it ran.

    ``artifacts`` is what a run stores besides its epochs, JSON-ready (plain floats, no NaN or
    inf: None instead): a range test's curve and suggestions (``"kind": "lr_range_test"``), a
    2-D function's path (``"kind": "trajectory"``); None for plain training.
    """

    outcome: Outcome
    history: list[EpochMetrics]
    environment: dict[str, Any] = field(default_factory=dict)
    diverged_epoch: int | None = None
    resumed_from_epoch: int | None = None
    artifacts: dict[str, Any] | None = None

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


@dataclass(frozen=True)
class MetricDefinition:
    """One per-epoch metric, as every layer (database columns, API schemas, client frames) sees it."""

    name: str
    description: str
    best: Literal["min", "max"] | None  # summary metrics only: which direction is better


METRICS: tuple[MetricDefinition, ...] = tuple(
    MetricDefinition(f.name, f.metadata["description"], f.metadata["best"]) for f in fields(EpochMetrics) if f.metadata
)
"""Every per-epoch metric, in column order: the one definition the others derive from."""

METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
SUMMARY_METRICS: tuple[MetricDefinition, ...] = tuple(m for m in METRICS if m.best is not None)
"""The metrics each job summarizes as ``final_<name>`` and ``best_<name>``."""
