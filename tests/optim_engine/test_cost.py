"""The cost estimate: parameter counts equal the models the engine builds, the optimizer state
table bounds torch's state after a step, dataset bytes equal the built tensors, and each bound
names the field that drives it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from optim_engine import _datasets, _models, _optim
from optim_engine.spec import (
    OPTIMIZER_VARIANTS,
    CostLimits,
    JobSpec,
    cost_problems,
    dataset_info,
    estimate,
    variant_names,
)
from optim_engine.spec import cost as spec_cost
from optim_engine.spec.host import extra_missing

LIMITS = CostLimits(
    max_parameters=50_000_000,
    max_model_bytes=8 << 30,
    max_dataset_bytes=2 << 30,
    max_outputs=100_000,
    max_steps=10_000_000,
)


def _spec(model: dict[str, Any], dataset: dict[str, Any], loss: str = "cross_entropy", **overrides: Any) -> JobSpec:
    raw = {"model": model, "dataset": dataset, "loss": loss, "optimizer": {"name": "sgd"}, "device": "cpu"}
    return JobSpec.model_validate(raw | overrides)


CLASSES = {"name": "synthetic_classification", "params": {"n_samples": 64, "n_features": 7, "n_classes": 5}}
TARGETS = {"name": "synthetic_regression", "params": {"n_samples": 64, "n_features": 6, "n_targets": 3}}
MODEL_SHAPES = {
    "linear, bias": _spec({"name": "linear"}, TARGETS, "mse"),
    "linear, no bias": _spec({"name": "linear", "params": {"bias": False}}, TARGETS, "mse"),
    "logistic_regression": _spec({"name": "logistic_regression"}, CLASSES),
    "logistic_regression, bce": _spec({"name": "logistic_regression"}, {"name": "breast_cancer"}, "bce_with_logits"),
    "mlp depth 0": _spec({"name": "mlp", "params": {"depth": 0}}, CLASSES),
    "mlp depth 1": _spec({"name": "mlp", "params": {"depth": 1, "width": 9}}, TARGETS, "mse"),
    "mlp depth 3, dropout": _spec({"name": "mlp", "params": {"depth": 3, "width": 11, "dropout": 0.1}}, CLASSES),
    "cnn on digits, pools stop at 1x1": _spec(
        {"name": "cnn", "params": {"channels": [4, 8, 16, 3], "kernel_size": 5, "hidden": 13}}, {"name": "digits"}
    ),
    "cnn on mnist": _spec({"name": "cnn"}, {"name": "mnist"}),
    "cnn on cifar10, one block": _spec({"name": "cnn", "params": {"channels": [6], "hidden": 20}}, {"name": "cifar10"}),
}


@pytest.mark.parametrize("name", list(MODEL_SHAPES))
def test_parameter_counts_equal_the_built_models(name: str) -> None:
    spec = MODEL_SHAPES[name]
    built = _models.build_model(spec)
    assert estimate(spec, dataset_info(spec.dataset)).parameters == sum(p.numel() for p in built.parameters())


def test_a_file_datasets_estimate_uses_the_files_shape(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(data_root / "d.npz", x=rng.standard_normal((30, 4, 3)), y=rng.integers(0, 6, 30))
    spec = _spec({"name": "mlp", "params": {"depth": 2, "width": 5}}, {"name": "npz", "params": {"path": "d.npz"}})
    cost = estimate(spec, dataset_info(spec.dataset))
    assert cost.parameters == sum(p.numel() for p in _models.build_model(spec).parameters())
    assert cost.outputs == 6


@pytest.mark.parametrize(
    "dataset",
    [
        CLASSES | {"val_fraction": 0.25},
        TARGETS | {"val_fraction": 0.0},
        {"name": "breast_cancer", "val_fraction": 0.3},
        {"name": "diabetes"},
    ],
)
def test_dataset_bytes_and_steps_equal_the_built_tensors(dataset: dict[str, Any]) -> None:
    task = "classification" if dataset["name"] in ("synthetic_classification", "breast_cancer") else "regression"
    loss = (
        "bce_with_logits"
        if dataset["name"] == "breast_cancer"
        else ("cross_entropy" if task != "regression" else "mse")
    )
    spec = _spec({"name": "linear" if task == "regression" else "logistic_regression"}, dataset, loss, batch_size=7)
    data = _datasets.build_dataset(spec)
    cost = estimate(spec, dataset_info(spec.dataset))
    tensors = (data.x_train, data.y_train, data.x_val, data.y_val)
    assert cost.dataset_bytes == sum(t.numel() * t.element_size() for t in tensors)
    assert cost.steps == spec.epochs * _optim.steps_per_epoch(data.x_train.shape[0], spec.batch_size)


# --- the optimizer state table ------------------------------------------------------------------

# Params that change how much state an optimizer keeps; every other optimizer runs as defaulted.
STATE_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "sgd": [{}, {"momentum": 0.9}],
    "adam": [{}, {"amsgrad": True}],
    "adamw": [{}, {"amsgrad": True}],
    "rmsprop": [{}, {"momentum": 0.9, "centered": True}],
    "adabelief": [{}, {"ams_bound": True}],
    "lbfgs": [{"history_size": 3}],
}
# Where the table is an upper bound rather than exact: Adafactor factors matrices; L-BFGS fills
# its history over steps.
BOUNDS_ONLY = {"adafactor", "lbfgs"}


def _optimizer_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for variant in OPTIMIZER_VARIANTS:
        if variant.extra == "plugin" or extra_missing(variant.extra):
            continue
        name = variant_names(variant)[0]
        cases += [(name, params) for params in STATE_VARIANTS.get(name, [{}])]
    return cases


def _state_floats(optimizer: torch.optim.Optimizer) -> int:
    """Floats in per-parameter state: every tensor of one dimension or more (not 0-d counters;
    not optimizer-wide entries such as MADGRAD's step, which are not per parameter)."""
    total = 0
    for state in optimizer.state.values():
        if not isinstance(state, dict):
            assert not isinstance(state, torch.Tensor) or state.numel() == 1
            continue
        for value in state.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, torch.Tensor) and item.dim() > 0:
                    total += item.numel()
    return total


@pytest.mark.parametrize(("name", "params"), _optimizer_cases(), ids=lambda v: str(v))
def test_the_optimizer_state_table_against_torchs_state_after_a_step(name: str, params: dict[str, Any]) -> None:
    spec = _spec(
        {"name": "mlp", "params": {"depth": 1, "width": 4}},
        CLASSES,
        optimizer={"name": name, "params": params},
    )
    model = _models.build_model(spec)
    optimizer = _optim.build_optimizer(spec, model)
    x, y = torch.randn(16, 7), torch.randint(0, 5, (16,))

    def closure() -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss  # type: ignore[return-value]  # torch's closures return the loss tensor

    optimizer.step(closure)
    cost = estimate(spec, dataset_info(spec.dataset))
    actual = _state_floats(optimizer)
    if name in BOUNDS_ONLY:
        assert 0 < actual <= cost.optimizer_state
    else:
        assert actual == cost.optimizer_state


def test_every_builtin_optimizer_has_a_table_entry() -> None:
    builtin = {variant_names(v)[0] for v in OPTIMIZER_VARIANTS if v.extra != "plugin"}
    assert builtin <= set(spec_cost._STATE)


# --- the bounds, each named at its field ----------------------------------------------------------


def _located(spec: JobSpec) -> dict[tuple[str, ...], str]:
    return dict(cost_problems(spec, dataset_info(spec.dataset), LIMITS))


def test_a_deep_wide_mlp_is_over_the_parameter_bound_at_its_width() -> None:
    spec = _spec({"name": "mlp", "params": {"depth": 64, "width": 16384}}, TARGETS, "mse")
    problems = _located(spec)
    assert list(problems) == [("model", "params", "width")]
    width = 16384
    expected = (6 * width + width) + 63 * (width * width + width) + (width * 3 + 3)
    assert f"has {expected:,} parameters" in problems[("model", "params", "width")]
    assert "OPTIMLAB_MAX_PARAMETERS" in problems[("model", "params", "width")]


def test_a_huge_synthetic_dataset_is_over_the_dataset_bound_at_its_features() -> None:
    dataset = {"name": "synthetic_regression", "params": {"n_samples": 5_000_000, "n_features": 65536}}
    problems = _located(_spec({"name": "linear"}, dataset, "mse"))
    assert list(problems) == [("dataset", "params", "n_features")]
    assert "5,000,000 samples x 65,536 features" in problems[("dataset", "params", "n_features")]


def test_lbfgs_history_is_over_the_memory_bound_at_history_size() -> None:
    spec = _spec(
        {"name": "mlp", "params": {"depth": 2, "width": 2048}},
        CLASSES,
        optimizer={"name": "lbfgs", "params": {"history_size": 10_000}},
    )
    cost = estimate(spec, dataset_info(spec.dataset))
    assert cost.parameters < LIMITS.max_parameters < cost.optimizer_state
    assert list(_located(spec)) == [("optimizer", "params", "history_size")]


def test_steps_are_bounded_at_batch_size_or_epochs() -> None:
    many = {"name": "synthetic_regression", "params": {"n_samples": 1_000_000}}
    per_batch = _spec({"name": "linear"}, many, "mse", batch_size=1, epochs=20)
    assert list(_located(per_batch)) == [("batch_size",)]
    assert estimate(per_batch, dataset_info(per_batch.dataset)).steps == 20 * 800_000
    long = _spec({"name": "linear"}, many, "mse", batch_size=100, epochs=100_000)
    assert list(_located(long)) == [("epochs",)]


def test_outputs_are_bounded_at_the_field_that_sets_them() -> None:
    spec = _spec({"name": "logistic_regression"}, CLASSES)
    info = dataset_info(spec.dataset)
    tight = LIMITS._replace(max_outputs=4)
    assert dict(cost_problems(spec, info, tight)).keys() == {("dataset", "params", "n_classes")}
    assert cost_problems(spec, info, LIMITS) == []
    assert math.isclose(estimate(spec, info).model_bytes, 4 * 2 * (7 * 5 + 5))
