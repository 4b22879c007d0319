"""Packed trials: ``train_packed(specs)`` trains many small specs at once on one device.

The trials' weights are stacked into one ``[N, D]`` tensor (one row per trial); each layer is a
view into it, a forward pass is one batched matmul per layer (``_pack_model``), and the optimizer
update is a handful of vectorized ops over each optimizer family's contiguous block of rows, with
every hyperparameter a per-trial column (``_pack_optim``). Per trial, everything that makes a run
what it is stays its own: initial weights (``build_model(spec)``), batch order
(``_seeding.epoch_permutation``), learning-rate schedule (torch's own scheduler classes, stepped
on a shadow optimizer), metrics, and the after-epoch policy ``train`` applies (``_policy``):
divergence, early stopping and cancellation. A trial that ends leaves the pack; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from optim_engine import _checkpoint, _pack_optim, _seeding
from optim_engine._checkpoint import RunState
from optim_engine._datasets import TensorData, build_dataset
from optim_engine._loop import EVAL_CHUNK, _threads, machine, resolve_device
from optim_engine._models import build_loss, build_model
from optim_engine._optim import Scheduler, build_optimizer, build_scheduler, steps_per_epoch
from optim_engine._pack_model import PackLayout, PackLoss
from optim_engine._pack_optim import Columns, Group, GroupKey
from optim_engine._policy import STOP_POLL_S, CheckpointCadence, StopPoll, after_epoch, steps_per_batch
from optim_engine.packing import can_pack
from optim_engine.results import EpochMetrics, Outcome, TrainResult
from optim_engine.settings import get_settings
from optim_engine.spec import JobSpec

CHECKPOINT = "pack.pt"
_FORMAT = 1


@dataclass
class _Trial:
    index: int
    key: str
    spec: JobSpec
    family: str
    shadow: torch.optim.Optimizer
    scheduler: Scheduler | None
    per_step: bool
    group: GroupKey
    state: RunState = field(default_factory=lambda: RunState(history=[]))
    outcome: Outcome | None = None
    diverged_epoch: int | None = None
    resumed_from: int | None = None

    def raw(self) -> list[float]:
        """The shadow optimizer's current hyperparameters, as the family's raw columns."""
        return _pack_optim.raw_columns(self.family, self.shadow)


def train_packed(
    specs: Sequence[JobSpec | dict[str, Any]],
    *,
    keys: Sequence[str] | None = None,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
    on_finish: Callable[[int, TrainResult], None] | None = None,
    should_stop: Callable[[], Collection[int]] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 0.0,
    num_threads: int | None = None,
    stop_poll_s: float = STOP_POLL_S,
    may_checkpoint: Callable[[], bool] | None = None,
    should_prune: Callable[[int, EpochMetrics], bool] | None = None,
    stop_grace_s: float = 0.0,
) -> list[TrainResult]:
    """Train ``specs`` as one pack; each trial's results match the same spec run alone by
    ``train`` within float32 drift.

    Args:
        specs: specs that ``can_pack`` accepts (a ``ValueError`` says why not otherwise).
        keys: a stable name per trial (default: its position); the checkpoint is keyed by them,
            so a resumed pack may hold a subset of the trials it was checkpointed with.
        on_epoch: called with (trial position, metrics) for each trial's finished epoch,
            before that epoch is checkpointed.
        on_finish: called with (trial position, result) as soon as a trial ends (diverged, early
            stopped, cancelled) and for the others when the pack ends.
        should_stop: polled before each epoch and, inside an epoch, at most every
            ``stop_poll_s`` seconds; returns the positions of trials to end as ``cancelled``.
            A trial stopped inside an epoch ends at once with the epochs before it (its rows
            finish the epoch unrecorded, then leave the pack); when every trial is stopped, the
            epoch is abandoned and not checkpointed. Trials stopped at an epoch boundary leave a
            checkpoint of it (whatever the cadence), so a pack handed back resumes exactly there.
        checkpoint_dir: resume the pack from the checkpoint there and write one after epochs.
        checkpoint_every_s: skip a checkpoint when the last one is younger than this.
        num_threads: torch intra-op threads (default: ``OPTIMLAB_TORCH_THREADS``).
        stop_poll_s: how often ``should_stop`` is asked inside an epoch (0: every step).
        may_checkpoint: asked right before a checkpoint is put in place; False skips it.
        should_prune: asked with (trial position, metrics) for each live trial's finished epoch
            but the last, as ``train`` asks it; True ends that trial as ``pruned`` with the
            epoch, and its rows leave the pack: the others' results do not change by a bit.
        stop_grace_s: as ``train``'s: a stop asked inside an epoch that will end within this
            long waits for its boundary; longer epochs are always checkpointed.

    Returns:
        One ``TrainResult`` per spec, in the order given.
    """
    parsed = [s if isinstance(s, JobSpec) else JobSpec.model_validate(s) for s in specs]
    check = can_pack(parsed)
    if not check.ok:
        raise ValueError("these specs cannot be packed: " + "; ".join(check.reasons))
    names = [str(i) for i in range(len(parsed))] if keys is None else [str(k) for k in keys]
    if len(names) != len(parsed) or len(set(names)) != len(names):
        raise ValueError("keys: give one distinct key per spec")
    threads = get_settings().torch_threads if num_threads is None else num_threads
    with _threads(threads), torch.random.fork_rng(devices=[]):
        pack = _Pack(parsed, names, Path(checkpoint_dir) if checkpoint_dir is not None else None)
        pack.on_finish, pack.may_checkpoint, pack.should_prune = on_finish, may_checkpoint, should_prune
        pack.poll = StopPoll(should_stop, stop_poll_s, grace_s=stop_grace_s) if should_stop is not None else None
        return pack.run(on_epoch, CheckpointCadence(checkpoint_every_s, long_epoch_s=stop_grace_s))


class _Pack:
    def __init__(self, specs: list[JobSpec], keys: list[str], checkpoint_dir: Path | None) -> None:
        first = specs[0]
        self.device = resolve_device(first.device)
        self.data: TensorData = build_dataset(first, self.device)
        self.layout = PackLayout(build_model(first))
        self.n_train = self.data.x_train.shape[0]
        self.x_train, self.x_val = self.data.x_train, self.data.x_val
        if self.layout.augment:
            self.x_train, self.x_val = (
                torch.nn.functional.pad(x, (0, 1), value=1.0) for x in (self.x_train, self.x_val)
            )
        self.steps = steps_per_epoch(self.n_train, first.batch_size)
        self.batch_size, self.epochs = first.batch_size, first.epochs
        self.loss = PackLoss(build_loss(first))
        self.classification = self.data.info.task == "classification"
        self.checkpoint_dir = checkpoint_dir
        # Run control, set by ``train_packed``: who hears of ended trials, when to ask should_stop
        # inside an epoch, and whether a checkpoint may still be written.
        self.on_finish: Callable[[int, TrainResult], None] | None = None
        self.poll: StopPoll[Collection[int]] | None = None
        self.may_checkpoint: Callable[[], bool] | None = None
        self.should_prune: Callable[[int, EpochMetrics], bool] | None = None
        self.saved_step = -1  # the optimizer step the checkpoint on disk holds (``run`` sets it)
        self.spec_hashes = {key: spec.spec_hash() for key, spec in zip(keys, specs, strict=True)}

        trials = [self._trial(i, key, spec) for i, (key, spec) in enumerate(zip(keys, specs, strict=True))]
        # Rows sorted by optimizer group, so each group's rows are one contiguous block.
        order = sorted(range(len(trials)), key=lambda i: trials[i].group)
        self.trials = trials
        self.rows: list[_Trial] = [trials[i] for i in order]
        self.step = 0
        self.params = torch.stack([_initial_row(t.spec) for t in self.rows]).to(self.device)
        self.groups = _pack_optim.spans([t.group for t in self.rows])
        for group in self.groups:
            group.set_flags(self._shadows(group))
            group.init_state(self.params[group.start : group.stop], self._shadows(group))
        self.environment = {
            **machine(self.device),
            "dtype": "float32",
            "optimizer_implementation": "packed",
            "compiled": False,
            "pack_size": len(trials),
        }
        self._restore()

    def _trial(self, index: int, key: str, spec: JobSpec) -> _Trial:
        dummy = torch.zeros(1, requires_grad=True)
        shadow = build_optimizer(spec, [dummy], "cpu")
        shadow._opt_called = True  # type: ignore[attr-defined]  # schedulers step it without a real step
        scheduler = build_scheduler(spec, shadow, self.steps)
        family = _pack_optim.FAMILY[spec.optimizer.name]
        group = _pack_optim.group_key(family, shadow, scheduler)
        return _Trial(index, key, spec, family, shadow, scheduler, steps_per_batch(spec), group)

    def _shadows(self, group: Group) -> list[torch.optim.Optimizer]:
        return [t.shadow for t in self.rows[group.start : group.stop]]

    # -- the loop

    def run(
        self, on_epoch: Callable[[int, EpochMetrics], None] | None, cadence: CheckpointCadence
    ) -> list[TrainResult]:
        for trial in self.trials:  # restored from a checkpoint in which they had already ended
            if trial.outcome is not None and self.on_finish is not None:
                self.on_finish(trial.index, self._result(trial))
        self.saved_step = self.step  # what the checkpoint on disk holds
        epoch = self.epochs_done + 1
        while self.rows and epoch <= self.epochs:
            if self.poll is not None:
                self._stop_at_boundary(self.poll.boundary(), cadence)
            self._drop_ended()
            if not self.rows:
                break
            metrics = self._epoch(epoch)
            if metrics is None:
                break  # every trial was stopped inside the epoch, which is dropped
            self._after_epoch(epoch, metrics, on_epoch, cadence)
            self._drop_ended()
            epoch += 1
        for trial in self.rows:
            if trial.outcome is None:
                self._end(trial, "completed")
        return [self._result(t) for t in self.trials]

    def _after_epoch(
        self,
        epoch: int,
        metrics: list[EpochMetrics],
        on_epoch: Callable[[int, EpochMetrics], None] | None,
        cadence: CheckpointCadence,
    ) -> None:
        """Record a whole epoch of the trials still live (one stopped inside it keeps none of
        it), apply the after-epoch policy and checkpoint when due."""
        live = [(trial, m) for trial, m in zip(self.rows, metrics, strict=True) if trial.outcome is None]
        for trial, m in live:
            trial.state.history.append(m)
            if on_epoch is not None:
                on_epoch(trial.index, m)
        stopped_early = []
        prune = self.should_prune if epoch < self.epochs else None
        for trial, m in live:
            verdict = after_epoch(trial.spec, trial.state, m, trial.scheduler, trial.per_step)
            if verdict == "diverged":
                self._end(trial, "diverged", epoch)
            elif verdict == "early_stopped":
                stopped_early.append(trial)  # it ends after the checkpoint, as in ``train``
            elif prune is not None and prune(trial.index, m):
                self._end(trial, "pruned")
        if self.checkpoint_dir is not None and cadence.due(metrics[0].epoch_seconds):
            self._save(cadence)
        for trial in stopped_early:
            self._end(trial, "early_stopped")

    def _end(self, trial: _Trial, outcome: Outcome, diverged_epoch: int | None = None) -> None:
        trial.outcome, trial.diverged_epoch = outcome, diverged_epoch
        if self.on_finish is not None:
            self.on_finish(trial.index, self._result(trial))

    def _stop(self, positions: Collection[int]) -> None:
        """End the live trials at ``positions`` (``should_stop``'s answer) as cancelled."""
        for trial in self.rows:
            if trial.outcome is None and trial.index in positions:
                self._end(trial, "cancelled")

    def _stop_at_boundary(self, positions: Collection[int], cadence: CheckpointCadence) -> None:
        """End the live trials at ``positions`` between two epochs, after a checkpoint of this
        boundary with them still live (unless the last one holds it): a pack handed back resumes
        here, not from an older checkpoint, and not with its trials ended as cancelled."""
        if not any(t.outcome is None and t.index in positions for t in self.rows):
            return
        if self.checkpoint_dir is not None and self.saved_step != self.step:
            self._save(cadence)
        self._stop(positions)

    def _interrupted(self) -> bool:
        """Asked every step inside an epoch: end the trials stopped now (``StopPoll.inside``), and
        say whether none is left to finish the epoch. The rows of trials ended here go on to the
        epoch's end unrecorded: taking rows out mid-epoch would re-slice every step's columns."""
        assert self.poll is not None
        positions = self.poll.inside()
        if positions is None:
            return False
        self._stop(set(positions))
        return all(t.outcome is not None for t in self.rows)

    @property
    def epochs_done(self) -> int:
        return len(self.rows[0].state.history) if self.rows else self.epochs

    def _drop_ended(self) -> None:
        """Take ended trials' rows out of the parameters and optimizer state."""
        keep = [i for i, t in enumerate(self.rows) if t.outcome is None]
        if len(keep) < len(self.rows):
            self._select(keep, self.rows)

    def _select(self, keep: list[int], rows: Sequence[_Trial | None]) -> None:
        """Keep rows ``keep`` of the current layout, whose trials are ``rows``."""
        kept = [rows[i] for i in keep]
        assert all(t is not None for t in kept)
        self.rows = [t for t in kept if t is not None]
        self.params = self.params.index_select(0, torch.tensor(keep, dtype=torch.long, device=self.device))
        self.groups = _pack_optim.select(self.groups, keep, self.device)
        for group in self.groups:
            group.set_flags(self._shadows(group))

    def _epoch(self, epoch: int) -> list[EpochMetrics] | None:
        """One epoch of every row: each row's metrics, or None when every trial was stopped
        inside it (``_interrupted``)."""
        started = time.perf_counter()
        rows, n_trials, n = self.rows, len(self.rows), self.n_train
        hyper, first_lrs = self._hyper()
        need_first = [t.state.first_loss is None for t in rows]
        trained = self._steps(epoch, hyper, any(need_first))
        if trained is None:
            return None
        loss_sum, norms, first = trained
        train_loss, grad_norm = torch.stack([loss_sum / n, norms]).tolist()  # the epoch's one sync
        first_losses = first.tolist() if first is not None else [None] * n_trials
        train_seconds = time.perf_counter() - started
        val_loss: list[float | None] = [None] * n_trials
        val_accuracy: list[float | None] = [None] * n_trials
        if self.data.has_validation:
            evaluated = self._evaluate()
            if evaluated is None:
                return None
            val_loss = list(evaluated[0])
            val_accuracy = list(evaluated[1]) if self.classification else [None] * n_trials
        seconds = time.perf_counter() - started
        metrics = []
        for i, trial in enumerate(rows):
            if need_first[i] and trial.outcome is None:
                trial.state.first_loss = first_losses[i]
            metrics.append(
                EpochMetrics(
                    epoch=epoch,
                    train_loss=train_loss[i],
                    val_loss=val_loss[i],
                    val_accuracy=val_accuracy[i],
                    lr=first_lrs[i],
                    grad_norm=grad_norm[i],
                    epoch_seconds=seconds,
                    samples_per_second=n / train_seconds if train_seconds > 0 else float("inf"),
                )
            )
        return metrics

    def _steps(
        self, epoch: int, hyper: dict[int, Columns], need_first: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """An epoch's optimizer steps for every row: (sum of batch losses, last gradient norms,
        first batch losses when ``need_first``), on the device; None when ``_interrupted``."""
        rows, device, data, poll = self.rows, self.device, self.data, self.poll
        n_trials, n = len(rows), self.n_train
        orders = torch.stack([_seeding.epoch_permutation(n, t.spec.seed, epoch) for t in rows]).to(device)
        loss_sum = torch.zeros(n_trials, device=device)
        grads = torch.empty_like(self.params)
        weights, grad_views = self.layout.views(self.params), self.layout.views(grads)
        clip = self._clip_column()
        norms = torch.zeros(n_trials, device=device)
        first = None
        for step, start in enumerate(range(0, n, self.batch_size)):
            if poll is not None and self._interrupted():
                return None
            index = orders[:, start : start + self.batch_size]
            batch = index.shape[1]
            flat = index.reshape(-1)
            xb = self.x_train.index_select(0, flat).view(n_trials, batch, -1)
            yb = data.y_train.index_select(0, flat)
            with torch.no_grad():
                losses = self.layout.gradients(weights, grad_views, xb, partial(self.loss.loss_and_grad, target=yb))
                last = step == self.steps - 1
                if clip is not None or last:
                    norms = torch.linalg.vector_norm(grads, dim=1)
                if clip is not None:
                    grads.mul_((clip / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1))
                self.step += 1
                for group in self.groups:
                    group.update(self.params, grads, hyper[id(group)].at(step))
                loss_sum.add_(losses.detach(), alpha=batch)
                if first is None and need_first:
                    first = losses.detach().clone()
        return loss_sum, norms, first

    def _hyper(self) -> tuple[dict[int, Columns], list[float]]:
        """Every group's per-step columns for this epoch, and each trial's learning rate at the
        epoch's first step. Per-step schedulers step here, ahead of the epoch's steps."""
        steps = self.steps
        raws = []
        for trial in self.rows:
            if trial.per_step:
                per_step = []
                for _ in range(steps):
                    per_step.append(trial.raw())
                    assert trial.scheduler is not None
                    trial.scheduler.step()
                raws.append(torch.tensor(per_step, dtype=torch.float64))
            else:
                raws.append(torch.tensor([trial.raw()], dtype=torch.float64).expand(steps, -1))
        first_lrs = [float(raw[0, 0]) for raw in raws]
        return _pack_optim.epoch_columns(self.groups, raws, self.step + 1, self.device), first_lrs

    def _clip_column(self) -> torch.Tensor | None:
        clips = [t.spec.grad_clip_norm for t in self.rows]
        if all(c is None for c in clips):
            return None
        values = [float("inf") if c is None else c for c in clips]
        return torch.tensor(values, dtype=self.params.dtype, device=self.device)

    @torch.no_grad()
    def _evaluate(self) -> tuple[list[float], list[float]] | None:
        data, n_trials = self.data, len(self.rows)
        weights = self.layout.views(self.params)
        n = data.x_val.shape[0]
        total = torch.zeros(n_trials, device=self.device)
        correct = torch.zeros(n_trials, device=self.device, dtype=torch.long)
        for start in range(0, n, EVAL_CHUNK):
            if self.poll is not None and self._interrupted():
                return None
            xb, yb = self.x_val[start : start + EVAL_CHUNK], data.y_val[start : start + EVAL_CHUNK]
            batch = xb.shape[0]
            output = self.layout.forward(weights, xb.unsqueeze(0).expand(n_trials, -1, -1))
            total += self.loss.losses(output, yb.repeat((n_trials,) + (1,) * (yb.dim() - 1))) * batch
            if self.classification:
                if yb.dtype == torch.long:
                    correct += (output.contiguous().argmax(dim=2) == yb).sum(dim=1)
                else:
                    correct += ((output > 0).to(yb.dtype) == yb).flatten(1).sum(dim=1)
        loss, accuracy = torch.stack([total / n, correct.to(total.dtype) / n]).tolist()
        return loss, accuracy

    # -- results and checkpoints

    def _result(self, trial: _Trial) -> TrainResult:
        environment = dict(self.environment, seed=trial.spec.seed)
        return TrainResult(
            outcome=trial.outcome or "completed",
            history=list(trial.state.history),
            environment=environment,
            diverged_epoch=trial.diverged_epoch,
            resumed_from_epoch=trial.resumed_from,
        )

    def _save(self, cadence: CheckpointCadence) -> None:
        assert self.checkpoint_dir is not None
        cadence.mark()
        self.saved_step = self.step
        payload = {
            "step": self.step,
            "rows": [t.key for t in self.rows],
            "row_groups": [list(t.group) for t in self.rows],
            "params": self.params.cpu(),
            "groups": [{name: s.cpu() for name, s in g.state.items()} for g in self.groups],
            "trials": {
                t.key: {
                    "spec_hash": self.spec_hashes[t.key],
                    "shadow": t.shadow.state_dict(),
                    "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
                    **t.state.as_dict(),
                    "outcome": t.outcome,
                    "diverged_epoch": t.diverged_epoch,
                }
                for t in self.trials
            },
        }
        _checkpoint.write(self.checkpoint_dir / CHECKPOINT, payload, version=_FORMAT, may_write=self.may_checkpoint)

    def _restore(self) -> None:
        """Resume from the checkpoint when it holds every trial of this pack (it may hold more)."""
        if self.checkpoint_dir is None:
            return
        path = self.checkpoint_dir / CHECKPOINT
        payload = _checkpoint.read(path, version=_FORMAT)
        if payload is None:
            return
        saved = payload["trials"]
        for trial in self.trials:
            entry = saved.get(trial.key)
            if entry is None:
                return  # a trial the checkpoint never saw: train the pack from the start
            if entry["spec_hash"] != self.spec_hashes[trial.key]:
                raise ValueError(f"{path} was written by a pack with another spec for trial {trial.key!r}")
        by_key = {t.key: t for t in self.trials}
        for trial in self.trials:
            entry = saved[trial.key]
            trial.shadow.load_state_dict(entry["shadow"])
            if trial.scheduler is not None:
                trial.scheduler.load_state_dict(entry["scheduler"])
            trial.state = RunState.from_dict(entry)
            trial.outcome, trial.diverged_epoch = entry["outcome"], entry["diverged_epoch"]
            if trial.outcome is None and trial.state.stopped(trial.spec.early_stopping):
                trial.outcome = "early_stopped"  # checkpointed at the epoch that stopped it
            trial.resumed_from = len(trial.state.history)
        # Rebuild the checkpoint's row layout, then keep the rows of this pack's live trials.
        saved_rows = [by_key.get(key) for key in payload["rows"]]
        self.params = payload["params"].to(self.device)
        self.groups = _pack_optim.spans(
            [(family, amsgrad, momentum) for family, amsgrad, momentum in payload["row_groups"]]
        )
        for group, state in zip(self.groups, payload["groups"], strict=True):
            group.state = {name: s.to(self.device) for name, s in state.items()}
        self.step = payload["step"]
        self._select([i for i, t in enumerate(saved_rows) if t is not None and t.outcome is None], saved_rows)


def _initial_row(spec: JobSpec) -> torch.Tensor:
    """A trial's initial weights (``build_model(spec)``'s) as one row of the layout."""
    model = build_model(spec)
    return torch.cat([(p.T if p.dim() == 2 else p).detach().reshape(-1) for p in model.parameters()]).float()
