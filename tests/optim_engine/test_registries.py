"""The static spec against the installed torch: every knob covered, same defaults, same names."""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import pytest
import torch

from optim_engine import _datasets, _models, _optim
from optim_engine._catalog import _union_members
from optim_engine.spec import (
    OPTIMIZER_VARIANTS,
    REJECTED_OPTIMIZERS,
    REJECTED_SCHEDULERS,
    SCHEDULER_VARIANTS,
    DatasetSpec,
    LossSpec,
    ModelSpec,
    variant_names,
)

# Constructor parameters the engine supplies itself rather than the spec.
ENGINE_OWNED = {"self", "params", "optimizer", "last_epoch", "verbose", "kwargs"}
ENGINE_OWNED_BY_SCHEDULER = {
    "one_cycle_lr": {"epochs", "steps_per_epoch"},  # total_steps is derived from the run instead
    "cyclic_lr": {"scale_fn"},  # a Python callable; `mode` covers the built-in scale functions
}


def _name(variant: Any) -> str:
    return variant_names(variant)[0]


def _snake(name: str) -> str:
    # Acronyms stay whole: SparseAdam -> sparse_adam, LambdaLR -> lambda_lr.
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _same_default(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, tuple | list):
        return list(ours) == list(theirs)
    if isinstance(theirs, float) and math.isinf(theirs):
        return ours == theirs
    return ours == theirs


def _check_against(variant: Any, cls: type, extra_owned: set[str]) -> None:
    signature = inspect.signature(cls.__init__)
    params_model = variant.model_fields["params"].annotation
    fields = params_model.model_fields
    for name, parameter in signature.parameters.items():
        if name in ENGINE_OWNED or name in extra_owned or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if name == "lr":
            assert _same_default(variant.model_fields["lr"].default, parameter.default), f"{cls.__name__}.lr default"
            continue
        assert name in fields, f"{cls.__name__}({name}=...) is not in {params_model.__name__}"
        field = fields[name]
        if parameter.default is inspect.Parameter.empty:
            # torch requires it: ours either requires it too or derives it from the run (None).
            assert field.is_required() or field.default is None, f"{cls.__name__}.{name} should be required"
        else:
            assert _same_default(field.default, parameter.default), (
                f"{cls.__name__}.{name}: spec default {field.default!r}, torch default {parameter.default!r}"
            )
    unknown = set(fields) - set(signature.parameters)
    assert not unknown, f"{params_model.__name__} has fields {unknown} that {cls.__name__} does not take"


TORCH_OPTIMIZERS = [v for v in OPTIMIZER_VARIANTS if v.target.startswith("torch.")]
THIRD_PARTY = [v for v in OPTIMIZER_VARIANTS if v.extra == "pytorch-optimizer"]


@pytest.mark.parametrize("variant", TORCH_OPTIMIZERS, ids=_name)
def test_optimizer_spec_matches_torch_signature(variant: Any) -> None:
    _check_against(variant, _optim.resolve(variant.target), set())


@pytest.mark.parametrize("variant", THIRD_PARTY, ids=_name)
def test_pytorch_optimizer_spec_matches_its_signature(variant: Any) -> None:
    pytest.importorskip("pytorch_optimizer")
    _check_against(variant, _optim.resolve(variant.target), set())


@pytest.mark.parametrize("variant", SCHEDULER_VARIANTS, ids=_name)
def test_scheduler_spec_matches_torch_signature(variant: Any) -> None:
    _check_against(variant, _optim.resolve(variant.target), ENGINE_OWNED_BY_SCHEDULER.get(_name(variant), set()))


def test_every_torch_optimizer_is_offered_or_rejected_with_a_reason() -> None:
    offered = {v.target.split(":")[1] for v in TORCH_OPTIMIZERS}
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            assert name in offered or _snake(name) in REJECTED_OPTIMIZERS, name


def test_every_torch_scheduler_is_offered_or_rejected_with_a_reason() -> None:
    lrs = torch.optim.lr_scheduler
    offered = {v.target.split(":")[1] for v in SCHEDULER_VARIANTS}
    for name in dir(lrs):
        cls = getattr(lrs, name)
        if name.startswith("_") or not isinstance(cls, type):
            continue
        if issubclass(cls, lrs.LRScheduler | lrs.ReduceLROnPlateau) and cls is not lrs.LRScheduler:
            assert name in offered or _snake(name) in REJECTED_SCHEDULERS, name


def _names(union: Any) -> set[str]:
    return {n for v in _union_members(union) for n in variant_names(v)}


def test_registry_keys_agree_with_spec_unions() -> None:
    assert set(_models.MODELS) == _names(ModelSpec)
    assert set(_datasets.DATASETS) == _names(DatasetSpec)
    assert set(_models.LOSSES) == _names(LossSpec)
    assert set(_optim.OPTIMIZERS) == {_name(v) for v in OPTIMIZER_VARIANTS}
    assert set(_optim.SCHEDULERS) == {_name(v) for v in SCHEDULER_VARIANTS}
    assert not set(REJECTED_OPTIMIZERS) & set(_optim.OPTIMIZERS)


def test_file_datasets_are_built_from_the_host_checks_readers() -> None:
    from optim_engine.spec import host

    assert _datasets.DATASETS["npz"] is host.file_arrays
    assert _datasets.DATASETS["csv"] is host.file_arrays
