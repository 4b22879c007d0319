"""Optimizer and scheduler builders: wrap torch.optim (and registered third-party classes)."""

from __future__ import annotations

import importlib
import inspect
import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler

from optim_engine.spec import OPTIMIZER_VARIANTS, SCHEDULER_VARIANTS, JobSpec, variant_names

# name -> spec variant; each variant names the class it builds as ``module:attribute``.
OPTIMIZERS: dict[str, Any] = {variant_names(v)[0]: v for v in OPTIMIZER_VARIANTS}
SCHEDULERS: dict[str, Any] = {variant_names(v)[0]: v for v in SCHEDULER_VARIANTS}

Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


def resolve(target: str) -> Any:
    """Import ``module:attribute``; a missing optional package gives an error that says which."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"{target} needs the {exc.name!r} package, which is not installed") from exc
    return getattr(module, attribute)


def _fused_supported(cls: type, device: torch.device) -> bool:
    if "fused" not in inspect.signature(cls).parameters:
        return False
    try:  # private in torch; fall back to the devices every torch >= 2.5 supports
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
    except ImportError:
        supported = ["cuda", "cpu"]
    return device.type in supported


def choose_implementation(cls: type, kwargs: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], str]:
    """Pick the fastest implementation torch has for this optimizer on this device.

    The one place the choice is made. A spec that sets ``fused`` or ``foreach`` itself is obeyed;
    otherwise fused kernels where torch ships them for the device, else foreach on accelerators
    (torch's own default), else the per-tensor loop.
    """
    kwargs = dict(kwargs)
    pinned = kwargs.get("fused") is not None or kwargs.get("foreach") is not None
    if pinned:
        name = "fused" if kwargs.get("fused") else "foreach" if kwargs.get("foreach") else "for-loop"
        return kwargs, name
    if "fused" in kwargs and not kwargs.get("differentiable") and _fused_supported(cls, device):
        kwargs["fused"] = True
        return kwargs, "fused"
    if "foreach" in kwargs and device.type != "cpu" and not kwargs.get("differentiable"):
        kwargs["foreach"] = True
        return kwargs, "foreach"
    return kwargs, "for-loop"


def build_optimizer(
    spec: JobSpec | dict[str, Any], params: Iterable[torch.Tensor] | torch.nn.Module, device: torch.device | str = "cpu"
) -> Optimizer:
    """Build the spec's optimizer over ``params`` (a module or its parameters).

    The implementation (fused, foreach, for-loop) is chosen for ``device`` unless the spec pins
    one; ``optimizer.engine_implementation`` records the choice.
    """
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    variant = spec.optimizer
    cls = resolve(variant.target)
    kwargs, implementation = choose_implementation(cls, variant.params.model_dump(), torch.device(device))
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    optimizer: Optimizer = cls(params, lr=variant.lr, **kwargs)
    optimizer.engine_implementation = implementation  # type: ignore[attr-defined]
    return optimizer


def _one_scheduler(sched: Any, optimizer: Optimizer, span: int) -> Scheduler:
    cls = resolve(sched.target)
    kwargs = sched.params.model_dump()
    if sched.name == "cosine_annealing_lr" and kwargs["T_max"] is None:
        kwargs["T_max"] = span
    if sched.name == "one_cycle_lr" and kwargs["total_steps"] is None:
        kwargs["total_steps"] = span
    return cls(optimizer, **kwargs)  # type: ignore[no-any-return]


def build_scheduler(spec: JobSpec | dict[str, Any], optimizer: Optimizer, steps_per_epoch: int) -> Scheduler | None:
    """Build the spec's scheduler (a list becomes a SequentialLR), or None.

    Spans are counted in the schedulers' interval: epochs, or optimizer steps
    (epochs x ``steps_per_epoch``) for per-step schedules such as OneCycleLR.
    """
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    chain = spec.schedulers
    if not chain:
        return None
    unit = steps_per_epoch if chain[0].interval == "step" else 1
    epochs = [s.epochs for s in chain[:-1]]
    epochs.append(spec.epochs - sum(e for e in epochs if e is not None))
    built = [_one_scheduler(s, optimizer, e * unit) for s, e in zip(chain, epochs, strict=True)]
    if len(built) == 1:
        return built[0]
    milestones = [e * unit for e in itertools.accumulate(epochs[:-1])]
    return lr_scheduler.SequentialLR(optimizer, schedulers=built, milestones=milestones)  # type: ignore[arg-type]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last batch may be smaller)."""
    return max(1, -(-n_train // batch_size))
