"""A pack's vectorized optimizers: SGD, Adam(W), RMSprop and Adagrad over blocks of stacked
parameter rows, with every hyperparameter a per-trial column.

Each trial keeps a shadow torch optimizer (over a dummy parameter) that its torch scheduler
steps; the columns are derived from the shadow's param group, so schedules are torch's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from optim_engine._optim import Scheduler

# Optimizer families and the per-trial columns their update reads, in order. Columns are
# derived per step (in float64, then cast) from the shadow optimizer's param group.
FAMILY = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "rmsprop": "rmsprop", "adagrad": "adagrad"}
RAW = {
    "sgd": ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "adagrad": ("lr", "lr_decay", "eps", "weight_decay", "maximize"),
}

GroupKey = tuple[str, bool, bool]
"""(family, amsgrad, momentum): trials with equal keys share one block of rows."""


def group_key(family: str, shadow: torch.optim.Optimizer, scheduler: Scheduler | None) -> GroupKey:
    """The block a trial's rows belong to."""
    group = shadow.param_groups[0]
    amsgrad = bool(group.get("amsgrad", False))
    # A momentum buffer when momentum is on, or may be switched on by a cycling scheduler.
    momentum = "momentum" in group and (group["momentum"] > 0 or scheduler is not None)
    return family, amsgrad, momentum


def raw_columns(family: str, shadow: torch.optim.Optimizer) -> list[float]:
    """The shadow optimizer's current hyperparameters, as the family's raw columns."""
    group = shadow.param_groups[0]
    values = dict(group)
    if "betas" in group:
        values["beta1"], values["beta2"] = group["betas"]
    return [float(values[name]) for name in RAW[family]]


@dataclass
class Group:
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

    @property
    def key(self) -> GroupKey:
        return self.family, self.amsgrad, self.momentum

    def set_flags(self, shadows: Sequence[torch.optim.Optimizer]) -> None:
        """Which optional ops the group's trials need (schedulers change lr, momentum and betas only)."""
        raws = [dict(zip(RAW[self.family], raw_columns(self.family, s), strict=True)) for s in shadows]
        self.maximize = any(r["maximize"] for r in raws)
        self.weight_decay = any(r["weight_decay"] for r in raws)
        self.nesterov = any(r.get("nesterov", 0.0) for r in raws)
        self.centered = any(r.get("centered", 0.0) for r in raws)
        self.decoupled = any(r.get("decoupled_weight_decay", 0.0) for r in raws)

    def init_state(self, rows: torch.Tensor, shadows: Sequence[torch.optim.Optimizer]) -> None:
        """A fresh optimizer state for the group's parameter ``rows``, as torch's first step makes it."""
        zeros = torch.zeros_like
        if self.family == "adam":
            self.state = {"exp_avg": zeros(rows), "exp_avg_sq": zeros(rows)}
            if self.amsgrad:
                self.state["max_exp_avg_sq"] = zeros(rows)
        elif self.family == "rmsprop":
            self.state = {"square_avg": zeros(rows)}
            if self.momentum:
                self.state["momentum_buffer"] = zeros(rows)
            if self.centered:
                self.state["grad_avg"] = zeros(rows)
        elif self.family == "adagrad":
            initial = [s.param_groups[0]["initial_accumulator_value"] for s in shadows]
            column = torch.tensor(initial, dtype=rows.dtype, device=rows.device).unsqueeze(1)
            self.state = {"sum": column.expand_as(rows).clone()}

    def update(self, params: torch.Tensor, grads: torch.Tensor, columns: list[torch.Tensor]) -> None:
        """One optimizer step for the group's rows of ``params``; ``columns`` are its [rows, 1]
        hyperparameters."""
        rows = slice(self.start, self.stop)
        _STEP[self.family](self, params[rows], grads[rows], columns)


def spans(keys: Sequence[GroupKey]) -> list[Group]:
    """One group per run of equal keys."""
    groups: list[Group] = []
    for i, (family, amsgrad, momentum) in enumerate(keys):
        if groups and groups[-1].key == (family, amsgrad, momentum):
            groups[-1].stop = i + 1
        else:
            groups.append(Group(family, amsgrad, i, i + 1, momentum=momentum))
    return groups


def select(groups: Sequence[Group], keep: Sequence[int], device: torch.device) -> list[Group]:
    """The groups of rows ``keep`` (ascending positions in the current layout), with their state;
    ``set_flags`` is left to the caller, who knows the kept rows' trials."""
    kept, position = [], 0
    for group in groups:
        local = [i - group.start for i in keep if group.start <= i < group.stop]
        if not local:
            continue
        index = torch.tensor(local, dtype=torch.long, device=device)
        state = {name: tensor.index_select(0, index) for name, tensor in group.state.items()}
        kept.append(Group(group.family, group.amsgrad, position, position + len(local), state, momentum=group.momentum))
        position += len(local)
    return kept


class Columns:
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


def epoch_columns(
    groups: Sequence[Group], raws: Sequence[torch.Tensor], first_step: int, device: torch.device
) -> dict[int, Columns]:
    """Every group's columns for an epoch, keyed by ``id(group)``.

    Args:
        groups: the pack's groups.
        raws: per row, its raw columns at each of the epoch's steps, [steps, raw columns] float64.
        first_step: the optimizer step count (1-based) of the epoch's first step.
        device: where the columns live.
    """
    steps = raws[0].shape[0]
    t = torch.arange(first_step, first_step + steps, dtype=torch.float64).unsqueeze(1)
    tables: dict[int, Columns] = {}
    for group in groups:
        raw = torch.stack(list(raws[group.start : group.stop]), dim=1)  # [steps, rows, raw columns]
        columns = _DERIVE[group.family](raw.unbind(-1), t)
        tables[id(group)] = Columns(torch.stack(columns, dim=-1).float(), device)
    return tables


# -- the updates: each reads its family's derived columns, in ``_DERIVE``'s order


def _regularized(group: Group, p: torch.Tensor, g: torch.Tensor, sign: torch.Tensor, wd: torch.Tensor) -> torch.Tensor:
    """The gradient after ``maximize`` and coupled (L2) weight decay."""
    if group.maximize:
        g = g * sign
    if group.weight_decay:
        g = g.addcmul(p, wd)
    return g


def _sgd(group: Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
    neg_lr, momentum, keep, nesterov, wd, sign = h
    g = _regularized(group, p, g, sign, wd)
    if group.momentum:
        buf = group.state.get("momentum_buffer")
        if buf is None:
            buf = group.state["momentum_buffer"] = g.clone()
        else:
            buf.mul_(momentum).addcmul_(g, keep)
        g = torch.where(nesterov > 0, g.addcmul(buf, momentum), buf) if group.nesterov else buf
    p.addcmul_(g, neg_lr)


def _adam(group: Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
    neg_step, one_minus_b1, one_minus_b2, bc2_sqrt, eps, wd, decay, sign = h
    state = group.state
    if group.weight_decay and group.decoupled:
        p.mul_(decay)  # AdamW; ``wd`` is 0 in its rows, ``decay`` 1 in the others
    g = _regularized(group, p, g, sign, wd)
    state["exp_avg"].lerp_(g, one_minus_b1)
    v = state["exp_avg_sq"]
    v.lerp_(g * g, one_minus_b2)  # beta2 * v + (1 - beta2) * g^2
    if group.amsgrad:
        torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        v = state["max_exp_avg_sq"]
    step = v.sqrt().div_(bc2_sqrt).add_(eps)  # the denominator, then the step, in one buffer
    p.addcmul_(torch.div(state["exp_avg"], step, out=step), neg_step)


def _rmsprop(group: Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
    neg_lr, alpha, one_minus_alpha, eps, wd, momentum, centered, sign = h
    state = group.state
    g = _regularized(group, p, g, sign, wd)
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


def _adagrad(group: Group, p: torch.Tensor, g: torch.Tensor, h: list[torch.Tensor]) -> None:
    neg_clr, eps, wd, sign = h
    g = _regularized(group, p, g, sign, wd)
    total = group.state["sum"]
    total.addcmul_(g, g)
    p.addcmul_(g / total.sqrt().add_(eps), neg_clr)


_STEP = {"sgd": _sgd, "adam": _adam, "rmsprop": _rmsprop, "adagrad": _adagrad}


# -- the columns: raw hyperparameters (float64, [steps, rows] each) to what the updates read


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
