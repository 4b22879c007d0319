"""Pruning decisions from our records equal Optuna's own, pruner by pruner."""

from __future__ import annotations

import random
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from service.search.pruners import PrunerConfig, PruneTrial, decide, make_pruner
from service.search.study import STUDY_NAME

EPOCHS = 9
CONFIGS: list[dict[str, Any]] = [
    {"name": "median", "n_startup_trials": 2},
    {"name": "percentile", "percentile": 25.0, "n_startup_trials": 1, "n_warmup_steps": 1},
    {"name": "successive_halving", "reduction_factor": 3},
    {"name": "successive_halving", "min_resource": 2, "reduction_factor": 2, "bootstrap_count": 1},
    {"name": "asha"},
    {"name": "hyperband", "reduction_factor": 3},
    {"name": "wilcoxon", "p_threshold": 0.2},
]


def _curves(n: int, seed: int) -> list[list[float]]:
    """Loss curves of ``n`` trials: each decays towards its own floor, with noise."""
    rng = random.Random(seed)
    curves = []
    for _ in range(n):
        floor, rate = rng.uniform(0.1, 1.0), rng.uniform(0.2, 0.6)
        curves.append([floor + 2.0 * (1 - rate) ** step + rng.gauss(0, 0.03) for step in range(EPOCHS)])
    return curves


def _optuna_run(config: dict[str, Any], curves: list[list[float]]) -> list[int | None]:
    """Optuna alone: the trials one after the other, reporting every step; the step each was
    pruned at (None: completed)."""
    pruner = make_pruner(PrunerConfig.model_validate(config), max_resource=EPOCHS)
    study = optuna.create_study(study_name=STUDY_NAME, pruner=pruner)
    pruned_at: list[int | None] = []
    for curve in curves:
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned_at.append(step)
                break
        else:
            study.tell(trial, curve[-1])
            pruned_at.append(None)
    return pruned_at


def _our_run(config: dict[str, Any], curves: list[list[float]]) -> list[int | None]:
    """The same through ``decide``: a fresh study from the records at every decision, the
    attrs each decision returns stored with the trial."""
    records: list[PruneTrial] = []
    pruned_at: list[int | None] = []
    for number, curve in enumerate(curves):
        attrs: dict[str, Any] = {}
        for step in range(len(curve)):
            running = PruneTrial(number, "running", intermediate=dict(enumerate(curve[: step + 1])), attrs=attrs)
            pruner = make_pruner(PrunerConfig.model_validate(config), max_resource=EPOCHS)
            prune, attrs = decide(pruner, "minimize", [*records, running], [number])[number]
            if prune:
                records.append(PruneTrial(number, "pruned", intermediate=running.intermediate, attrs=attrs))
                pruned_at.append(step)
                break
        else:
            records.append(PruneTrial(number, "complete", curve[-1], dict(enumerate(curve)), attrs))
            pruned_at.append(None)
    return pruned_at


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("config", CONFIGS, ids=[c["name"] + str(i) for i, c in enumerate(CONFIGS)])
def test_decisions_from_our_records_equal_optuna_s_own(config: dict[str, Any]) -> None:
    for seed in range(3):
        curves = _curves(14, seed)
        theirs = _optuna_run(config, curves)
        assert _our_run(config, curves) == theirs
        assert any(step is not None for step in theirs), "the case must prune something"


def test_a_later_decision_sees_the_rung_an_earlier_one_recorded() -> None:
    """Two trials reach rung 0 in one pass: the second competes with the first's value."""
    config = PrunerConfig(name="successive_halving", min_resource=1, reduction_factor=2)
    good = PruneTrial(0, "running", intermediate={0: 0.5, 1: 0.4})
    bad = PruneTrial(1, "running", intermediate={0: 0.9, 1: 0.8})
    both = decide(make_pruner(config, EPOCHS), "minimize", [good, bad], [0, 1])
    assert both[0][0] is False
    assert "completed_rung_0" in both[0][1]
    assert both[1][0] is True
    alone = decide(make_pruner(config, EPOCHS), "minimize", [good, bad], [1])
    assert alone[1][0] is False  # nobody at the rung yet: promoted


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "median", "reduction_factor": 3}, "reduction_factor: not a parameter of the median pruner"),
        ({"name": "percentile"}, "percentile: the percentile pruner needs it"),
        ({"name": "successive_halving", "reduction_factor": 1}, "greater than or equal to 2"),
        ({"name": "nope"}, "Input should be"),
    ],
)
def test_a_bad_pruner_is_refused_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PrunerConfig.model_validate(body)


def test_trials_must_be_dense_and_asked_ones_running() -> None:
    pruner = make_pruner(PrunerConfig(name="median"), EPOCHS)
    with pytest.raises(ValueError, match=r"numbered 0\.\.1"):
        decide(pruner, "minimize", [PruneTrial(0, "running"), PruneTrial(2, "running")], [0])
    with pytest.raises(ValueError, match="trial 0 is complete"):
        decide(pruner, "minimize", [PruneTrial(0, "complete", 1.0)], [0])
