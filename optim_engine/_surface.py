"""2-D test functions as training runs: one real ``torch.optim`` step per step on a ``point``,
the function's value as the loss, epochs reported like the plain loop's, and the path kept.

Same policy as the plain loop (``_policy.after_epoch``: schedulers, early stopping on the
training loss, checkpoints and their cadence, ``should_stop``), with divergence judged at every
step so the path ends where it left: a value that is not finite or above ``max_loss_ratio``
times (|f(start)| + 1), or a coordinate beyond ``COORDINATE_LIMIT``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optim_engine import _checkpoint
from optim_engine._loop import _threads, last_grad_norm, machine, optimizer_step
from optim_engine._models import Point, build_loss, build_model
from optim_engine._optim import Scheduler, build_optimizer, build_scheduler
from optim_engine._policy import STOP_POLL_S, CheckpointCadence, StopPoll, after_epoch, steps_per_batch
from optim_engine.results import EpochMetrics, Outcome, TrainResult
from optim_engine.settings import get_settings
from optim_engine.spec import JobSpec

COORDINATE_LIMIT = 1e6
"""A coordinate beyond this ends the run as diverged (a saddle's escape is unbounded below)."""
CHECKPOINT = "trajectory.pt"
STORED_POINTS = 5001
"""The most points of a path a job stores (see ``_Path.artifacts``)."""
_FORMAT = 1


@dataclass
class _Path:
    """The points a run visited, its start first, with the function's value at each."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def add(self, xy: list[float], value: float) -> None:
        self.x.append(xy[0])
        self.y.append(xy[1])
        self.value.append(value)

    def keep(self, points: int) -> None:
        """Drop every point after the first ``points`` (an interrupted epoch's)."""
        del self.x[points:], self.y[points:], self.value[points:]

    def artifacts(self, function: str) -> dict[str, Any]:
        """The path as a job stores it: at most ``STORED_POINTS`` evenly spaced points, the start
        and the last point always among them (a plot needs no more, a database row should not
        hold 200,000), with ``stride`` saying how many steps lie between two stored points."""
        stride = max(1, math.ceil((len(self.x) - 1) / (STORED_POINTS - 1)))
        kept = list(range(0, len(self.x), stride))
        if kept and kept[-1] != len(self.x) - 1:
            kept.append(len(self.x) - 1)
        return {
            "kind": "trajectory",
            "function": function,
            "stride": stride,
            **{
                name: [values[i] if math.isfinite(values[i]) else None for i in kept]
                for name, values in self.as_dict().items()
            },
        }

    def as_dict(self) -> dict[str, list[float]]:
        return {"x": self.x, "y": self.y, "value": self.value}


@dataclass
class _Run:
    """What a 2-D run steps: the point, its function, its optimizer and scheduler."""

    point: Point
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    per_step: bool
    steps: int  # per epoch
    limit: float | None = None  # the value above which a step diverged; None: divergence disabled

    def value(self) -> float:
        with torch.no_grad():
            return float(self.loss_fn(self.point()))


def train_surface(
    spec: JobSpec | dict[str, Any],
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 0.0,
    num_threads: int | None = None,
    stop_poll_s: float = STOP_POLL_S,
    may_checkpoint: Callable[[], bool] | None = None,
) -> TrainResult:
    """Descend the spec's 2-D function from its point's start; the arguments are ``train``'s.

    Returns a ``TrainResult`` whose epochs are ``steps_per_epoch`` steps each (``train_loss``: the
    mean value at the points those steps reached) and whose ``artifacts`` are the path: ``x``,
    ``y`` and ``value`` from the start on (None where not finite). A checkpoint holds the path
    too, so a resumed run's path is whole.
    """
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    threads = get_settings().torch_threads if num_threads is None else num_threads
    with _threads(threads), torch.random.fork_rng(devices=[]):
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
        poll = StopPoll(should_stop, stop_poll_s) if should_stop is not None else None
        return _train(spec, on_epoch, poll, directory, CheckpointCadence(checkpoint_every_s), may_checkpoint)


def _setup(spec: JobSpec) -> _Run:
    point = build_model(spec)
    assert isinstance(point, Point)  # validation pairs a 2-D function with the point model
    optimizer = build_optimizer(spec, point, "cpu")
    steps = spec.dataset.params.steps_per_epoch  # type: ignore[union-attr]
    scheduler = build_scheduler(spec, optimizer, steps)
    return _Run(point, build_loss(spec), optimizer, scheduler, steps_per_batch(spec), steps)


def _train(
    spec: JobSpec,
    on_epoch: Callable[[EpochMetrics], None] | None,
    poll: StopPoll[bool] | None,
    checkpoint_dir: Path | None,
    cadence: CheckpointCadence,
    may_checkpoint: Callable[[], bool] | None,
) -> TrainResult:
    run, spec_hash = _setup(spec), spec.spec_hash()
    restored = _load(checkpoint_dir, spec_hash, run) if checkpoint_dir is not None else None
    state, path = restored or (_checkpoint.RunState(history=[]), _Path())
    resumed_from = len(state.history) if restored is not None else None
    if restored is None:
        path.add(run.point.xy.detach().tolist(), run.value())
    _set_limit(spec, run, state, path.value[0])
    environment = {
        **machine(torch.device("cpu")),
        "dtype": "float64",
        "seed": spec.seed,
        "optimizer_implementation": getattr(run.optimizer, "engine_implementation", "for-loop"),
        "compiled": False,
    }
    if state.stopped(spec.early_stopping):  # restored at the epoch that stopped it early
        artifacts = path.artifacts(spec.dataset.name)
        return TrainResult("early_stopped", state.history, environment, None, resumed_from, artifacts)
    halt = (lambda: poll.due() and poll.ask()) if poll is not None else None
    outcome: Outcome = "completed"
    for epoch in range(len(state.history) + 1, spec.epochs + 1):
        done = None if poll is not None and poll.ask() else _epoch(epoch, run, path, spec.grad_clip_norm, halt)
        if done is None:  # stopped before or inside the epoch: its steps are dropped
            path.keep(1 + run.steps * len(state.history))
            outcome = "cancelled"
            break
        metrics, stepped_over = done
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        verdict = "diverged" if stepped_over else after_epoch(spec, state, metrics, run.scheduler, run.per_step)
        if verdict != "diverged" and checkpoint_dir is not None and cadence.due():
            cadence.mark()
            _save(checkpoint_dir, spec_hash, run, state, path, may_checkpoint)
        if verdict is not None:
            outcome = verdict
            break
    diverged_epoch = state.history[-1].epoch if outcome == "diverged" else None
    artifacts = path.artifacts(spec.dataset.name)
    return TrainResult(outcome, state.history, environment, diverged_epoch, resumed_from, artifacts)


def _set_limit(spec: JobSpec, run: _Run, state: _checkpoint.RunState, start_value: float) -> None:
    """The divergence limit: ``max_loss_ratio`` x (|f(start)| + 1), the + 1 so that a start at
    a minimum (f = 0) does not call every step diverged. ``state.first_loss`` is set to the same
    base, so ``after_epoch``'s rule (train_loss > ratio x first_loss) draws the same line."""
    state.first_loss = abs(start_value) + 1 if math.isfinite(start_value) else None
    if spec.divergence.enabled and state.first_loss is not None:
        run.limit = spec.divergence.max_loss_ratio * state.first_loss


def _epoch(
    epoch: int, run: _Run, path: _Path, clip: float | None, halt: Callable[[], bool] | None
) -> tuple[EpochMetrics, bool] | None:
    """One epoch's steps: its metrics and whether a step diverged (which ends the epoch there);
    None when ``halt`` interrupted it."""
    started = time.perf_counter()
    lr = float(run.optimizer.param_groups[0]["lr"])
    params: list[torch.Tensor] = list(run.point.parameters())
    clipped_from: list[torch.Tensor] = []
    reached: list[float] = []
    diverged = False
    for _ in range(run.steps):
        if halt is not None and halt():
            return None
        optimizer_step(run.optimizer, params, lambda: run.loss_fn(run.point()), clip, clipped_from)
        if run.per_step and run.scheduler is not None:
            run.scheduler.step()  # type: ignore[call-arg]
        xy, value = run.point.xy.detach().tolist(), run.value()
        path.add(xy, value)
        reached.append(value)
        if run.limit is not None and _diverged(xy, value, run.limit):
            diverged = True
            break
    seconds = time.perf_counter() - started
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=sum(reached) / len(reached),
        val_loss=None,
        val_accuracy=None,
        lr=lr,
        grad_norm=float(last_grad_norm(params, clipped_from, torch.device("cpu"))),
        epoch_seconds=seconds,
        samples_per_second=len(reached) / seconds if seconds > 0 else math.inf,
    )
    return metrics, diverged


def _diverged(xy: list[float], value: float, limit: float) -> bool:
    if not math.isfinite(value) or value > limit:
        return True
    return not all(math.isfinite(c) and abs(c) <= COORDINATE_LIMIT for c in xy)


def _save(
    directory: Path,
    spec_hash: str,
    run: _Run,
    state: _checkpoint.RunState,
    path: _Path,
    may_write: Callable[[], bool] | None,
) -> None:
    payload = {
        "spec_hash": spec_hash,
        "point": run.point.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "path": path.as_dict(),
        **state.as_dict(),
    }
    _checkpoint.write(directory / CHECKPOINT, payload, version=_FORMAT, may_write=may_write)


def _load(directory: Path, spec_hash: str, run: _Run) -> tuple[_checkpoint.RunState, _Path] | None:
    """Restore a run (point, optimizer, scheduler, epochs, path) from ``directory``'s checkpoint."""
    payload = _checkpoint.read(directory / CHECKPOINT, version=_FORMAT)
    if payload is None:
        return None
    if payload["spec_hash"] != spec_hash:
        raise ValueError(
            f"{directory / CHECKPOINT} was written by a run of a different spec; use another checkpoint_dir"
        )
    run.point.load_state_dict(payload["point"])
    run.optimizer.load_state_dict(payload["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(payload["scheduler"])
    return _checkpoint.RunState.from_dict(payload), _Path(**payload["path"])
