"""The adaptive search space: validation that names the broken path, Optuna's view of each kind
(indices for choices Optuna cannot hold), define-by-run suggestions that respect conditions, and
the samplers each strategy gets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ValidationError

from service.search import space as search_space
from service.search.space import (
    SPACE,
    STRATEGIES,
    SearchSpace,
    available_strategies,
    from_optuna_value,
    make_sampler,
    parse_space,
    suggest,
    suggestion_order,
    to_optuna,
    to_optuna_value,
    uses_indices,
)
from service.search.study import ask, rebuild

SGD_MOMENTUM: dict[str, Any] = {
    "optimizer.name": {"choice": ["sgd", "adam"]},
    "optimizer.params.momentum": {"uniform": [0.0, 0.99], "when": {"optimizer.name": ["sgd"]}},
    "optimizer.lr": {"log_uniform": [1e-4, 1.0]},
}


class Body(BaseModel):
    """How a request body will hold a space: the field's name leads every error's location."""

    space: SearchSpace


def error_of(space: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"space": space})
    (error,) = caught.value.errors()
    return dict(error)


@pytest.mark.parametrize(
    ("space", "path", "says"),
    [
        ({"a": {"choice": [1], "when": {"b": [1]}}}, "a", "b, which is not a parameter of the space"),
        (
            {"a": {"uniform": [0, 1]}, "b": {"int": [0, 3], "when": {"a": [0.5]}}},
            "b",
            "a, which is not a choice",
        ),
        (
            {"name": {"choice": ["sgd", "adam"]}, "momentum": {"uniform": [0, 1], "when": {"name": ["rmsprop"]}}},
            "momentum",
            'when name is "rmsprop", not one of name\'s choices',
        ),
        # JSON values, not Python's ==: true is not among [1, 2].
        ({"n": {"choice": [1, 2]}, "m": {"uniform": [0, 1], "when": {"n": [True]}}}, "m", "when n is true"),
        (
            {"a": {"choice": [1], "when": {"b": [1]}}, "b": {"choice": [1], "when": {"a": [1]}}},
            "a",
            "conditions form a cycle (through a, b)",
        ),
        ({"a": {"choice": [1, 2], "when": {"a": [1]}}}, "a", "conditions form a cycle (through a)"),
    ],
)
def test_a_broken_condition_is_a_value_error_naming_its_path(space: Any, path: str, says: str) -> None:
    error = error_of(space)
    assert error["type"] == "value_error"
    assert error["loc"] == ("space",)
    assert error["msg"].startswith(f"Value error, {path}: ")
    assert says in error["msg"]


@pytest.mark.parametrize(
    ("param", "says"),
    [
        ({"choice": [1], "uniform": [0, 1]}, "give exactly one of choice, uniform, log_uniform, int"),
        ({"when": {"b": [1]}}, "(got none)"),
        ({"choice": None}, "not null"),
        ({"log_uniform": [0.0, 1.0]}, "log_uniform needs low > 0"),
        ({"int": [5, 1]}, "low <= high"),
    ],
)
def test_a_parameter_is_exactly_one_distribution_and_the_error_sits_at_its_path(param: Any, says: str) -> None:
    error = error_of({"b": {"choice": [1]}, "opt.lr": param})
    assert error["loc"] == ("space", "opt.lr")
    assert says in error["msg"]


def test_paths_and_conditions_are_shaped_as_the_grid_and_random_search_shape_them() -> None:
    assert error_of({"Optimizer.lr": {"uniform": [0, 1]}})["type"] == "string_pattern_mismatch"
    assert error_of({})["type"] == "too_short"
    assert error_of({"a": {"choice": [1], "when": {}}})["loc"] == ("space", "a", "when")
    assert error_of({"a": {"choice": [1], "when": {"b": []}}})["loc"] == ("space", "a", "when", "b")
    parsed = parse_space({"optimizer.lr": {"log_uniform": [1e-4, 1]}, "batch_size": {"int": [8, 64]}})
    assert parsed["optimizer.lr"].log_uniform == (1e-4, 1.0)
    assert parsed["batch_size"].integer == (8, 64)
    assert parsed["batch_size"].when == {}


def test_the_schema_states_one_kind_beside_an_optional_condition() -> None:
    """What the API's OpenAPI document will say, so that schema-valid bodies pass validation."""
    schema = SPACE.json_schema()
    param = schema["$defs"]["SearchParam"]
    assert param["oneOf"] == [{"required": [kind]} for kind in ("choice", "uniform", "log_uniform", "int")]
    assert "anyOf" not in param["properties"]["choice"]
    assert param["properties"]["when"]["additionalProperties"] is False
    assert param["properties"]["when"]["minProperties"] == 1
    assert schema["additionalProperties"] is False


def test_each_kind_becomes_its_optuna_distribution() -> None:
    space = parse_space(
        {
            "name": {"choice": ["sgd", "adam", None, 0.5]},
            "lr": {"log_uniform": [1e-5, 0.1]},
            "momentum": {"uniform": [0.0, 0.99]},
            "batch_size": {"int": [8, 256]},
        }
    )
    assert to_optuna(space["name"]) == CategoricalDistribution(["sgd", "adam", None, 0.5])
    assert to_optuna(space["lr"]) == FloatDistribution(1e-5, 0.1, log=True)
    assert to_optuna(space["momentum"]) == FloatDistribution(0.0, 0.99)
    assert to_optuna(space["batch_size"]) == IntDistribution(8, 256)
    assert not uses_indices(space["name"])
    assert to_optuna_value("name", space["name"], "adam") == "adam"


@pytest.mark.parametrize(
    "choices",
    [
        [{"name": "sgd", "params": {"momentum": 0.9}}, {"name": "adam"}],  # objects Optuna cannot store
        [[32], [64, 64]],  # lists
        [1, True],  # Optuna's == lookup maps true to 1
        [1, 1.0],  # and 1.0 to 1
    ],
)
def test_choices_optuna_cannot_hold_or_tell_apart_are_indices_mapped_back(choices: list[Any]) -> None:
    (param,) = parse_space({"x": {"choice": choices}}).values()
    assert uses_indices(param)
    assert to_optuna(param) == CategoricalDistribution(list(range(len(choices))))
    for index, value in enumerate(choices):
        assert to_optuna_value("x", param, json.loads(json.dumps(value))) == index
        back = from_optuna_value(param, index)
        assert json.dumps(back) == json.dumps(value)
    with pytest.raises(ValueError, match=r"^x: \"other\" is not one of its choices"):
        to_optuna_value("x", param, "other")


def test_a_suggested_object_is_a_copy_the_caller_may_change() -> None:
    space = parse_space({"optimizer": {"choice": [{"name": "sgd", "params": {"momentum": 0.9}}]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = suggest(study.ask(), space)
    params["optimizer"]["params"]["momentum"] = 0.0
    assert space["optimizer"].choice == [{"name": "sgd", "params": {"momentum": 0.9}}]


def test_parents_come_before_children_whatever_the_key_order() -> None:
    forward = {
        "a": {"choice": ["x", "y"]},
        "b": {"choice": [1, 2], "when": {"a": ["x"]}},
        "c": {"uniform": [0, 1], "when": {"b": [1]}},
        "d": {"int": [0, 3]},
    }
    backward = dict(reversed(list(forward.items())))
    assert suggestion_order(parse_space(forward)) == ["a", "b", "c", "d"]
    assert suggestion_order(parse_space(backward)) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("strategy", ["tpe", "random"])
def test_momentum_is_searched_for_sgd_only(strategy: str) -> None:
    """50 asks, told as they come: momentum with every sgd trial, never with adam; both branches
    are explored, so the assertion is not vacuous."""
    space = parse_space(SGD_MOMENTUM)
    study = rebuild([], space, "minimize", make_sampler(strategy, 1, n_startup_trials=10))  # type: ignore[arg-type]
    seen = {"sgd": 0, "adam": 0}
    for number in range(50):
        params, _ = ask(study, space)
        seen[params["optimizer.name"]] += 1
        assert ("optimizer.params.momentum" in params) == (params["optimizer.name"] == "sgd"), params
        if "optimizer.params.momentum" in params:
            assert 0.0 <= params["optimizer.params.momentum"] <= 0.99
        assert 1e-4 <= params["optimizer.lr"] <= 1.0
        value = abs(math.log10(params["optimizer.lr"]) + 2) + params.get("optimizer.params.momentum", 0.5)
        study.tell(number, value)
    assert seen["sgd"] >= 5
    assert seen["adam"] >= 5


def test_a_condition_on_an_object_valued_choice() -> None:
    space = parse_space(
        {
            "model": {"choice": [{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [64, 64]}]},
            "model.dropout": {"uniform": [0.0, 0.5], "when": {"model": [{"hidden": [64, 64], "name": "mlp"}]}},
        }
    )
    study = rebuild([], space, "minimize", make_sampler("random", 3))
    draws = [ask(study, space)[0] for _ in range(20)]
    assert {len(draw["model"]["hidden"]) for draw in draws} == {1, 2}
    for draw in draws:
        assert ("model.dropout" in draw) == (draw["model"]["hidden"] == [64, 64])


def test_tpe_gets_multivariate_grouped_constant_liar_sampling() -> None:
    sampler = make_sampler("tpe", 0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._multivariate, sampler._group, sampler._constant_liar) == (True, True, True)
    assert sampler._n_startup_trials == 10
    assert make_sampler("tpe", 0, n_startup_trials=3)._n_startup_trials == 3  # type: ignore[attr-defined]


def test_every_strategy_builds_without_experimental_warnings() -> None:
    """QMCSampler and TPE's ``group`` are experimental in Optuna 5.0: make_sampler keeps their
    warnings out of every pass; nothing else is silenced."""
    expected = {
        "random": optuna.samplers.RandomSampler,
        "tpe": optuna.samplers.TPESampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    assert set(available_strategies()) == set(STRATEGIES) == set(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for strategy in STRATEGIES:
            assert type(make_sampler(strategy, 7)) is expected[strategy]


def test_unknown_and_unavailable_strategies_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown strategy 'bohb'; expected one of random, tpe, cmaes, gp, qmc"):
        make_sampler("bohb", 0)  # type: ignore[arg-type]
    real = search_space.importlib.util.find_spec
    monkeypatch.setattr(search_space.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    assert "gp" not in available_strategies()
    with pytest.raises(ValueError, match="strategy gp needs torch, not installed on this host"):
        make_sampler("gp", 0)


def test_the_gp_sampler_does_not_import_torch_until_it_models() -> None:
    """The API process stays torch-free through building and asking a GP study's startup trials."""
    code = (
        "import sys\n"
        "from service.search import make_sampler, parse_space, rebuild, ask\n"
        "space = parse_space({'x': {'uniform': [0, 1]}})\n"
        "study = rebuild([], space, 'minimize', make_sampler('gp', 0))\n"
        "ask(study, space)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
