"""Packed trials: ``train_packed(specs)`` trains many small specs at once on one device.

The trials' weights are stacked into one ``[N, D]`` tensor (one row per trial); each layer is a
view into it, a forward pass is one batched matmul per layer, and the optimizer update is a
handful of vectorized ops over each optimizer family's contiguous block of rows, with every
hyperparameter a per-trial column. Per trial, everything that makes a run what it is stays its
own: initial weights (``build_model(spec)``), batch order (``_seeding.epoch_permutation``),
learning-rate schedule (torch's own scheduler classes, stepped on a shadow optimizer), metrics,
divergence, early stopping and cancellation. A trial that ends leaves the pack; the others go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optim_engine import _seeding
from optim_engine._checkpoint import RunState
from optim_engine._datasets import TensorData, build_dataset
from optim_engine._loop import EVAL_CHUNK, _diverged, _threads, machine, resolve_device
from optim_engine._models import build_loss, build_model
from optim_engine._optim import Scheduler, build_optimizer, build_scheduler, steps_per_epoch
from optim_engine.packing import can_pack
from optim_engine.results import EpochMetrics, Outcome, TrainResult
from optim_engine.settings import get_settings
from optim_engine.spec import JobSpec

CHECKPOINT = "pack.pt"
_FORMAT = 1

# Optimizer families and the per-trial columns their update reads, in order. Columns are
# derived per step (in float64, then cast) from the shadow optimizer's param group.
_FAMILY = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "rmsprop": "rmsprop", "adagrad": "adagrad"}
_RAW = {
    "sgd": ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "adagrad": ("lr", "lr_decay", "eps", "weight_decay", "maximize"),
}


@dataclass
class _Trial:
    index: int
    key: str
    spec: JobSpec
    family: str
    amsgrad: bool
    momentum: bool
    shadow: torch.optim.Optimizer
    scheduler: Scheduler | None
    per_step: bool
    state: RunState = field(default_factory=lambda: RunState(history=[]))
    outcome: Outcome | None = None
    diverged_epoch: int | None = None
    resumed_from: int | None = None

    @property
    def group(self) -> tuple[str, bool, bool]:
        return self.family, self.amsgrad, self.momentum

    def raw(self) -> list[float]:
        """The shadow optimizer's current hyperparameters, as the family's raw columns."""
        group = self.shadow.param_groups[0]
        values = dict(group)
        if "betas" in group:
            values["beta1"], values["beta2"] = group["betas"]
        return [float(values[name]) for name in _RAW[self.family]]


@dataclass
class _Group:
    """A contiguous block of rows whose trials share an optimizer family, amsgrad and whether
    they keep a momentum buffer."""

    family: str
    amsgrad: bool
    start: int
    stop: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    momentum: bool = False
    # Static per-trial switches: skip the ops no trial in the group needs.
    maximize: bool = False
    weight_decay: bool = False
    nesterov: bool = False
    centered: bool = False
    decoupled: bool = False


class _Columns:
    """A group's hyperparameter columns over an epoch's steps: the ones a schedule or a bias
    correction changes are indexed per step, the others are built once."""

    def __init__(self, table: torch.Tensor, device: torch.device) -> None:
        # table: [steps, rows, columns] float32 on the CPU.
        varies = (table != table[0]).flatten(0, 1).any(dim=0).tolist()
        self.fixed = [table[0, :, c].unsqueeze(-1).to(device) for c in range(table.shape[-1])]
        self.varying = [(c, table[:, :, c].unsqueeze(-1).to(device)) for c, v in enumerate(varies) if v]

    def at(self, step: int) -> list[torch.Tensor]:
        """Each column for one step, as [rows, 1]."""
        columns = list(self.fixed)
        for c, per_step in self.varying:
            columns[c] = per_step[step]
        return columns


class _Layout:
    """The model as a list of ops over views into a trial's flat parameter row.

    A weight is kept transposed ([in, out]) and followed by its bias, so the forward is
    ``x @ w + b`` and gradients come out contiguous. The first layer's bias is folded into its
    weight as one more input row: the inputs carry a column of ones (``augment``), and one
    matmul gives the layer's output and, backwards, both its gradients.
    """

    def __init__(self, template: nn.Module) -> None:
        modules = list(template) if isinstance(template, nn.Sequential) else [template]
        self.shapes: list[tuple[int, ...]] = []
        self.ops: list[tuple[str, Any]] = []
        first = modules[0]
        self.augment = isinstance(first, nn.Linear) and first.bias is not None
        for module in modules:
            if isinstance(module, nn.Linear):
                weight = len(self.shapes)
                n_out, n_in = module.weight.shape
                bias = None
                if module is first and self.augment:
                    self.shapes.append((n_in + 1, n_out))  # [w; b], as the row stores them
                else:
                    self.shapes.append((n_in, n_out))
                    if module.bias is not None:
                        bias = len(self.shapes)
                        self.shapes.append((1, n_out))
                self.ops.append(("linear", (weight, bias)))
            else:
                self.ops.append(("act", module))
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer views of ``flat`` ([N, D]): weights [N, in, out], biases [N, 1, out]."""
        views, offset = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            views.append(flat[:, offset : offset + size].view(flat.shape[0], *shape))
            offset += size
        return views

    def forward(self, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The trials' outputs for inputs ``x`` ([N, B, in]), without gradients."""
        for kind, op in self.ops:
            if kind == "linear":
                w, b = op
                x = torch.bmm(x, weights[w]) if b is None else torch.bmm(x, weights[w]).add_(weights[b])
            else:
                x = x.relu_() if isinstance(op, nn.ReLU) else op(x)
        return x

    def gradients(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        x: torch.Tensor,
        loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Forward, per-trial losses and backward; writes d(loss)/d(weights) into ``grads``.

        The backward of the linear layers is written out (batched matmuls straight into the
        gradient rows); ``loss`` returns the per-trial losses and their gradient with respect
        to the output; autograd handles only activations other than ReLU.
        """
        saved: list[Any] = []
        for kind, op in self.ops:
            if kind == "linear":
                saved.append(x)
                w, b = op
                x = torch.bmm(x, weights[w]) if b is None else torch.bmm(x, weights[w]).add_(weights[b])
            elif isinstance(op, nn.ReLU):
                x = x.relu_()
                saved.append(x)
            else:
                with torch.enable_grad():
                    inp = x.requires_grad_()
                    x = op(inp)
                saved.append((inp, x))
                x = x.detach()
        losses, g = loss(x)
        for position in range(len(self.ops) - 1, -1, -1):
            (kind, op), inp = self.ops[position], saved[position]
            if kind == "linear":
                w, b = op
                torch.bmm(inp.transpose(1, 2), g, out=grads[w])
                if b is not None:
                    torch.sum(g, dim=1, keepdim=True, out=grads[b])
                if position > 0:
                    g = torch.bmm(g, weights[w].transpose(1, 2))
            elif isinstance(op, nn.ReLU):
                # In place: g is this step's own buffer (bool-mask ops are far slower on CPU).
                g = torch.ops.aten.threshold_backward.grad_input(g, inp, 0, grad_input=g)
            else:
                (g,) = torch.autograd.grad(inp[1], inp[0], g)
        return losses


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
        should_stop: polled before each epoch; returns the positions of trials to end as
            ``cancelled``.
        checkpoint_dir: resume the pack from the checkpoint there and write one after epochs.
        checkpoint_every_s: skip a checkpoint when the last one is younger than this.
        num_threads: torch intra-op threads (default: ``OPTIMLAB_TORCH_THREADS``).

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
        return pack.run(on_epoch, on_finish, should_stop, checkpoint_every_s)


class _Pack:
    def __init__(self, specs: list[JobSpec], keys: list[str], checkpoint_dir: Path | None) -> None:
        first = specs[0]
        self.device = resolve_device(first.device)
        self.data: TensorData = build_dataset(first, self.device)
        self.layout = _Layout(build_model(first))
        self.n_train = self.data.x_train.shape[0]
        self.x_train, self.x_val = self.data.x_train, self.data.x_val
        if self.layout.augment:
            self.x_train, self.x_val = (
                torch.nn.functional.pad(x, (0, 1), value=1.0) for x in (self.x_train, self.x_val)
            )
        self.steps = steps_per_epoch(self.n_train, first.batch_size)
        self.batch_size, self.epochs = first.batch_size, first.epochs
        self.loss_fn = build_loss(first)
        self.loss_fn.reduction = "none"  # type: ignore[assignment]
        self.classification = self.data.info.task == "classification"
        self.checkpoint_dir = checkpoint_dir
        self.spec_hashes = {key: spec.spec_hash() for key, spec in zip(keys, specs, strict=True)}

        trials = [self._trial(i, key, spec) for i, (key, spec) in enumerate(zip(keys, specs, strict=True))]
        # Rows sorted by optimizer group, so each group's rows are one contiguous block.
        order = sorted(range(len(trials)), key=lambda i: trials[i].group)
        self.trials = trials
        self.rows: list[_Trial] = [trials[i] for i in order]
        self.step = 0
        self.params = torch.stack([self._initial_row(t.spec) for t in self.rows]).to(self.device)
        self.groups = self._spans([t.group for t in self.rows])
        for group in self.groups:
            self._flags(group)
            self._init_state(group)
        self.environment = self._environment(len(trials))
        self._restore()

    # -- set-up

    def _trial(self, index: int, key: str, spec: JobSpec) -> _Trial:
        dummy = torch.zeros(1, requires_grad=True)
        shadow = build_optimizer(spec, [dummy], "cpu")
        shadow._opt_called = True  # type: ignore[attr-defined]  # schedulers step it without a real step
        scheduler = build_scheduler(spec, shadow, self.steps)
        per_step = bool(spec.schedulers) and spec.schedulers[0].interval == "step"
        group = shadow.param_groups[0]
        amsgrad = bool(group.get("amsgrad", False))
        # A momentum buffer when momentum is on, or may be switched on by a cycling scheduler.
        momentum = "momentum" in group and (group["momentum"] > 0 or scheduler is not None)
        family = _FAMILY[spec.optimizer.name]
        return _Trial(index, key, spec, family, amsgrad, momentum, shadow, scheduler, per_step)

    def _initial_row(self, spec: JobSpec) -> torch.Tensor:
        model = build_model(spec)
        return torch.cat([(p.T if p.dim() == 2 else p).detach().reshape(-1) for p in model.parameters()]).float()

    @staticmethod
    def _spans(keys: Sequence[tuple[str, bool, bool]]) -> list[_Group]:
        """One group per run of equal (family, amsgrad, momentum) keys."""
        groups: list[_Group] = []
        for i, (family, amsgrad, momentum) in enumerate(keys):
            if groups and (groups[-1].family, groups[-1].amsgrad, groups[-1].momentum) == (family, amsgrad, momentum):
                groups[-1].stop = i + 1
            else:
                groups.append(_Group(family, amsgrad, i, i + 1, momentum=momentum))
        return groups

    def _flags(self, group: _Group) -> None:
        """Which optional ops the group's trials need (schedulers change lr, momentum and betas only)."""
        raws = [dict(zip(_RAW[group.family], t.raw(), strict=True)) for t in self.rows[group.start : group.stop]]
        group.maximize = any(r["maximize"] for r in raws)
        group.weight_decay = any(r["weight_decay"] for r in raws)
        group.nesterov = any(r.get("nesterov", 0.0) for r in raws)
        group.centered = any(r.get("centered", 0.0) for r in raws)
        group.decoupled = any(r.get("decoupled_weight_decay", 0.0) for r in raws)

    def _init_state(self, group: _Group) -> None:
        rows = self.params[group.start : group.stop]
        zeros = torch.zeros_like
        if group.family == "adam":
            group.state = {"exp_avg": zeros(rows), "exp_avg_sq": zeros(rows)}
            if group.amsgrad:
                group.state["max_exp_avg_sq"] = zeros(rows)
        elif group.family == "rmsprop":
            group.state = {"square_avg": zeros(rows)}
            if group.momentum:
                group.state["momentum_buffer"] = zeros(rows)
            if group.centered:
                group.state["grad_avg"] = zeros(rows)
        elif group.family == "adagrad":
            initial = [
                t.shadow.param_groups[0]["initial_accumulator_value"] for t in self.rows[group.start : group.stop]
            ]
            column = torch.tensor(initial, dtype=rows.dtype, device=rows.device).unsqueeze(1)
            group.state = {"sum": column.expand_as(rows).clone()}

    def _environment(self, size: int) -> dict[str, Any]:
        return {
            **machine(self.device),
            "dtype": "float32",
            "optimizer_implementation": "packed",
            "compiled": False,
            "pack_size": size,
        }

    # -- the loop

    def run(
        self,
        on_epoch: Callable[[int, EpochMetrics], None] | None,
        on_finish: Callable[[int, TrainResult], None] | None,
        should_stop: Callable[[], Collection[int]] | None,
        checkpoint_every_s: float,
    ) -> list[TrainResult]:
        def end(trial: _Trial, outcome: Outcome, diverged_epoch: int | None = None) -> None:
            trial.outcome, trial.diverged_epoch = outcome, diverged_epoch
            if on_finish is not None:
                on_finish(trial.index, self._result(trial))

        for trial in self.trials:  # restored from a checkpoint in which they had already ended
            if trial.outcome is not None and on_finish is not None:
                on_finish(trial.index, self._result(trial))
        last_checkpoint = time.monotonic()
        epoch = self.epochs_done + 1
        while self.rows and epoch <= self.epochs:
            stop = set(should_stop()) if should_stop is not None else set()
            for trial in self.rows:
                if trial.index in stop:
                    end(trial, "cancelled")
            self._drop_ended()
            if not self.rows:
                break
            for trial, metrics in zip(self.rows, self._epoch(epoch), strict=True):
                trial.state.history.append(metrics)
                if on_epoch is not None:
                    on_epoch(trial.index, metrics)
            stopped_early = [trial for trial in self.rows if self._after_epoch(trial, end)]
            if self.checkpoint_dir is not None and time.monotonic() - last_checkpoint >= checkpoint_every_s:
                last_checkpoint = time.monotonic()
                self._save()
            for trial in stopped_early:
                end(trial, "early_stopped")
            self._drop_ended()
            epoch += 1
        for trial in self.rows:
            end(trial, "completed")
        return [self._result(t) for t in self.trials]

    @property
    def epochs_done(self) -> int:
        return len(self.rows[0].state.history) if self.rows else self.epochs

    def _after_epoch(self, trial: _Trial, end: Callable[..., None]) -> bool:
        """What ``train`` does after an epoch, for one trial: divergence, schedule, early stop.
        True when the trial stops early (it ends after the checkpoint, as in ``train``)."""
        spec, state = trial.spec, trial.state
        metrics = state.history[-1]
        if spec.divergence.enabled and _diverged(metrics, state.first_loss, spec.divergence.max_loss_ratio):
            end(trial, "diverged", metrics.epoch)
            return False
        if isinstance(trial.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            trial.scheduler.step(metrics.monitored_loss)
        elif trial.scheduler is not None and not trial.per_step:
            trial.scheduler.step()
        return state.stops_early(metrics, spec.early_stopping)

    def _drop_ended(self) -> None:
        """Take ended trials' rows out of the parameters and optimizer state."""
        keep = [i for i, t in enumerate(self.rows) if t.outcome is None]
        if len(keep) < len(self.rows):
            self._select(keep, self.rows)

    def _select(self, keep: list[int], rows: Sequence[_Trial | None]) -> None:
        """Keep rows ``keep`` of the current layout, whose trials are ``rows``."""
        groups, position = [], 0
        for group in self.groups:
            local = [i - group.start for i in keep if group.start <= i < group.stop]
            if not local:
                continue
            index = torch.tensor(local, dtype=torch.long, device=self.device)
            state = {name: tensor.index_select(0, index) for name, tensor in group.state.items()}
            groups.append(
                _Group(group.family, group.amsgrad, position, position + len(local), state, momentum=group.momentum)
            )
            position += len(local)
        kept = [rows[i] for i in keep]
        assert all(t is not None for t in kept)
        self.rows = [t for t in kept if t is not None]
        self.params = self.params.index_select(0, torch.tensor(keep, dtype=torch.long, device=self.device))
        self.groups = groups
        for group in groups:
            self._flags(group)

    def _epoch(self, epoch: int) -> list[EpochMetrics]:
        started = time.perf_counter()
        rows, device, data = self.rows, self.device, self.data
        n_trials, n = len(rows), self.n_train
        hyper, first_lrs = self._hyper()
        orders = torch.stack([_seeding.epoch_permutation(n, t.spec.seed, epoch) for t in rows]).to(device)
        need_first = [t.state.first_loss is None for t in rows]
        loss_sum = torch.zeros(n_trials, device=device)
        grads = torch.empty_like(self.params)
        weights, grad_views = self.layout.views(self.params), self.layout.views(grads)
        clip = self._clip_column()
        norms = torch.zeros(n_trials, device=device)
        first = None
        for step, start in enumerate(range(0, n, self.batch_size)):
            index = orders[:, start : start + self.batch_size]
            batch = index.shape[1]
            flat = index.reshape(-1)
            xb = self.x_train.index_select(0, flat).view(n_trials, batch, -1)
            yb = data.y_train.index_select(0, flat)
            with torch.no_grad():
                losses = self.layout.gradients(weights, grad_views, xb, partial(self._loss_and_grad, target=yb))
                last = step == self.steps - 1
                if clip is not None or last:
                    norms = torch.linalg.vector_norm(grads, dim=1)
                if clip is not None:
                    grads.mul_((clip / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1))
                self.step += 1
                for group in self.groups:
                    self._update(group, grads, hyper[id(group)].at(step))
                loss_sum.add_(losses.detach(), alpha=batch)
                if first is None and any(need_first):
                    first = losses.detach().clone()
        train_loss, grad_norm = torch.stack([loss_sum / n, norms]).tolist()  # the epoch's one sync
        first_losses = first.tolist() if first is not None else [None] * n_trials
        train_seconds = time.perf_counter() - started
        val_loss: list[float | None] = [None] * n_trials
        val_accuracy: list[float | None] = [None] * n_trials
        if data.has_validation:
            losses_v, accuracy = self._evaluate()
            val_loss = list(losses_v)
            val_accuracy = list(accuracy) if self.classification else [None] * n_trials
        seconds = time.perf_counter() - started
        metrics = []
        for i, trial in enumerate(rows):
            if need_first[i]:
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

    def _loss_and_grad(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-trial mean losses ([N]) and their gradient with respect to ``output``."""
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            _, batch, classes = output.shape
            losses, logp, index = self._cross_entropy(output, target)
            smoothing = self.loss_fn.label_smoothing
            # d/dz of the mean loss: (softmax - smoothed one-hot) / batch, with softmax = exp(logp).
            grad = logp.exp_()
            grad.scatter_add_(1, index, torch.full(index.shape, smoothing - 1, dtype=grad.dtype, device=grad.device))
            if smoothing > 0:
                grad.sub_(smoothing / classes)
            return losses, grad.div_(batch).transpose(1, 2)
        with torch.enable_grad():
            leaf = output.requires_grad_()
            losses = self._losses(leaf, target)
            (grad,) = torch.autograd.grad(losses.sum(), leaf)
        return losses.detach(), grad

    def _losses(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each trial's mean loss over its batch, shape [N]; ``target`` is the trials' batches
        stacked along dim 0. Per-sample losses, then a mean per trial: ``train``'s mean reduction."""
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            return self._cross_entropy(output, target)[0]
        per_sample = self.loss_fn(output.reshape(-1, output.shape[-1]), target)
        return per_sample.view(output.shape[0], -1).mean(1)  # type: ignore[no-any-return]

    def _cross_entropy(
        self, output: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-trial mean cross-entropy (with label smoothing), the log-probabilities [N, C, B]
        and the target index [N, 1, B]. log_softmax over a short last dim is slow on CPU; over
        dim 1 of [N, C, B] it is not."""
        assert isinstance(self.loss_fn, nn.CrossEntropyLoss)
        logp = torch.log_softmax(output.transpose(1, 2), dim=1)
        index = target.view(output.shape[0], 1, -1)
        nll = -logp.gather(1, index).squeeze(1)
        smoothing = self.loss_fn.label_smoothing
        if smoothing > 0:
            nll = (1 - smoothing) * nll - smoothing * logp.mean(1)
        return nll.mean(1), logp, index

    def _clip_column(self) -> torch.Tensor | None:
        clips = [t.spec.grad_clip_norm for t in self.rows]
        if all(c is None for c in clips):
            return None
        values = [float("inf") if c is None else c for c in clips]
        return torch.tensor(values, dtype=self.params.dtype, device=self.device)

    @torch.no_grad()
    def _evaluate(self) -> tuple[list[float], list[float]]:
        data, n_trials = self.data, len(self.rows)
        weights = self.layout.views(self.params)
        n = data.x_val.shape[0]
        total = torch.zeros(n_trials, device=self.device)
        correct = torch.zeros(n_trials, device=self.device, dtype=torch.long)
        for start in range(0, n, EVAL_CHUNK):
            xb, yb = self.x_val[start : start + EVAL_CHUNK], data.y_val[start : start + EVAL_CHUNK]
            batch = xb.shape[0]
            output = self.layout.forward(weights, xb.unsqueeze(0).expand(n_trials, -1, -1))
            total += self._losses(output, yb.repeat((n_trials,) + (1,) * (yb.dim() - 1))) * batch
            if self.classification:
                if yb.dtype == torch.long:
                    correct += (output.transpose(1, 2).argmax(dim=1) == yb).sum(dim=1)
                else:
                    correct += ((output > 0).to(yb.dtype) == yb).flatten(1).sum(dim=1)
        loss, accuracy = torch.stack([total / n, correct.to(total.dtype) / n]).tolist()
        return loss, accuracy

    # -- the vectorized optimizers

    def _hyper(self) -> tuple[dict[int, _Columns], list[float]]:
        """Every group's per-step columns for this epoch, and each trial's learning rate at the
        epoch's first step."""
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
        t = torch.arange(self.step + 1, self.step + steps + 1, dtype=torch.float64).unsqueeze(1)
        tables: dict[int, _Columns] = {}
        for group in self.groups:
            raw = torch.stack(raws[group.start : group.stop], dim=1)  # [steps, rows, raw columns]
            columns = _DERIVE[group.family](raw.unbind(-1), t)
            tables[id(group)] = _Columns(torch.stack(columns, dim=-1).float(), self.device)
        return tables, first_lrs

    def _update(self, group: _Group, grads: torch.Tensor, columns: list[torch.Tensor]) -> None:
        """One optimizer step for the group's rows; ``columns`` are its [rows, 1] hyperparameters."""
        step = getattr(self, f"_{group.family}")
        step(group, self.params[group.start : group.stop], grads[group.start : group.stop], columns)

    def _sgd(self, group: _Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
        neg_lr, momentum, keep, nesterov, wd, sign = h
        if group.maximize:
            g = g * sign
        if group.weight_decay:
            g = g.addcmul(p, wd)
        if group.momentum:
            buf = group.state.get("momentum_buffer")
            if buf is None:
                buf = group.state["momentum_buffer"] = g.clone()
            else:
                buf.mul_(momentum).addcmul_(g, keep)
            g = torch.where(nesterov > 0, g.addcmul(buf, momentum), buf) if group.nesterov else buf
        p.addcmul_(g, neg_lr)

    def _adam(self, group: _Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
        neg_step, one_minus_b1, one_minus_b2, bc2_sqrt, eps, wd, decay, sign = h
        state = group.state
        if group.maximize:
            g = g * sign
        if group.weight_decay:
            if group.decoupled:
                p.mul_(decay)
            g = g.addcmul(p, wd)
        state["exp_avg"].lerp_(g, one_minus_b1)
        v = state["exp_avg_sq"]
        v.lerp_(g * g, one_minus_b2)  # beta2 * v + (1 - beta2) * g^2
        if group.amsgrad:
            torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step = v.sqrt().div_(bc2_sqrt).add_(eps)  # the denominator, then the step, in one buffer
        p.addcmul_(torch.div(state["exp_avg"], step, out=step), neg_step)

    def _rmsprop(self, group: _Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
        neg_lr, alpha, one_minus_alpha, eps, wd, momentum, centered, sign = h
        state = group.state
        if group.maximize:
            g = g * sign
        if group.weight_decay:
            g = g.addcmul(p, wd)
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(g * one_minus_alpha, g)
        if group.centered:
            grad_avg = state["grad_avg"]
            grad_avg.lerp_(g, one_minus_alpha)
            avg = square_avg.addcmul(grad_avg * centered, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg.add_(eps)
        if group.momentum:
            buf = state["momentum_buffer"]
            buf.mul_(momentum).addcdiv_(g, avg)
            p.addcmul_(buf, neg_lr)
        else:
            p.addcmul_(g / avg, neg_lr)

    def _adagrad(self, group: _Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
        neg_clr, eps, wd, sign = h
        if group.maximize:
            g = g * sign
        if group.weight_decay:
            g = g.addcmul(p, wd)
        total = group.state["sum"]
        total.addcmul_(g, g)
        p.addcmul_(g / total.sqrt().add_(eps), neg_clr)

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

    def _save(self) -> None:
        directory = self.checkpoint_dir
        assert directory is not None
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
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
        tmp = directory / f".{CHECKPOINT}.{os.getpid()}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, directory / CHECKPOINT)

    def _restore(self) -> None:
        """Resume from the checkpoint when it holds every trial of this pack (it may hold more)."""
        if self.checkpoint_dir is None or not (self.checkpoint_dir / CHECKPOINT).exists():
            return
        path = self.checkpoint_dir / CHECKPOINT
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path} has pack checkpoint format {payload.get('format')}, expected {_FORMAT}")
        saved = payload["trials"]
        for trial in self.trials:
            entry = saved.get(trial.key)
            if entry is None:
                return  # a trial the checkpoint never saw: train the pack from the start
            if entry["spec_hash"] != self.spec_hashes[trial.key]:
                raise ValueError(f"{path} was written by a pack with another spec for trial {trial.key!r}")
        by_key = {t.key: t for t in self.trials}
        for key, entry in saved.items():
            if key not in by_key:
                continue
            trial = by_key[key]
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
        self.groups = self._spans([(family, amsgrad, momentum) for family, amsgrad, momentum in payload["row_groups"]])
        for group, state in zip(self.groups, payload["groups"], strict=True):
            group.state = {name: s.to(self.device) for name, s in state.items()}
        self.step = payload["step"]
        self._select([i for i, t in enumerate(saved_rows) if t is not None and t.outcome is None], saved_rows)


def _sgd_columns(raw: Sequence[torch.Tensor], _: torch.Tensor) -> list[torch.Tensor]:
    lr, momentum, dampening, nesterov, wd, maximize = raw
    keep = torch.where(momentum == 0, 1.0, 1 - dampening)  # torch uses the raw gradient without momentum
    return [-lr, momentum, keep, nesterov, wd, 1 - 2 * maximize]


def _adam_columns(raw: Sequence[torch.Tensor], t: torch.Tensor) -> list[torch.Tensor]:
    lr, beta1, beta2, eps, wd, decoupled, maximize = raw
    step_size = lr / (1 - beta1**t)
    bc2_sqrt = (1 - beta2**t).sqrt()
    coupled = wd * (1 - decoupled)
    decay = 1 - lr * wd * decoupled
    return [-step_size, 1 - beta1, 1 - beta2, bc2_sqrt, eps, coupled, decay, 1 - 2 * maximize]


def _rmsprop_columns(raw: Sequence[torch.Tensor], _: torch.Tensor) -> list[torch.Tensor]:
    lr, alpha, eps, wd, momentum, centered, maximize = raw
    return [-lr, alpha, 1 - alpha, eps, wd, momentum, centered, 1 - 2 * maximize]


def _adagrad_columns(raw: Sequence[torch.Tensor], t: torch.Tensor) -> list[torch.Tensor]:
    lr, lr_decay, eps, wd, maximize = raw
    return [-lr / (1 + (t - 1) * lr_decay), eps, wd, 1 - 2 * maximize]


_DERIVE = {"sgd": _sgd_columns, "adam": _adam_columns, "rmsprop": _rmsprop_columns, "adagrad": _adagrad_columns}
