"""The LR range test (Smith 2015, 2017; fastai's ``lr_find``): train with an lr that grows
exponentially step by step, record the loss, and suggest an lr from the curve.

The model, data, loss and optimizer are the plain loop's (same seed, same initial weights, same
batch order), so a suggestion is about the run a sweep will then train. The test keeps no
checkpoint: it takes a few hundred steps at most, and a resumed one starts again.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optim_engine import _seeding
from optim_engine._loop import Setup, _threads, build_setup, optimizer_step, run_environment
from optim_engine._policy import STOP_POLL_S, StopPoll
from optim_engine.results import EpochMetrics, TrainResult
from optim_engine.settings import get_settings
from optim_engine.spec import JobSpec, LRRangeTest

SKIP_END = 5
"""fastai leaves the last 5 points out of its suggestions: the smoothed loss lags the blow-up."""
MIN_POINTS = 3
"""Fewer points than this left for the suggestions and each is None (no slope, no valley)."""


def lr_schedule(test: LRRangeTest) -> list[float]:
    """The lr of each step: ``start_lr * (end_lr / start_lr) ** (i / (steps - 1))``, exactly
    ``start_lr`` first and ``end_lr`` last (a one-step test is ``start_lr`` alone)."""
    if test.steps == 1:
        return [test.start_lr]
    ratio = test.end_lr / test.start_lr
    return [test.start_lr * ratio ** (i / (test.steps - 1)) for i in range(test.steps)]


class Smoother:
    """fastai's bias-corrected moving average of the loss: ``avg = beta avg + (1 - beta) loss``,
    reported as ``avg / (1 - beta ** (i + 1))`` so the first values are not pulled to 0."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self._avg = 0.0
        self._count = 0

    def add(self, loss: float) -> float:
        """Take the next loss; return the smoothed loss up to it."""
        self._count += 1
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        return self._avg / (1 - self.beta**self._count)


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    """Every prefix's smoothed loss (``Smoother``), for a whole curve at once."""
    smoother = Smoother(beta)
    return [smoother.add(loss) for loss in losses]


def valley_index(losses: Sequence[float]) -> int | None:
    """fastai's ``valley``: the point about halfway along the longest valley of the curve.

    The valley ends at the first point that closes a longest strictly decreasing subsequence
    (not necessarily contiguous) and starts as many points before it as that subsequence has;
    fastai then picks ``start + int(span / 3) + int(span / 6)``. Lengths are found in
    O(n log n) (patience sorting) where fastai loops over all pairs, with the same result.
    None when the curve never decreases (fastai would answer its first point); never below 0
    (fastai's index is -1 for a two-point valley at the very start, which picks its last lr).
    """
    tails: list[float] = []  # tails[k]: the largest negated loss ending a decreasing run of k + 1
    longest, end = 0, 0
    for i, loss in enumerate(losses):
        k = bisect_left(tails, -loss)
        if k == len(tails):
            tails.append(-loss)
        else:
            tails[k] = -loss
        if k + 1 > longest:
            longest, end = k + 1, i
    if longest < 2:
        return None
    start = end - longest
    section = (end - start) / 3
    return max(0, start + int(section) + int(section / 2))


def suggestions(lrs: Sequence[float], smoothed: Sequence[float], steps: int) -> dict[str, float | None]:
    """fastai's suggestions from a recorded curve, on its smoothed loss without the first
    ``steps // 10`` points and the last ``SKIP_END``, cut at the first non-finite value.

    ``steepest``: the lr where the smoothed loss falls fastest against log(lr) (``numpy.gradient``;
    None when it never falls); ``valley``: ``valley_index``'s lr; ``min_over_10``: a tenth of the lr
    at the lowest smoothed loss. All None with fewer than ``MIN_POINTS`` points left.
    """
    lr = np.asarray(lrs[steps // 10 : max(0, len(lrs) - SKIP_END)], dtype=float)
    loss = np.asarray(smoothed[steps // 10 : max(0, len(smoothed) - SKIP_END)], dtype=float)
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        lr, loss = lr[: bad[0]], loss[: bad[0]]
    if loss.size < MIN_POINTS:
        return {"steepest": None, "valley": None, "min_over_10": None}
    slope = np.gradient(loss, np.log(lr))
    steepest = int(np.argmin(slope))
    valley = valley_index(loss.tolist())
    return {
        "steepest": float(lr[steepest]) if slope[steepest] < 0 else None,
        "valley": float(lr[valley]) if valley is not None else None,
        "min_over_10": float(lr[int(np.argmin(loss))]) / 10,
    }


def train_range_test(
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
    """Run ``spec.lr_range_test``; the loops' arguments, of which a test reads only these:

    ``should_stop`` (polled every ``stop_poll_s``; True ends it ``cancelled``, with no artifacts)
    and ``num_threads``. It reports no epochs (``on_epoch`` is never called) and writes no
    checkpoint. The result is ``completed`` with the curve as ``artifacts``: ``lr``, ``loss``,
    ``smoothed`` (None where not finite), ``suggestions`` and ``stopped`` ("diverged" when the
    smoothed loss passed ``stop_factor`` times its best or a loss was not finite, else "end").
    """
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    if spec.lr_range_test is None:
        raise ValueError("this spec has no lr_range_test")
    threads = get_settings().torch_threads if num_threads is None else num_threads
    with _threads(threads), torch.random.fork_rng(devices=[]):
        poll = StopPoll(should_stop, stop_poll_s) if should_stop is not None else None
        run = build_setup(spec)
        _seeding.seed_device(run.device, _seeding.dropout_seed(spec.seed))
        environment = run_environment(spec, run.device, run.optimizer, run.bf16)
        curve = _curve(spec, spec.lr_range_test, run, poll)
    if curve is None:
        return TrainResult("cancelled", [], environment)
    return TrainResult("completed", [], environment, artifacts=curve)


def _batches(spec: JobSpec, run: Setup) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The plain loop's batches in its order, epoch after epoch, for as long as the test asks."""
    x_train, y_train = run.data.x_train, run.data.y_train
    n = x_train.shape[0]
    for epoch in itertools.count(1):
        order = _seeding.epoch_permutation(n, spec.seed, epoch).to(run.device)
        x_all, y_all = x_train[order], y_train[order]
        for start in range(0, n, spec.batch_size):
            yield x_all[start : start + spec.batch_size], y_all[start : start + spec.batch_size]


def _curve(spec: JobSpec, test: LRRangeTest, run: Setup, poll: StopPoll[bool] | None) -> dict[str, Any] | None:
    """The test's steps and its artifacts; None when ``poll`` stopped it."""
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    autocast: AbstractContextManager[Any] = (
        torch.autocast(run.device.type, dtype=torch.bfloat16) if run.bf16 else nullcontext()
    )
    if isinstance(run.forward, torch.nn.Module):
        run.forward.train()
    batches, smoother = _batches(spec, run), Smoother(test.smoothing)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    best, stopped = math.inf, "end"
    if poll is not None and poll.ask():
        return None
    for lr in lr_schedule(test):
        if poll is not None and poll.due() and poll.ask():
            return None
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        xb, yb = next(batches)

        def batch_loss(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            with autocast:
                return run.loss_fn(run.forward(xb), yb)  # type: ignore[no-any-return]

        # One sync per step: the stop rule reads every loss as it comes.
        loss = float(optimizer_step(run.optimizer, params, batch_loss, spec.grad_clip_norm, []).item())
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smoother.add(loss) if math.isfinite(loss) else math.nan)
        best = min(best, smoothed[-1])
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > test.stop_factor * best:
            stopped = "diverged"
            break
    return {
        "kind": "lr_range_test",
        "lr": lrs,
        "loss": [_finite(v) for v in losses],
        "smoothed": [_finite(v) for v in smoothed],
        "suggestions": suggestions(lrs, smoothed, test.steps),
        "stopped": stopped,
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN or inf: such values are stored as None."""
    return value if math.isfinite(value) else None
