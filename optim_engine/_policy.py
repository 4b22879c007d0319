"""What happens after a trial's epoch, in both training loops: divergence, the epoch's scheduler
step, early stopping, when the next checkpoint is due, and when to ask ``should_stop`` inside an
epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from torch.optim.lr_scheduler import ReduceLROnPlateau

from optim_engine._checkpoint import RunState
from optim_engine._optim import Scheduler
from optim_engine.results import EpochMetrics
from optim_engine.spec import JobSpec

Verdict = Literal["diverged", "early_stopped"] | None
"""``after_epoch``'s answer: how the trial ends, or None when it goes on."""

STOP_POLL_S = 1.0
"""How often, in seconds of wall time, the loops ask ``should_stop`` inside an epoch by default."""

T = TypeVar("T")


def steps_per_batch(spec: JobSpec) -> bool:
    """Whether the spec's scheduler steps after every optimizer step (else once per epoch)."""
    return bool(spec.schedulers) and spec.schedulers[0].interval == "step"


def after_epoch(
    spec: JobSpec, state: RunState, metrics: EpochMetrics, scheduler: Scheduler | None, per_step: bool
) -> Verdict:
    """Decide how a trial goes on after the epoch ``metrics``, which ``state.history`` already holds.

    In this order, the one both loops keep: a diverged trial ends at once (its scheduler does not
    step and the epoch is not checkpointed); otherwise a per-epoch scheduler steps
    (ReduceLROnPlateau on the monitored loss) and early stopping records the epoch. The caller
    checkpoints when that is due and only then ends an early-stopped trial, so a resumed run
    finds it stopped.

    Args:
        spec: the trial's spec (divergence and early-stopping settings).
        state: the trial's run state; its early-stopping counters are updated.
        metrics: the epoch's metrics.
        scheduler: the trial's scheduler, or None.
        per_step: whether ``scheduler`` steps per optimizer step (then it is not stepped here).
    """
    if spec.divergence.enabled and diverged(metrics, state.first_loss, spec.divergence.max_loss_ratio):
        return "diverged"
    if scheduler is not None and not per_step:
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(metrics.monitored_loss)
        else:
            scheduler.step()
    return "early_stopped" if state.stops_early(metrics, spec.early_stopping) else None


def diverged(metrics: EpochMetrics, first_loss: float | None, max_ratio: float) -> bool:
    """A non-finite loss, or a training loss above ``max_ratio`` times the run's first batch loss."""
    losses = [metrics.train_loss] + ([metrics.val_loss] if metrics.val_loss is not None else [])
    if not all(math.isfinite(loss) for loss in losses):
        return True
    return first_loss is not None and first_loss > 0 and metrics.train_loss > max_ratio * first_loss


class CheckpointCadence:
    """When a loop writes its next checkpoint: after an epoch, unless the last one (or the start of
    the run) is younger than ``every_s``. That bounds the work a crash loses without writing a
    checkpoint every few milliseconds for tiny models.

    With ``long_epoch_s`` (a run's stop grace, ``StopPoll``), an epoch longer than that is always
    checkpointed: a stop inside the next one (as long) abandons it rather than wait, and the run
    must then resume from this boundary, not from an older checkpoint."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic, long_epoch_s: float = 0.0) -> None:
        self.every_s = every_s
        self.long_epoch_s = long_epoch_s
        self._clock = clock
        self._last = clock()

    def due(self, epoch_s: float = 0.0) -> bool:
        """Whether a checkpoint is due now, after an epoch of ``epoch_s`` seconds."""
        if self.long_epoch_s > 0 and epoch_s > self.long_epoch_s:
            return True
        return self._clock() - self._last >= self.every_s

    def mark(self) -> None:
        """Count a checkpoint as written now."""
        self._last = self._clock()


class StopPoll(Generic[T]):
    """When a loop asks ``should_stop`` from inside an epoch: at most every ``every_s`` seconds, so
    a run stops within about ``every_s`` however long its epochs are.

    ``due`` is called every step and costs a counter decrement: the clock is read only every
    ``stride`` steps, a stride fitted to the measured step time so that it is read about eight
    times per ``every_s`` (at most doubling per read, so one fast read cannot overshoot, and at
    most ``MAX_STRIDE``). A stop is seen at most ``every_s`` plus an eighth of it late.

    ``grace_s`` makes the epoch's end a safe point worth waiting for: a stop asked inside an epoch
    that will end within ``grace_s`` of the first ask that wanted it (judged from the last epoch's
    length, boundary to boundary) lets the epoch end, and the loop stops at that boundary with
    its whole epoch (reported and checkpointed), instead of dropping the work done since the last
    checkpoint. An epoch that would take longer, the run's first, or one that overruns the
    estimate past the grace is abandoned as without it (``grace_s`` 0: always).
    """

    MAX_STRIDE = 1024

    def __init__(
        self,
        should_stop: Callable[[], T],
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = 0.0,
    ) -> None:
        self.every_s = every_s
        self.grace_s = grace_s
        self._should_stop = should_stop
        self._clock = clock
        self._stride = self._left = 1
        self._read_at = self._asked_at = clock()
        self._epoch_started: float | None = None
        self._epoch_s: float | None = None  # the last epoch's length, boundary to boundary
        self._deadline: float | None = None  # set by the first ask inside an epoch that wanted a stop

    def ask(self) -> T:
        """Ask ``should_stop`` now (at an epoch boundary, or when ``due``)."""
        self._asked_at = self._clock()
        return self._should_stop()

    def boundary(self) -> T:
        """Ask ``should_stop`` at an epoch boundary, which starts the next epoch's clock."""
        answer = self.ask()
        now = self._asked_at
        if self._epoch_started is not None:
            self._epoch_s = now - self._epoch_started
        self._epoch_started, self._deadline = now, None
        return answer

    def inside(self) -> T | None:
        """Called once per step (or evaluation chunk) inside an epoch: ``should_stop``'s answer
        when it is due, wants a stop, and the epoch cannot end within the grace; else None (go on)."""
        if not self.due():
            return None
        answer = self.ask()
        if not answer:
            return None
        now = self._asked_at
        if self._deadline is None:
            self._deadline = now + self.grace_s
        expected_end = (
            self._epoch_started + self._epoch_s
            if self._epoch_started is not None and self._epoch_s is not None
            else math.inf
        )
        if self.grace_s > 0 and now <= self._deadline and expected_end <= self._deadline:
            return None  # the epoch ends soon: stop at its boundary (``boundary`` asks again)
        return answer

    def due(self) -> bool:
        """Whether the loop should ``ask`` now; called once per step (or per evaluation chunk)."""
        self._left -= 1
        if self._left > 0:
            return False
        now = self._clock()
        per_step = (now - self._read_at) / self._stride
        fit = int(self.every_s / 8 / per_step) if per_step > 0 else self.MAX_STRIDE
        self._stride = max(1, min(fit, 2 * self._stride, self.MAX_STRIDE))
        self._left, self._read_at = self._stride, now
        return now - self._asked_at >= self.every_s
