"""The plain training loop: ``train(spec)`` trains one spec, any model and optimizer, alone."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optim_engine import _checkpoint, _seeding
from optim_engine._datasets import TensorData, build_dataset
from optim_engine._models import build_loss, build_model, count_correct
from optim_engine._optim import build_optimizer, build_scheduler, steps_per_epoch
from optim_engine._policy import STOP_POLL_S, CheckpointCadence, StopPoll, after_epoch, steps_per_batch
from optim_engine.results import EpochMetrics, Outcome, TrainResult
from optim_engine.settings import get_settings
from optim_engine.spec import JobSpec

EVAL_CHUNK = 8192


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise RuntimeError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' requested but MPS is not available")
    return device


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine(device: torch.device) -> dict[str, Any]:
    """Where a run trains: versions, device and thread count (part of every run's environment)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


def run_environment(
    spec: JobSpec, device: torch.device, optimizer: torch.optim.Optimizer, bf16: bool
) -> dict[str, Any]:
    return {
        **machine(device),
        "dtype": "bfloat16-autocast" if bf16 else "float32",
        "seed": spec.seed,
        "optimizer_implementation": getattr(optimizer, "engine_implementation", "for-loop"),
        "compiled": spec.compile,
    }


def train(
    spec: JobSpec | dict[str, Any],
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 0.0,
    num_threads: int | None = None,
    stop_poll_s: float = STOP_POLL_S,
    may_checkpoint: Callable[[], bool] | None = None,
    should_prune: Callable[[EpochMetrics], bool] | None = None,
    stop_grace_s: float = 0.0,
) -> TrainResult:
    """Train one spec and report every epoch.

    Args:
        spec: a ``JobSpec`` or a plain dict that validates as one.
        on_epoch: called with each finished epoch's metrics, before that epoch is checkpointed,
            so a consumer that persists metrics never misses an epoch across a crash.
        should_stop: polled before each epoch and, inside an epoch, at most every
            ``stop_poll_s`` seconds; True ends the run as ``cancelled``. An epoch it interrupts
            is dropped (neither reported nor checkpointed): the history ends at the last whole
            epoch. It must be cheap: it may be called about every ``stop_poll_s``. A run stopped
            with ``checkpoint_dir`` leaves a checkpoint of its last whole epoch (whatever the
            cadence), so a run handed back resumes exactly where it stopped.
        checkpoint_dir: when given, the run resumes from the checkpoint found there and writes
            one after every epoch.
        checkpoint_every_s: skip an epoch's checkpoint when the last one is younger than this
            (0: every epoch). Bounds the work a crash loses without a checkpoint every few
            milliseconds for tiny models.
        num_threads: torch intra-op threads for the run (default: ``OPTIMLAB_TORCH_THREADS``).
        stop_poll_s: how often ``should_stop`` is asked inside an epoch (0: every step).
        may_checkpoint: asked right before a checkpoint is put in place; False skips it (the
            caller no longer owns ``checkpoint_dir``; see ``_checkpoint.write``).
        should_prune: asked with each finished epoch's metrics (after ``on_epoch``) but the
            last, unless the epoch ended the run (diverged, early stopped); True ends it as
            ``pruned`` with that epoch its last (a search's pruner, from the other trials' curves).
        stop_grace_s: a stop asked inside an epoch that will end within this long lets it end
            and stops at its boundary (``StopPoll``); epochs longer than this are checkpointed
            whatever ``checkpoint_every_s`` says (``CheckpointCadence``). 0: drop the epoch at once.

    Returns:
        A ``TrainResult``: outcome, per-epoch history (including epochs from before a resume),
        best epoch and environment. Divergence is an outcome, not an exception.
    """
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    threads = get_settings().torch_threads if num_threads is None else num_threads
    # fork_rng: a run neither depends on nor disturbs the caller's global RNG state.
    with _threads(threads), torch.random.fork_rng(devices=[]):
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
        poll = StopPoll(should_stop, stop_poll_s, grace_s=stop_grace_s) if should_stop is not None else None
        cadence = CheckpointCadence(checkpoint_every_s, long_epoch_s=stop_grace_s)
        return _run(spec, on_epoch, poll, directory, cadence, may_checkpoint, should_prune)


@dataclass
class Setup:
    """What a run trains with, built from its spec."""

    device: torch.device
    data: TensorData
    model: torch.nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, compiled when the spec asks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool  # the scheduler steps per optimizer step (in the step loop), else per epoch
    loss_fn: torch.nn.Module
    bf16: bool


def build_setup(spec: JobSpec) -> Setup:
    device = resolve_device(spec.device)
    data = build_dataset(spec, device)
    model = build_model(spec).to(device)
    optimizer = build_optimizer(spec, model, device)
    scheduler = build_scheduler(spec, optimizer, steps_per_epoch(data.x_train.shape[0], spec.batch_size))
    loss_fn = build_loss(spec)
    bf16 = spec.precision == "bf16" and device.type in ("cuda", "cpu")
    forward = torch.compile(model) if spec.compile else model
    return Setup(device, data, model, forward, optimizer, scheduler, steps_per_batch(spec), loss_fn, bf16)


def _run(
    spec: JobSpec,
    on_epoch: Callable[[EpochMetrics], None] | None,
    poll: StopPoll[bool] | None,
    checkpoint_dir: Path | None,
    cadence: CheckpointCadence,
    may_checkpoint: Callable[[], bool] | None,
    should_prune: Callable[[EpochMetrics], bool] | None = None,
) -> TrainResult:
    run = build_setup(spec)
    _seeding.seed_device(run.device, _seeding.dropout_seed(spec.seed))
    spec_hash = spec.spec_hash()
    state, resumed_from = _resume(checkpoint_dir, spec_hash, run.model, run.optimizer, run.scheduler)
    environment = run_environment(spec, run.device, run.optimizer, run.bf16)
    if state.stopped(spec.early_stopping):
        # Restored from the checkpoint of an epoch that had already stopped the run early.
        return TrainResult("early_stopped", state.history, environment, resumed_from_epoch=resumed_from)
    saved = len(state.history)  # the epoch the checkpoint on disk holds

    def save() -> None:
        nonlocal saved
        if checkpoint_dir is not None and saved < len(state.history):
            cadence.mark()
            parts = {"model": run.model, "optimizer": run.optimizer, "scheduler": run.scheduler}
            _checkpoint.save(checkpoint_dir, spec_hash=spec_hash, state=state, may_write=may_checkpoint, **parts)
            saved = len(state.history)

    halt = (lambda: bool(poll.inside())) if poll is not None else None
    outcome: Outcome = "completed"
    for epoch in range(len(state.history) + 1, spec.epochs + 1):
        if poll is not None and poll.boundary():
            save()  # a boundary the cadence skipped: resume here, not from an older checkpoint
            outcome = "cancelled"
            break
        done = _epoch(spec, epoch, run, state.first_loss, halt)
        if done is None:  # stopped inside the epoch, which is dropped
            outcome = "cancelled"
            break
        metrics, state.first_loss = done
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        verdict = after_epoch(spec, state, metrics, run.scheduler, run.per_step)
        if verdict is None and epoch < spec.epochs and should_prune is not None and should_prune(metrics):
            outcome = "pruned"  # final: no checkpoint to resume from is needed
            break
        # A diverged epoch is not checkpointed; an early-stopped one is, and then the run ends.
        if verdict != "diverged" and cadence.due(metrics.epoch_seconds):
            save()
        if verdict is not None:
            outcome = verdict
            break
    return TrainResult(
        outcome=outcome,
        history=state.history,
        environment=environment,
        diverged_epoch=state.history[-1].epoch if outcome == "diverged" else None,
        resumed_from_epoch=resumed_from,
    )


def _resume(
    checkpoint_dir: Path | None,
    spec_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[_checkpoint.RunState, int | None]:
    """The state a run starts from, and the epoch it resumes after (None: a fresh run)."""
    if checkpoint_dir is not None:
        restored = _checkpoint.load(
            checkpoint_dir, spec_hash=spec_hash, model=model, optimizer=optimizer, scheduler=scheduler
        )
        if restored is not None:
            return restored, len(restored.history)
    return _checkpoint.RunState(history=[]), None


Halt = Callable[[], bool] | None
"""Asked every step (and evaluation chunk): True abandons the epoch (``StopPoll`` keeps it cheap)."""


def _epoch(
    spec: JobSpec, epoch: int, run: Setup, first_loss: float | None, halt: Halt
) -> tuple[EpochMetrics, float | None] | None:
    """One epoch: its metrics and the run's first batch loss; None when ``halt`` interrupted it."""
    started = time.perf_counter()
    module = run.forward if isinstance(run.forward, torch.nn.Module) else None
    lr = float(run.optimizer.param_groups[0]["lr"])
    autocast: AbstractContextManager[Any] = (
        torch.autocast(run.device.type, dtype=torch.bfloat16) if run.bf16 else nullcontext()
    )
    if module is not None:
        module.train()
    trained = _steps(spec, epoch, run, autocast, first_loss is None, halt)
    if trained is None:
        return None
    loss_sum, first, grad_norm = trained
    n = run.data.x_train.shape[0]
    train_loss, norm = torch.stack([loss_sum / n, grad_norm.to(loss_sum.dtype)]).tolist()  # the epoch's one sync
    if first is not None:
        first_loss = float(first)
    train_seconds = time.perf_counter() - started

    val_loss = val_accuracy = None
    if run.data.has_validation:
        evaluated = _evaluate(run.forward, module, run.data, run.loss_fn, autocast, halt)
        if evaluated is None:
            return None
        val_loss, accuracy = evaluated
        val_accuracy = accuracy if run.data.info.task == "classification" else None
    seconds = time.perf_counter() - started
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        lr=lr,
        grad_norm=norm,
        epoch_seconds=seconds,
        samples_per_second=n / train_seconds if train_seconds > 0 else math.inf,
    )
    return metrics, first_loss


def _steps(
    spec: JobSpec,
    epoch: int,
    run: Setup,
    autocast: AbstractContextManager[Any],
    need_first: bool,
    halt: Halt,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None:
    """An epoch's optimizer steps: (sum of batch losses, first batch loss when ``need_first``,
    last gradient norm), all still on the device; None when ``halt`` interrupted them."""
    model, data, optimizer, loss_fn, device = run.forward, run.data, run.optimizer, run.loss_fn, run.device
    per_step_scheduler = run.scheduler if run.per_step else None  # ``after_epoch`` steps the others
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip = spec.grad_clip_norm
    # One gather per epoch, then each batch is a view: no per-batch indexing or DataLoader.
    order = _seeding.epoch_permutation(data.x_train.shape[0], spec.seed, epoch).to(device)
    x_all, y_all = data.x_train[order], data.y_train[order]
    loss_sum = torch.zeros((), device=device)
    first = None
    clipped_from: list[torch.Tensor] = []  # the last step's norm before clipping
    for start in range(0, x_all.shape[0], spec.batch_size):
        if halt is not None and halt():
            return None
        xb, yb = x_all[start : start + spec.batch_size], y_all[start : start + spec.batch_size]

        def batch_loss(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            with autocast:
                return loss_fn(model(xb), yb)  # type: ignore[no-any-return]

        loss = optimizer_step(optimizer, params, batch_loss, clip, clipped_from)
        if per_step_scheduler is not None:
            per_step_scheduler.step()
        # Accumulate on the device: no .item() (a CPU-GPU sync) inside the step loop.
        loss_sum.add_(loss.detach(), alpha=xb.shape[0])
        if first is None and need_first:
            first = loss.detach()
    return loss_sum, first, last_grad_norm(params, clipped_from, device)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    compute_loss: Callable[[], torch.Tensor],
    clip: float | None,
    clipped_from: list[torch.Tensor],
) -> torch.Tensor:
    """One optimizer step on ``compute_loss`` (which L-BFGS re-evaluates through its closure);
    returns the loss where the step started. With ``clip`` the global gradient norm of
    ``params`` is clipped to it, and its norm before clipping is left in ``clipped_from``."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        loss.backward()
        if clip is not None:
            clipped_from[:] = [torch.nn.utils.clip_grad_norm_(params, clip)]
        return loss

    if isinstance(optimizer, torch.optim.LBFGS):
        return optimizer.step(closure)  # type: ignore[arg-type,return-value]
    loss = closure()
    optimizer.step()
    return loss


def last_grad_norm(params: list[torch.Tensor], clipped_from: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The global gradient norm of the last step, before clipping (``optimizer_step``'s record)."""
    if clipped_from:
        return clipped_from[0]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@torch.no_grad()
def _evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    module: torch.nn.Module | None,
    data: TensorData,
    loss_fn: torch.nn.Module,
    autocast: AbstractContextManager[Any],
    halt: Halt = None,
) -> tuple[float, float] | None:
    if module is not None:
        module.eval()
    total = torch.zeros((), device=data.x_val.device)
    correct = torch.zeros((), device=data.x_val.device, dtype=torch.long)
    n = data.x_val.shape[0]
    try:
        for start in range(0, n, EVAL_CHUNK):
            if halt is not None and halt():
                return None
            xb, yb = data.x_val[start : start + EVAL_CHUNK], data.y_val[start : start + EVAL_CHUNK]
            with autocast:
                output = model(xb)
            total += loss_fn(output.float(), yb).float() * xb.shape[0]
            if data.info.task == "classification":
                correct += count_correct(output, yb)
    finally:
        if module is not None:
            module.train()
    loss, accuracy = torch.stack([total / n, correct.to(total.dtype) / n]).tolist()
    return loss, accuracy
