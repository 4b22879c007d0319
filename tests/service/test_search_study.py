"""Our trial records and Optuna's study: a rebuilt study holds exactly what the records hold, the
next ask depends only on the records and the sweep's seed (a crashed controller asks the same
again), CMA-ES and QMC carry on where they were, and TPE's constant liar sees running trials."""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from service.search.space import STRATEGIES, Strategy, make_sampler, parse_space
from service.search.study import STUDY_ATTRS, TrialRecord, ask, rebuild, sampler_seed, to_study

SPACE = parse_space(
    {
        "optimizer.name": {"choice": ["sgd", "adam"]},
        "optimizer.params.momentum": {"uniform": [0.0, 0.99], "when": {"optimizer.name": ["sgd"]}},
        "optimizer.lr": {"log_uniform": [1e-5, 1.0]},
        "batch_size": {"int": [8, 256]},
        "model": {"choice": [{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [64, 64]}]},
    }
)
MODELS: list[Any] = SPACE["model"].choice or []
SWEEP_SEED = 11


def loss(params: dict[str, Any]) -> float:
    """A cheap objective with an optimum inside the space, standing in for a mean val loss."""
    lr = (math.log10(params["optimizer.lr"]) + 2) ** 2
    return lr + (params["batch_size"] - 64) ** 2 / 1e4 + 0.05 * len(params["model"]["hidden"])


def as_stored(value: Any) -> Any:
    """Through JSON, as the database hands it back."""
    return json.loads(json.dumps(value))


def controller_pass(records: list[TrialRecord], strategy: Strategy, asks: int = 1) -> list[tuple[dict, dict]]:
    """What the sweep controller does each pass: rebuild from the records with a fresh sampler
    seeded from what is stored, ask ``asks`` configurations."""
    sampler = make_sampler(strategy, sampler_seed(SWEEP_SEED, len(records)), n_startup_trials=4)
    study = rebuild(records, SPACE, "minimize", sampler)
    return [ask(study, SPACE) for _ in range(asks)]


@pytest.fixture(scope="module")
def histories() -> dict[str, list[TrialRecord]]:
    """Each strategy's sweep of 8 trials, one pass per trial, each told before the next pass,
    stored through JSON."""
    out: dict[str, list[TrialRecord]] = {}
    for strategy in STRATEGIES:
        records: list[TrialRecord] = []
        for number in range(8):
            ((params, attrs),) = controller_pass(records, strategy)
            stored = TrialRecord(number, as_stored(params), "complete", loss(params), system_attrs=as_stored(attrs))
            records.append(stored)
        out[strategy] = records
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_asks_valid_params_inside_the_bounds(
    histories: dict[str, list[TrialRecord]], strategy: str
) -> None:
    for record in histories[strategy]:
        params = record.params
        assert params["optimizer.name"] in ("sgd", "adam")
        assert ("optimizer.params.momentum" in params) == (params["optimizer.name"] == "sgd")
        assert 0.0 <= params.get("optimizer.params.momentum", 0.0) <= 0.99
        assert isinstance(params["optimizer.lr"], float)
        assert 1e-5 <= params["optimizer.lr"] <= 1.0
        assert isinstance(params["batch_size"], int)
        assert 8 <= params["batch_size"] <= 256
        assert params["model"] in MODELS
    assert len({json.dumps(r.params, sort_keys=True) for r in histories[strategy]}) == 8


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_rebuild_from_the_same_records_asks_the_same_again(
    histories: dict[str, list[TrialRecord]], strategy: Strategy
) -> None:
    """A controller that crashed before storing its pass rebuilds the same records, gets the same
    seed and asks the same two configurations with the same sampler state."""
    records = [*histories[strategy], TrialRecord(8, histories[strategy][0].params, "running")]
    first = controller_pass(records, strategy, asks=2)
    again = controller_pass(records, strategy, asks=2)
    assert first == again
    assert first[0][0] != first[1][0]


def test_the_sampler_seed_is_a_stable_mix_of_the_sweep_seed_and_the_trial_count() -> None:
    # Pinned: changing the mix would change the next ask of every sweep in flight at an upgrade.
    assert sampler_seed(0, 0) == 1145620831
    seeds = {sampler_seed(sweep, n) for sweep in range(30) for n in range(30)}
    assert len(seeds) == 900
    assert all(0 <= seed < 2**32 for seed in seeds)
    assert sampler_seed(0, 1) != sampler_seed(1, 0)


def records_of_every_kind() -> list[TrialRecord]:
    sgd, adam = {"optimizer.name": "sgd", "optimizer.params.momentum": 0.9}, {"optimizer.name": "adam"}
    common = {"optimizer.lr": 0.01, "batch_size": 32, "model": MODELS[1]}
    return [
        TrialRecord(0, {**sgd, **common}, "complete", 0.5, {1: 0.9, 2: 0.6}, {"cma:generation": 0}, {"by": "me"}),
        TrialRecord(1, {**adam, **common}, "pruned", 2.5, {1: 3.0, 2: 2.5}),
        TrialRecord(2, {**adam, **common}, "pruned", None, {1: 3.0, 3: 2.0}),  # tell's rule: last value
        TrialRecord(3, {**sgd, **common}, "failed"),
        TrialRecord(4, {**adam, **common}, "complete", math.nan),  # diverged: tell fails it
        TrialRecord(5, {**adam, **common}, "complete", math.inf, {1: math.nan}),
        TrialRecord(6, adam, "running", system_attrs={"tpe:relative_params:0": "{}", STUDY_ATTRS: {"qmc:x": 3}}),
    ]


def test_a_rebuilt_study_holds_exactly_what_the_records_hold() -> None:
    records = records_of_every_kind()
    study = rebuild(reversed(records), SPACE, "minimize", make_sampler("random", 0))
    expected_states = [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.RUNNING,
    ]
    expected_values = [0.5, 2.5, 2.0, None, None, math.inf, None]
    assert [t.number for t in study.trials] == [r.number for r in records]
    for trial, record, state, value in zip(study.trials, records, expected_states, expected_values, strict=True):
        assert trial.state == state
        assert trial.value == value
        assert set(trial.distributions) == set(record.params)
        assert {path: trial.params[path] for path in record.params if path != "model"} == {
            path: value for path, value in record.params.items() if path != "model"
        }
        assert trial.params.get("model") == (None if "model" not in record.params else 1)  # index of MODELS[1]
        assert json.dumps(trial.intermediate_values) == json.dumps(record.intermediate)
        assert trial.user_attrs == record.user_attrs
        assert trial.system_attrs == {k: v for k, v in record.system_attrs.items() if k != STUDY_ATTRS}
    assert study._storage.get_study_system_attrs(study._study_id) == {"qmc:x": 3}
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert rebuild(records, SPACE, "maximize", make_sampler("random", 0)).direction.name == "MAXIMIZE"


@pytest.mark.parametrize(
    ("records", "says"),
    [
        ([TrialRecord(0, {"optimizer.name": "sgd"}, "running")] * 2, r"trial numbers repeat: \[0\]"),
        ([TrialRecord(0, {"optimizer.beta": 0.9}, "running")], "trial 0: optimizer.beta is not a parameter"),
        (
            [TrialRecord(1, {"optimizer.lr": 5.0}, "running")],
            r"trial 1: The value 5.0 of parameter 'optimizer.lr' isn't contained",
        ),
        ([TrialRecord(2, {"model": {"name": "cnn"}}, "running")], "trial 2: model = .* does not fit"),
        ([TrialRecord(3, {"optimizer.name": "lion"}, "running")], "trial 3: optimizer.name = 'lion' does not fit"),
    ],
)
def test_records_that_do_not_fit_the_space_are_errors_naming_trial_and_path(
    records: list[TrialRecord], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        rebuild(records, SPACE, "minimize", make_sampler("random", 0))


def test_a_record_states_its_value_as_its_state_requires() -> None:
    with pytest.raises(ValueError, match="trial 0: a complete trial needs its value"):
        TrialRecord(0, {}, "complete")
    with pytest.raises(ValueError, match=r"trial 1: a running trial has no value \(got 1.0\)"):
        TrialRecord(1, {}, "running", 1.0)
    with pytest.raises(ValueError, match="trial 2: state 'done' is not one of running, complete, pruned, failed"):
        TrialRecord(2, {}, "done")  # type: ignore[arg-type]


def cma_state(system_attrs: dict[str, Any]) -> dict[str, Any]:
    """The CMA-ES distribution a trial's system attrs carry: the sampler pickles its optimizer
    there (``cma:optimizer:<i>``, hex chunks) when a generation is told."""
    chunks = sorted((k for k in system_attrs if k.startswith("cma:optimizer:")), key=lambda k: int(k.rsplit(":")[-1]))
    optimizer = pickle.loads(bytes.fromhex("".join(system_attrs[k] for k in chunks)))
    return {name: getattr(optimizer, name) for name in ("_g", "_mean", "_sigma", "_C", "_p_sigma", "_pc")}


def test_cma_es_after_a_rebuild_continues_the_uninterrupted_search() -> None:
    """An uninterrupted study (one sampler, told as it goes) against a rebuild, with a fresh
    sampler and another seed, from the records stored up to a generation's end: the rebuilt ask
    tells CMA-ES the same generation and holds the same distribution (generation, mean, step
    size, covariance, paths). Without the stored system attrs it starts over instead."""
    space = parse_space({"x": {"uniform": [-5.0, 5.0]}, "y": {"uniform": [-5.0, 5.0]}})

    def sphere(params: dict[str, float]) -> float:
        return (params["x"] - 1.0) ** 2 + (params["y"] + 2.0) ** 2

    study = rebuild([], space, "minimize", make_sampler("cmaes", 5))
    records: list[TrialRecord] = []
    told: list[int] = []
    while len(told) < 3:
        params, attrs = ask(study, space)
        if "cma:optimizer:0" in attrs:
            told.append(len(records))
        study.tell(len(records), sphere(params))
        records.append(
            TrialRecord(len(records), as_stored(params), "complete", sphere(params), system_attrs=as_stored(attrs))
        )
    for number in told[1:]:
        uninterrupted = cma_state(records[number].system_attrs)
        rebuilt = rebuild(records[:number], space, "minimize", make_sampler("cmaes", sampler_seed(5, number)))
        _, attrs = ask(rebuilt, space)
        state = cma_state(attrs)
        assert state["_g"] == uninterrupted["_g"] > 1
        for name in ("_mean", "_sigma", "_C", "_p_sigma", "_pc"):
            np.testing.assert_array_equal(state[name], uninterrupted[name], err_msg=name)
    amnesiac = [TrialRecord(r.number, r.params, r.state, r.value) for r in records[: told[-1]]]
    _, attrs = ask(rebuild(amnesiac, space, "minimize", make_sampler("cmaes", 5)), space)
    assert attrs["cma:generation"] == 0
    assert "cma:optimizer:0" not in attrs


def test_qmc_goes_on_along_its_sequence_across_rebuilds() -> None:
    """The sequence's position is a study attr: ``ask`` hands it back, ``rebuild`` restores it.
    Without it every pass would draw the sequence's first point again."""
    space = parse_space({"x": {"uniform": [0.0, 1.0]}, "y": {"uniform": [0.0, 1.0]}})

    def sweep(keep: bool) -> list[tuple[float, float]]:
        records: list[TrialRecord] = []
        for number in range(6):
            study = rebuild(records, space, "minimize", make_sampler("qmc", sampler_seed(2, number)))
            params, attrs = ask(study, space)
            if not keep:
                attrs.pop(STUDY_ATTRS, None)
            records.append(TrialRecord(number, params, "complete", 0.0, system_attrs=as_stored(attrs)))
        return [(r.params["x"], r.params["y"]) for r in records]

    # The first trial is random (Optuna's QMC samples the first independently), then Sobol's points.
    assert sweep(keep=True)[1:] == [(0.0, 0.0), (0.5, 0.5), (0.75, 0.25), (0.25, 0.75), (0.375, 0.375)]
    assert sweep(keep=False)[1:] == [(0.0, 0.0)] * 5


LIAR_SPACE = parse_space({"o": {"choice": ["a", "b"]}})
TIED = [TrialRecord(n, {"o": "ab"[n % 2]}, "complete", 0.0 if n < 2 else 1.0) for n in range(20)]
"""After startup, a and b tie exactly: one of each among the two best (TPE's below set for 20
trials), nine of each above. Only a running trial can break the tie."""


def second_asks_differ(seed: int, constant_liar: bool) -> bool:
    if constant_liar:
        sampler = make_sampler("tpe", seed, n_startup_trials=10)
    else:
        with pytest.warns(optuna.exceptions.ExperimentalWarning):
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=False)
    study = rebuild(TIED, LIAR_SPACE, "minimize", sampler)
    return ask(study, LIAR_SPACE)[0] != ask(study, LIAR_SPACE)[0]


def test_tpe_counts_a_running_trial_against_its_value() -> None:
    """What constant_liar guarantees: a running trial joins TPE's worse group, lowering its
    value's odds. From an exact tie, the second ask of a pass (the first still running) therefore
    always takes the other value, whatever the seed; without the liar it does not."""
    assert all(second_asks_differ(seed, constant_liar=True) for seed in range(8))
    assert not all(second_asks_differ(seed, constant_liar=False) for seed in range(8))


def test_tpe_sees_a_running_trial_stored_by_an_earlier_pass() -> None:
    for seed in range(4):
        ((first, attrs),) = controller_pass_on(TIED, seed)
        running = TrialRecord(20, first, "running", system_attrs=as_stored(attrs))
        ((second, _),) = controller_pass_on([*TIED, running], seed)
        assert second != first


def controller_pass_on(records: list[TrialRecord], seed: int) -> list[tuple[dict, dict]]:
    study = rebuild(records, LIAR_SPACE, "minimize", make_sampler("tpe", seed))
    return [ask(study, LIAR_SPACE)]


def test_a_study_for_people_shows_the_sweep() -> None:
    records = records_of_every_kind()
    study = to_study(records, SPACE, "minimize")
    assert study.best_trial.number == 0
    assert study.best_params["optimizer.name"] == "sgd"
    frame = study.trials_dataframe()
    assert list(frame["number"]) == [r.number for r in records]
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
