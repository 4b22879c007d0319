"""2-D test functions: the formulas (numpy = torch), runs that are real ``torch.optim`` steps (a
hand-written loop and SGD's closed form agree with them), divergence ending the path where it
left, checkpoints, and the spec's rules for them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from optim_engine import EpochMetrics, TrainResult, catalog, train, train_trials
from optim_engine.packing import unpackable
from optim_engine.spec import (
    OPTIMIZER_VARIANTS,
    SURFACES,
    CostLimits,
    JobSpec,
    cost_problems,
    error_details,
    estimate,
    grid,
    static_info,
    surface,
    variant_names,
)
from optim_engine.spec.host import extra_missing


def _spec(optimizer: dict[str, Any], function: str = "rosenbrock", **overrides: Any) -> dict[str, Any]:
    steps = overrides.pop("steps_per_epoch", 10)
    params = {"steps_per_epoch": steps, **overrides.pop("function_params", {})}
    spec: dict[str, Any] = {
        "model": {"name": "point", "params": {"start": overrides.pop("start", None)}},
        "dataset": {"name": function, "params": params},
        "loss": "value",
        "optimizer": optimizer,
        "epochs": 5,
    }
    return spec | overrides


def _run(spec: dict[str, Any], **kwargs: Any) -> TrainResult:
    return train(spec, num_threads=1, **kwargs)


def _path(result: TrainResult) -> np.ndarray:
    assert result.artifacts is not None
    return np.array([result.artifacts["x"], result.artifacts["y"]], dtype=float).T


# --- the functions ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_numpy_and_torch_give_the_same_values(name: str) -> None:
    found = SURFACES[name]
    (x0, x1), (y0, y1) = found.bounds
    rng = np.random.default_rng(0)
    x, y = rng.uniform(x0, x1, 50), rng.uniform(y0, y1, 50)
    in_torch = found.value(torch.tensor(x), torch.tensor(y), torch)
    np.testing.assert_allclose(in_torch.numpy(), found.value(x, y, np), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_the_minimum_is_a_stationary_zero_and_the_start_is_on_the_plot(name: str) -> None:
    found = SURFACES[name]
    (x0, x1), (y0, y1) = found.bounds
    assert x0 <= found.start[0] <= x1
    assert y0 <= found.start[1] <= y1
    point = torch.tensor(found.minimum or (0.0, 0.0), dtype=torch.float64, requires_grad=True)
    value = found.value(point[0], point[1], torch)
    value.backward()
    assert point.grad is not None
    assert torch.linalg.vector_norm(point.grad) < 1e-9  # a saddle's (0, 0) is stationary too
    if found.minimum is not None:
        assert abs(value.item()) < 1e-12
        assert np.min(grid(name, 41)[2]) >= -1e-12  # nothing on the plot lies below it


def test_known_values() -> None:
    assert SURFACES["rosenbrock"].value(-1.5, 2.0) == pytest.approx(2.5**2 + 100 * 0.25**2)
    assert SURFACES["beale"].value(1.0, 1.5) == pytest.approx(2.0**2 + 3.5**2 + 5.0**2)
    assert SURFACES["rastrigin"].value(0.5, 0.0) == pytest.approx(0.25 + 10 + 10)
    assert SURFACES["saddle"].value(1.0, 2.0) == -3.0
    assert surface("quadratic", 100.0).value(1.0, 1.0) == pytest.approx(50.5)
    assert surface("rosenbrock", 100.0) is SURFACES["rosenbrock"]  # only the quadratic has a condition


def test_the_grid_rows_follow_y_as_contour_expects() -> None:
    xs, ys, zs = grid("quadratic", 5, condition=4.0)
    assert xs[0] == -2.5
    assert xs[-1] == 2.5
    assert ys[0] == -1.5
    assert ys[-1] == 1.5
    assert len(zs) == len(ys) == 5
    assert all(len(row) == 5 for row in zs)
    assert zs[0][2] == pytest.approx(0.5 * (0.0 + 4.0 * 1.5**2))  # x = 0, y = -1.5
    json.dumps({"x": xs, "y": ys, "z": zs}, allow_nan=False)
    with pytest.raises(ValueError, match="at least 2"):
        grid("saddle", 1)


# --- runs are real torch.optim steps ----------------------------------------------------------


def _hand_written(
    start: tuple[float, float],
    function: str,
    make: Any,
    epochs: int,
    steps: int,
    scheduler: Any = None,
    per_step: bool = False,
    clip: float | None = None,
) -> tuple[np.ndarray, list[float]]:
    """The textbook loop: zero_grad, f(p), backward, clip, step; the path and each epoch's lr."""
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = make([p])
    sched = scheduler(optimizer) if scheduler is not None else None
    f = SURFACES[function]
    path, lrs = [p.detach().tolist()], []
    for _epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for _step in range(steps):
            optimizer.zero_grad()
            f.value(p[0], p[1], torch).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_([p], clip)
            optimizer.step()
            if sched is not None and per_step:
                sched.step()
            path.append(p.detach().tolist())
        if sched is not None and not per_step:
            sched.step()
    return np.array(path), lrs


def test_a_path_equals_a_hand_written_torch_loop_with_an_epoch_scheduler_and_clipping() -> None:
    spec = _spec(
        {"name": "adam", "lr": 0.05},
        scheduler={"name": "step_lr", "params": {"step_size": 2, "gamma": 0.5}},
        grad_clip_norm=5.0,
        epochs=6,
    )
    result = _run(spec)
    expected, lrs = _hand_written(
        (-1.5, 2.0),
        "rosenbrock",
        lambda ps: torch.optim.Adam(ps, lr=0.05),
        6,
        10,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        clip=5.0,
    )
    assert result.outcome == "completed"
    np.testing.assert_allclose(_path(result), expected, rtol=1e-10, atol=1e-12)
    assert [m.lr for m in result.history] == pytest.approx(lrs)
    assert lrs[-1] == pytest.approx(0.05 / 4)  # the scheduler did step


def test_a_path_equals_a_hand_written_torch_loop_with_a_per_step_scheduler() -> None:
    spec = _spec(
        {"name": "adam", "lr": 0.001},
        "beale",
        scheduler={"name": "one_cycle_lr", "params": {"max_lr": 0.1}},
        epochs=4,
    )
    expected, _ = _hand_written(
        (1.0, 1.5),
        "beale",
        lambda ps: torch.optim.Adam(ps, lr=0.001),
        4,
        10,
        scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=40),
        per_step=True,
    )
    np.testing.assert_allclose(_path(_run(spec)), expected, rtol=1e-10, atol=1e-12)


def test_sgd_on_the_quadratic_follows_the_closed_form() -> None:
    lr, condition, steps = 0.05, 10.0, 30
    spec = _spec({"name": "sgd", "lr": lr}, "quadratic", function_params={"condition": condition}, epochs=3)
    result = _run(spec)
    t = np.arange(steps + 1)
    expected = np.stack([-2.0 * (1 - lr) ** t, 1.0 * (1 - lr * condition) ** t], axis=1)
    np.testing.assert_allclose(_path(result), expected, rtol=1e-12)
    assert result.artifacts is not None
    values = np.array(result.artifacts["value"])
    np.testing.assert_allclose(values, 0.5 * (expected[:, 0] ** 2 + condition * expected[:, 1] ** 2), rtol=1e-12)
    # An epoch's train_loss is the mean value at the points its steps reached.
    assert [m.train_loss for m in result.history] == pytest.approx(
        [values[1:11].mean(), values[11:21].mean(), values[21:].mean()]
    )
    assert all(m.val_loss is None and m.val_accuracy is None and m.samples_per_second > 0 for m in result.history)


@pytest.mark.parametrize(
    "optimizer",
    [{"name": "adam", "lr": 0.1}, {"name": "sgd", "lr": 0.002, "params": {"momentum": 0.9}}],
    ids=["adam", "momentum"],
)
def test_adam_and_momentum_reach_the_rosenbrock_minimum(optimizer: dict[str, Any]) -> None:
    result = _run(_spec(optimizer, epochs=100, steps_per_epoch=20))
    assert result.outcome == "completed"
    assert np.allclose(_path(result)[-1], [1.0, 1.0], atol=1e-4)
    assert result.history[-1].train_loss < 1e-8 < result.history[0].train_loss


@pytest.mark.parametrize("variant", OPTIMIZER_VARIANTS, ids=lambda v: variant_names(v)[0])
def test_every_optimizer_in_the_registry_moves_the_point(variant: Any) -> None:
    if extra_missing(variant.extra):
        pytest.skip(f"needs {variant.extra}")
    result = _run(_spec({"name": variant_names(variant)[0]}, "quadratic", epochs=2, steps_per_epoch=5))
    assert result.outcome == "completed"
    path = _path(result)
    assert path.shape == (11, 2)
    assert np.isfinite(path).all()
    assert not np.array_equal(path[0], path[-1])


# --- divergence -------------------------------------------------------------------------------


def test_sgd_diverges_on_the_quadratic_above_two_over_the_condition() -> None:
    quadratic = {"function_params": {"condition": 10.0}, "epochs": 3}
    stable = _run(_spec({"name": "sgd", "lr": 0.19}, "quadratic", **quadratic))
    assert stable.outcome == "completed"
    assert abs(_path(stable)[-1]).max() < 0.1
    result = _run(_spec({"name": "sgd", "lr": 0.25}, "quadratic", **quadratic))
    # |y| grows 1.5x a step: the value passes 1000 x (|f(start)| + 1) = 8000 at the 10th step.
    assert (result.outcome, result.diverged_epoch, result.epochs_done) == ("diverged", 1, 1)
    assert result.artifacts is not None
    values = result.artifacts["value"]
    assert len(values) == 11
    assert values[-1] > 8000 >= max(values[:-1])
    assert result.history[0].train_loss == pytest.approx(np.mean(values[1:]))


def test_a_coordinate_past_the_limit_ends_a_saddle_escape() -> None:
    result = _run(_spec({"name": "sgd", "lr": 0.1}, "saddle", epochs=20))
    path = _path(result)
    # y grows 1.2x a step from 0.001 while the value falls without bound: only the coordinate stops it.
    assert result.outcome == "diverged"
    assert abs(path[-1, 1]) > 1e6 >= abs(path[:-1, 1]).max()
    escape = math.ceil(math.log(1e6 / 0.001) / math.log(1.2))  # the first step past 1e6: 114
    assert (len(path), result.diverged_epoch) == (escape + 1, math.ceil(escape / 10))


def test_with_divergence_off_non_finite_points_are_stored_as_none() -> None:
    spec = _spec({"name": "sgd", "lr": 100.0}, "quadratic", divergence={"enabled": False}, epochs=20)
    result = _run(spec)
    assert result.outcome == "completed"
    assert result.artifacts is not None
    assert len(result.artifacts["y"]) == 201
    assert None in result.artifacts["y"]
    assert None in result.artifacts["value"]
    json.dumps(result.artifacts, allow_nan=False)  # storable as JSON as it is


# --- run control ------------------------------------------------------------------------------


def test_a_resumed_run_has_the_whole_path_of_an_uninterrupted_one(tmp_path: Path) -> None:
    spec = _spec({"name": "adam", "lr": 0.05}, scheduler={"name": "step_lr", "params": {"step_size": 2}}, epochs=6)
    whole = _run(spec)
    seen: list[EpochMetrics] = []
    first = _run(spec, on_epoch=seen.append, should_stop=lambda: len(seen) >= 3, checkpoint_dir=tmp_path)
    assert (first.outcome, first.epochs_done) == ("cancelled", 3)
    assert first.artifacts is not None
    assert len(first.artifacts["x"]) == 31
    resumed = _run(spec, checkpoint_dir=tmp_path)
    assert (resumed.outcome, resumed.resumed_from_epoch, resumed.epochs_done) == ("completed", 3, 6)
    assert resumed.artifacts == whole.artifacts
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in whole.history]


def test_train_trials_runs_a_function_alone_with_its_callbacks() -> None:
    epochs: list[tuple[int, int]] = []
    finished: list[tuple[int, str]] = []
    (result,) = train_trials(
        [_spec({"name": "sgd", "lr": 0.01}, "quadratic", epochs=3)],
        on_epoch=lambda i, m: epochs.append((i, m.epoch)),
        on_finish=lambda i, r: finished.append((i, r.outcome)),
    )
    assert epochs == [(0, 1), (0, 2), (0, 3)]
    assert finished == [(0, "completed")]
    assert result.artifacts is not None
    assert result.artifacts["kind"] == "trajectory"
    assert result.artifacts["function"] == "quadratic"
    with pytest.raises(ValueError, match=r"model\.name: point is not packable"):
        train_trials([_spec({"name": "sgd"}, "quadratic")], packed=True)


def test_early_stopping_on_the_training_loss_and_plateau_schedules_work() -> None:
    spec = _spec(
        {"name": "sgd", "lr": 0.1},
        "quadratic",
        early_stopping={"monitor": "train_loss", "patience": 2, "min_delta": 1e-3},
        scheduler={"name": "reduce_lr_on_plateau", "params": {"patience": 0}},
        epochs=50,
    )
    result = _run(spec)
    assert result.outcome == "early_stopped"
    assert result.epochs_done < 50


# --- the spec ---------------------------------------------------------------------------------


def _problem(raw: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(raw)
    (detail,) = error_details(caught.value.errors())
    return ".".join(detail["loc"]), detail["msg"]


@pytest.mark.parametrize(
    ("patch", "where", "says"),
    [
        ({"loss": "mse"}, "loss", "use value"),
        ({"model": {"name": "linear"}}, "model", "its model is point"),
        ({"compile": True}, "compile", "no network to compile"),
        ({"precision": "bf16"}, "precision", "fp32"),
        ({"early_stopping": {}}, "early_stopping.monitor", "monitor train_loss"),
        ({"lr_range_test": {}}, "lr_range_test", "not a 2-D function"),
        ({"model": {"name": "point", "params": {"start": [1.0, 1e5]}}}, "model.params.start.1", "less than"),
        ({"model": {"name": "point", "params": {"start": [1.0]}}}, "model.params.start.1", "required"),
        ({"dataset": {"name": "quadratic", "params": {"condition": 0.5}}}, "dataset.params.condition", ""),
        ({"dataset": {"name": "saddle", "val_fraction": 0.2}}, "dataset.val_fraction", "unknown field 'val_fraction'"),
        (
            {"dataset": {"name": "saddle", "params": {"steps_per_epoch": 0}}},
            "dataset.params.steps_per_epoch",
            "",
        ),
    ],
)
def test_function_spec_rules_name_the_field(patch: dict[str, Any], where: str, says: str) -> None:
    loc, msg = _problem(_spec({"name": "sgd"}) | patch)
    assert loc == where
    assert says in msg


def test_point_and_value_need_a_function_dataset() -> None:
    assert _problem({"optimizer": {"name": "sgd"}, "model": {"name": "point"}})[0] == "model"
    loc, msg = _problem({"optimizer": {"name": "sgd"}, "loss": "value"})
    assert loc == "loss"
    assert "regression" in msg


def test_batch_size_is_ignored_and_the_start_defaults_to_the_functions() -> None:
    a = _run(_spec({"name": "sgd", "lr": 0.001}, epochs=1, batch_size=1))
    b = _run(_spec({"name": "sgd", "lr": 0.001}, epochs=1, batch_size=512))
    assert a.artifacts == b.artifacts
    assert _path(a)[0].tolist() == [-1.5, 2.0]
    custom = _run(_spec({"name": "sgd", "lr": 0.001}, epochs=1, start=[0.5, -0.5]))
    assert _path(custom)[0].tolist() == [0.5, -0.5]


def test_cost_counts_two_parameters_and_epochs_times_steps() -> None:
    spec = JobSpec.model_validate(_spec({"name": "adam"}, "beale", epochs=7, steps_per_epoch=30))
    info = static_info(spec.dataset)
    assert info is not None
    assert info.task == "function"
    cost = estimate(spec, info)
    assert (cost.parameters, cost.optimizer_state, cost.dataset_bytes, cost.outputs, cost.steps) == (2, 4, 0, 1, 210)
    limits = CostLimits(10**6, 10**9, 10**9, 10**4, max_steps=100)
    ((where, message),) = cost_problems(spec, info, limits)
    assert where == ("dataset", "params", "steps_per_epoch")
    assert "7 epochs x 30 steps per epoch are 210" in message
    many_epochs = JobSpec.model_validate(_spec({"name": "adam"}, epochs=300, steps_per_epoch=2))
    assert cost_problems(many_epochs, info, limits)[0][0] == ("epochs",)


def test_catalog_lists_the_functions_the_point_and_the_value_loss() -> None:
    entries = catalog()
    datasets = {e["name"]: e for e in entries["datasets"]}
    assert set(SURFACES) <= set(datasets)
    assert datasets["rosenbrock"]["surface"] == {
        "start": [-1.5, 2.0],
        "bounds": [[-2.0, 2.0], [-1.0, 3.0]],
        "minimum": [1.0, 1.0],
    }
    assert datasets["saddle"]["surface"]["minimum"] is None
    assert "condition" in datasets["quadratic"]["params_schema"]["properties"]
    assert any(e["name"] == "point" and e["packable"] is False for e in entries["models"])
    assert next(e for e in entries["losses"] if e["name"] == "value")["tasks"] == ["function"]
    assert (("model", "name"), "point is not packable (packable: linear, logistic_regression, mlp)") in unpackable(
        JobSpec.model_validate(_spec({"name": "sgd"}))
    )


def test_a_long_path_is_stored_evenly_thinned_with_its_ends() -> None:
    from optim_engine._surface import STORED_POINTS, _Path

    path = _Path()
    for i in range(12_001):
        path.add([float(i), -float(i)], float(i) ** 0.5)
    stored = path.artifacts("quadratic")
    assert len(stored["x"]) <= STORED_POINTS
    assert stored["x"][0] == 0.0
    assert stored["x"][-1] == 12_000.0, "the last point is always kept"
    assert stored["stride"] == 3
    assert stored["x"][:3] == [0.0, 3.0, 6.0]
    short = _Path()
    for i in range(11):
        short.add([float(i), 0.0], 1.0)
    assert short.artifacts("quadratic")["x"] == [float(i) for i in range(11)], "short paths are kept whole"


def test_a_2d_run_past_the_path_cap_is_a_field_problem() -> None:
    spec = {"model": {"name": "point"}, "dataset": {"name": "rosenbrock", "params": {"steps_per_epoch": 100_000}}}
    with pytest.raises(ValidationError, match="steps_per_epoch"):
        JobSpec.model_validate(spec | {"loss": "value", "optimizer": {"name": "sgd"}, "epochs": 3})
