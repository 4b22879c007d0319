"""Checkpoints: everything a run needs to continue exactly where it stopped.

``write`` and ``read`` are the one checkpoint writer and reader (atomic, with a format number);
``save`` and ``load`` are the plain loop's checkpoint, ``_packed`` writes the pack's."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optim_engine.results import EpochMetrics
from optim_engine.spec import EarlyStopping

FILENAME = "checkpoint.pt"
_FORMAT = 1  # of the plain loop's checkpoint


@dataclass
class RunState:
    """The mutable state of a run between epochs, besides module/optimizer/scheduler states."""

    history: list[EpochMetrics]
    first_loss: float | None = None
    best_monitored: float | None = None
    epochs_without_improvement: int = 0

    def stops_early(self, metrics: EpochMetrics, early: EarlyStopping | None) -> bool:
        """Record an epoch's monitored loss; True once it has not improved for ``patience`` epochs."""
        if early is None:
            return False
        value = metrics.val_loss if early.monitor == "val_loss" else metrics.train_loss
        assert value is not None  # the spec validator guarantees a validation set for val_loss
        if self.best_monitored is None or value < self.best_monitored - early.min_delta:
            self.best_monitored, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
        return self.stopped(early)

    def stopped(self, early: EarlyStopping | None) -> bool:
        """Whether early stopping has ended the run (also true of a run restored at that epoch)."""
        return early is not None and self.epochs_without_improvement >= early.patience

    def as_dict(self) -> dict[str, Any]:
        """The state as plain values, for a checkpoint."""
        return {
            "history": [m.as_dict() for m in self.history],
            "first_loss": self.first_loss,
            "best_monitored": self.best_monitored,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunState:
        """The inverse of ``as_dict`` (extra keys are ignored)."""
        return cls(
            history=[EpochMetrics(**m) for m in values["history"]],
            first_loss=values["first_loss"],
            best_monitored=values["best_monitored"],
            epochs_without_improvement=values["epochs_without_improvement"],
        )


def write(path: Path, payload: dict[str, Any], *, version: int, may_write: Callable[[], bool] | None = None) -> bool:
    """Write ``payload`` with format number ``version`` to ``path`` atomically (temp file, then
    rename): a crash never leaves half a checkpoint.

    ``may_write`` fences the write: it is asked before anything touches the folder and again just
    before the rename, and False leaves the folder as it was (the caller no longer owns it: another
    run may be writing there, or may have finished and removed it). Returns whether it wrote.
    """
    if may_write is not None and not may_write():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": version, **payload}, tmp)
    if may_write is not None and not may_write():
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, path)
    return True


def read(path: Path, *, version: int) -> dict[str, Any] | None:
    """The payload ``write`` left at ``path``, or None when there is none.

    Raises:
        ValueError: the file has another format number than ``version``.
    """
    if not path.exists():
        return None
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != version:
        raise ValueError(f"{path} has checkpoint format {payload.get('format')}, expected {version}")
    return payload


def save(
    directory: Path,
    *,
    spec_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: RunState,
    may_write: Callable[[], bool] | None = None,
) -> bool:
    """Write the plain loop's checkpoint to ``directory`` (fenced by ``may_write``, see ``write``)."""
    payload = {
        "spec_hash": spec_hash,
        "epoch": state.history[-1].epoch if state.history else 0,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **state.as_dict(),
    }
    return write(directory / FILENAME, payload, version=_FORMAT, may_write=may_write)


def load(
    directory: Path,
    *,
    spec_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> RunState | None:
    """Restore a run from ``directory`` if it holds a checkpoint; None when it holds none."""
    path = directory / FILENAME
    payload = read(path, version=_FORMAT)
    if payload is None:
        return None
    if payload["spec_hash"] != spec_hash:
        raise ValueError(f"{path} was written by a run of a different spec; use another checkpoint_dir")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["cpu_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return RunState.from_dict(payload)
