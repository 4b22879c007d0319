"""The analysis routes on SQLite and PostgreSQL: each answer checked against the jobs it names,
computed here from the raw epoch rows with scipy or by hand (paired comparisons, divergence
maps, budget curves, time-to-target), plus range-test results, trajectories and sweeps seeded
from a range test."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from scipy import stats
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db import transitions
from service.db.models import EpochMetric, Job, JobStatus
from tests.conftest import seed_spec, service_settings
from tests.factories import advance, insert_job

BASE = seed_spec({"name": "sgd", "lr": 0.01}, epochs=3)


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url, dispatch_interval_s=0))) as test_client:
        yield test_client


def run_sweep(
    client: TestClient,
    sessions: sessionmaker[Session],
    curves: dict[tuple[float, int], list[float]],
    base: dict[str, Any] = BASE,
    name: str | None = None,
) -> int:
    """A sweep over the curves' lrs and seeds whose jobs 'ran' the given train-loss curves (a NaN
    last value: diverged; an empty curve: left queued)."""
    lrs = sorted({lr for lr, _ in curves})
    seeds = sorted({seed for _, seed in curves})
    body = {"base": base, "grid": {"optimizer.lr": lrs}, "seeds": seeds, "name": name}
    created = client.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    for job in client.get("/v1/jobs", params={"sweep_id": created.json()["id"], "limit": 500}).json()["items"]:
        curve = curves.get((job["config"]["optimizer.lr"], job["spec"]["seed"]))
        if curve:
            status = JobStatus.diverged if not math.isfinite(curve[-1]) else JobStatus.succeeded
            advance(sessions, job["id"], losses=curve, status=status)
    return int(created.json()["id"])


def raw_values(sessions: sessionmaker[Session], sweep_id: int, which: str = "best") -> dict[tuple[float, int], Any]:
    """(lr, seed) -> (status, the val_loss the summary should hold), straight from epoch_metrics."""
    out: dict[tuple[float, int], Any] = {}
    with sessions() as session:
        rows = session.execute(
            select(Job.config, Job.spec, Job.status, EpochMetric.val_loss)
            .join(EpochMetric, EpochMetric.job_id == Job.id, isouter=True)
            .where(Job.sweep_id == sweep_id)
            .order_by(Job.id, EpochMetric.epoch)
        ).all()
    grouped: dict[tuple[float, int], tuple[str, list[float]]] = {}
    for config, spec, status, value in rows:
        grouped.setdefault((config["optimizer.lr"], spec["seed"]), (status, []))[1].append(value)
    for key, (status, values) in grouped.items():
        finite = [v for v in values if v is not None]
        value = (min(finite) if which == "best" else values[-1]) if finite else None
        out[key] = (status, value)
    return out


PAIRED = {(0.1, s): [3.0, 1.0 + 0.1 * s, 0.4 + 0.05 * s] for s in range(6)} | {
    (0.01, s): [3.0, 2.0, 0.9 - 0.02 * s * s] for s in range(6)
}
PAIRED[(0.1, 5)] = [3.0, 5.0, float("nan")]  # seed 5 of lr 0.1 diverged: excluded, said why


def hashes(client: TestClient, sweep_id: int) -> dict[float, str]:
    board = client.get(f"/v1/sweeps/{sweep_id}/leaderboard").json()["rows"]
    return {row["config"]["optimizer.lr"]: row["config_hash"] for row in board}


def test_a_paired_comparison_equals_scipy_on_the_raw_rows(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sweep_id = run_sweep(client, sessions, PAIRED)
    by_lr = hashes(client, sweep_id)
    answer = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"a": by_lr[0.1][:8], "b": by_lr[0.01]}).json()
    raw = raw_values(sessions, sweep_id)
    seeds = [s for s in range(6) if raw[(0.1, s)][0] == "succeeded"]
    diffs = [raw[(0.1, s)][1] - raw[(0.01, s)][1] for s in seeds]
    assert answer["seeds"] == seeds == [0, 1, 2, 3, 4]
    assert answer["diffs"] == pytest.approx(diffs)
    assert answer["n"] == 5
    assert answer["mean_diff"] == pytest.approx(statistics.mean(diffs))
    expected_ci = stats.ttest_rel([raw[(0.1, s)][1] for s in seeds], [raw[(0.01, s)][1] for s in seeds])
    low, high = expected_ci.confidence_interval(0.95)
    assert answer["t_ci"] == pytest.approx([low, high])
    assert answer["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs, method="exact").pvalue)
    wins = sum(d < 0 for d in diffs)
    assert (answer["a_wins"], answer["b_wins"], answer["p_a_better"]) == (wins, 5 - wins, pytest.approx(wins / 5))
    assert answer["excluded"] == [
        {"side": "a", "seed": 5, "job_id": answer["excluded"][0]["job_id"], "status": "diverged", "reason": "diverged"}
    ]
    assert answer["a"]["label"] == "sgd lr=0.1"
    assert answer["mode"] == "min"
    assert answer["diverged_a"] == [5], "a diverged at seed 5, where b finished"
    assert answer["diverged_b"] == []
    assert answer["verdict"] == "inconclusive", "5 pairs: the smallest exact two-sided p is 1/16"
    backwards = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"a": by_lr[0.01], "b": by_lr[0.1]}).json()
    assert backwards["mean_diff"] == pytest.approx(-answer["mean_diff"])
    assert backwards["diverged_b"] == [5]


def test_a_winner_that_diverged_where_the_other_finished_gets_no_verdict(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    curves = {(0.1, s): [3.0, 1.0, 0.40 + 0.001 * s] for s in range(9)}
    curves |= {(0.01, s): [3.0, 2.0, 0.90 + 0.002 * s] for s in range(9)}
    clean = run_sweep(client, sessions, curves)
    by_lr = hashes(client, clean)
    won = client.get(f"/v1/sweeps/{clean}/compare", params={"a": by_lr[0.1], "b": by_lr[0.01]}).json()
    assert won["verdict"] == "a", "8+ decisive pairs: a wins"
    assert won["verdict_note"] is None
    curves[(0.1, 8)] = [3.0, 9.0, float("nan")]
    broken = run_sweep(client, sessions, curves)
    by_lr = hashes(client, broken)
    answer = client.get(f"/v1/sweeps/{broken}/compare", params={"a": by_lr[0.1], "b": by_lr[0.01]}).json()
    assert answer["n"] == 8
    assert answer["diverged_a"] == [8]
    assert answer["verdict"] == "inconclusive"
    assert "diverged at seeds [8]" in answer["verdict_note"]


def test_every_pair_of_a_sweep_and_two_sweeps_on_one_problem(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    first = run_sweep(client, sessions, PAIRED)
    matrix = client.get(f"/v1/sweeps/{first}/compare", params={"metric": "val_loss"}).json()
    assert len(matrix["configs"]) == 2
    assert len(matrix["cells"]) == 2
    assert {(c["n"]) for c in matrix["configs"]} == {5, 6}
    single = {(0.1, s): PAIRED[(0.1, s)] for s in range(6)}
    other = run_sweep(client, sessions, {(0.05, s): [3.0, 1.0, 0.5 + 0.01 * s] for s in range(4)})
    alone = run_sweep(client, sessions, single)
    answer = client.get(f"/v1/sweeps/{alone}/compare", params={"b_sweep": other}).json()
    assert answer["n"] == 4, "seeds 0-3 pair; 4 is unpaired, 5 diverged"
    assert answer["unpaired_a"] == [4]
    assert answer["unpaired_b"] == []
    assert answer["a"]["sweep_id"] == alone
    assert answer["b"]["sweep_id"] == other


def test_compare_refuses_what_does_not_pair(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sweep_id = run_sweep(client, sessions, PAIRED)
    by_lr = hashes(client, sweep_id)
    ambiguous = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"b": by_lr[0.1]})
    assert ambiguous.status_code == 422
    assert ambiguous.json()["detail"][0]["field"] == "query.a"
    unknown = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"a": "ffff", "b": by_lr[0.1]})
    assert unknown.status_code == 422
    assert "matches no configuration" in unknown.json()["detail"][0]["msg"]
    same = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"a": by_lr[0.1], "b": by_lr[0.1]})
    assert same.status_code == 422
    assert same.json()["detail"][0]["field"] == "query.b"
    longer = run_sweep(client, sessions, {(0.1, 0): [3.0, 2.0, 1.0, 0.5]}, base=BASE | {"epochs": 4})
    different = client.get(f"/v1/sweeps/{longer}/compare", params={"b_sweep": sweep_id, "b": by_lr[0.1]})
    assert different.status_code == 422
    assert different.json()["detail"][0]["field"] == "query.b_sweep"
    assert "epochs" in different.json()["detail"][0]["msg"]
    assert client.get("/v1/sweeps/999/compare").status_code == 404
    against = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"metric": "val_loss", "mode": "max"})
    assert against.status_code == 422, "a run's best loss is its minimum"
    assert against.json()["detail"][0]["field"] == "query.mode"
    final = client.get(f"/v1/sweeps/{sweep_id}/compare", params={"mode": "max", "which": "final"})
    assert final.status_code == 200
    assert client.get(f"/v1/sweeps/{sweep_id}/compare", params={"metric": "nope"}).status_code == 422


def test_the_divergence_map_equals_the_raw_outcomes(client: TestClient, sessions: sessionmaker[Session]) -> None:
    curves: dict[tuple[float, int], list[float]] = {}
    for lr, diverging in [(0.001, 0), (0.01, 0), (0.1, 1), (0.3, 2), (1.0, 3)]:
        for seed in range(3):
            curves[(lr, seed)] = [3.0, 2.0, float("nan") if seed < diverging else 1.0 / (1 + lr)]
    curves[(1.0, 2)] = []  # still queued: listed, not counted
    sweep_id = run_sweep(client, sessions, curves)
    answer = client.get(f"/v1/sweeps/{sweep_id}/divergence").json()
    (group,) = answer["groups"]
    raw = raw_values(sessions, sweep_id, which="final")
    for row in group["lrs"]:
        outcomes = [raw[(row["lr"], s)] for s in range(3) if raw[(row["lr"], s)][0] in ("succeeded", "diverged")]
        diverged = sum(status == "diverged" for status, _ in outcomes)
        assert (row["runs"], row["diverged"]) == (len(outcomes), diverged)
        assert row["fraction"] == pytest.approx(diverged / len(outcomes))
        finite = [v for status, v in outcomes if status == "succeeded"]
        assert row["mean"] == (pytest.approx(statistics.mean(finite)) if finite else None)
        assert {job["seed"] for job in row["jobs"]} == {s for s in range(3) if curves[(row["lr"], s)]} | (
            {2} if row["lr"] == 1.0 else set()
        )
    assert group["stable_max_lr"] == 0.01
    assert group["stable_up_to_lr"] == 0.01
    assert group["diverged_min_lr"] == 1.0, "both finished runs at lr 1.0 diverged"
    assert group["not_counted"] == 1
    assert group["group"] == "sgd"


def test_budget_curves_count_each_run_as_a_trial(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sweep_id = run_sweep(client, sessions, PAIRED)
    answer = client.get(f"/v1/sweeps/{sweep_id}/budget", params={"metric": "val_loss", "which": "best"}).json()
    (group,) = answer["groups"]
    raw = raw_values(sessions, sweep_id)
    finite = [v for status, v in raw.values() if status == "succeeded"]
    trials = [v if status == "succeeded" else max(finite) for status, v in raw.values()]
    assert group["n_trials"] == 12
    assert group["k"] == list(range(1, 13))
    assert group["expected"][0] == pytest.approx(statistics.mean(trials)), "one trial: the mean"
    assert group["expected"][-1] >= min(trials)
    assert group["expected"] == sorted(group["expected"], reverse=True)
    assert all(lo <= e <= hi for lo, e, hi in zip(group["lo"], group["expected"], group["hi"], strict=True))
    by_config = client.get(f"/v1/sweeps/{sweep_id}/budget", params={"group_by": "config"}).json()
    assert [g["group"] for g in by_config["groups"]] == ["sgd"], "lr is what the budget tunes"
    assert client.get(f"/v1/sweeps/{sweep_id}/budget", params={"group_by": "seed"}).status_code == 422


def test_time_to_target_and_profiles_across_two_sweeps(client: TestClient, sessions: sessionmaker[Session]) -> None:
    fast = run_sweep(client, sessions, {(0.1, s): [2.0, 1.0, 0.5] for s in range(2)}, name="fast problem")
    slow = run_sweep(client, sessions, {(0.01, s): [2.0, 1.8, 1.0] for s in range(2)})
    answer = client.get("/v1/profiles", params={"sweeps": f"{fast},{slow}", "metric": "val_loss"}).json()
    first, second = answer["problems"]
    assert first["name"] == "fast problem"
    assert first["target"] == pytest.approx(0.55 * 1.05)
    assert first["times"]["sgd"]["epochs"] == 3
    assert second["times"]["sgd"]["epochs"] == 3
    assert answer["epochs"]["profiles"]["sgd"][0] == 1.0, "the only optimizer wins every problem"
    assert client.get("/v1/profiles", params={"sweeps": "0"}).status_code == 422
    assert client.get("/v1/profiles", params={"sweeps": "1,x"}).status_code == 422
    assert client.get("/v1/profiles", params={"sweeps": "999"}).status_code == 404


def finish_with_result(sessions: sessionmaker[Session], job_id: int, result: dict[str, Any]) -> None:
    with sessions() as session, session.begin():
        (claim,) = transitions.claim(session, [job_id], worker="w:1", stale_after_s=60)
        assert transitions.finish(session, job_id, claim.attempt, JobStatus.succeeded, result=result)


RANGE_TEST = {
    "kind": "lr_range_test",
    "lr": [1e-4, 1e-3, 1e-2, 1e-1],
    "loss": [1.0, 0.9, 0.5, 3.0],
    "smoothed": [1.0, 0.95, 0.7, 1.5],
    "suggestions": {"steepest": 0.005, "valley": 0.003, "min_over_10": None},
    "stopped": "diverged",
}


def test_a_sweep_seeded_from_a_range_test_grids_around_its_suggestion(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session, session.begin():
        job_id = insert_job(session, BASE)
    finish_with_result(sessions, job_id, RANGE_TEST)
    assert client.get(f"/v1/jobs/{job_id}/result").json() == {
        "job_id": job_id,
        "status": "succeeded",
        "result": RANGE_TEST,
    }
    body = {"base": BASE, "seeds": [0, 1], "lr_from": {"job_id": job_id, "points": 3, "factor": 10}}
    created = client.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    lrs = sorted({job["config"]["optimizer.lr"] for job in client.get("/v1/jobs").json()["items"] if job["sweep_id"]})
    assert lrs == pytest.approx([0.0003, 0.003, 0.03])
    for lr_from, field in [
        ({"job_id": job_id, "suggestion": "min_over_10"}, "lr_from.suggestion"),
        ({"job_id": 424242}, "lr_from.job_id"),
    ]:
        refused = client.post("/v1/sweeps", json={"base": BASE, "lr_from": lr_from})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["field"] == field
    for grid in ({"optimizer.lr": [0.1]}, {"optimizer": [{"name": "sgd", "lr": 0.1}]}):
        clash = client.post("/v1/sweeps", json=body | {"grid": grid})
        assert clash.status_code == 422
        assert clash.json()["detail"][0]["field"] == "lr_from"
    other_problem = client.post("/v1/sweeps", json=body | {"base": BASE | {"batch_size": 8}})
    assert other_problem.status_code == 422
    assert "batch_size" in other_problem.json()["detail"][0]["msg"]
    adam = client.post("/v1/sweeps", json=body | {"base": BASE | {"optimizer": {"name": "adam", "lr": 0.001}}})
    assert adam.status_code == 422
    assert "optimizer.name" in adam.json()["detail"][0]["msg"]
    with sessions() as session, session.begin():
        plain = insert_job(session, BASE)
    advance(sessions, plain, losses=[1.0], status=JobStatus.succeeded)
    not_a_test = client.post("/v1/sweeps", json={"base": BASE, "lr_from": {"job_id": plain}})
    assert not_a_test.status_code == 422
    assert "not an LR range test" in not_a_test.json()["detail"][0]["msg"]
    assert client.get(f"/v1/jobs/{plain}/result").json()["result"] is None


def test_trajectories_come_with_the_contour_to_draw_them_on(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.001}) | {
        "model": {"name": "point"},
        "dataset": {"name": "rosenbrock"},
        "loss": "value",
        "epochs": 1,
    }
    created = client.post("/v1/sweeps", json={"base": spec, "grid": {"optimizer.lr": [0.001, 0.002]}}).json()
    jobs = client.get("/v1/jobs", params={"sweep_id": created["id"]}).json()["items"]
    for job in jobs:
        path = {"kind": "trajectory", "function": "rosenbrock", "x": [-1.5, -1.4], "y": [2.0, 1.9], "value": [1, 2]}
        finish_with_result(sessions, job["id"], path)
    extra = client.post("/v1/sweeps", json={"base": spec, "grid": {"optimizer.lr": [0.003]}}).json()
    (odd,) = client.get("/v1/jobs", params={"sweep_id": extra["id"]}).json()["items"]
    finish_with_result(sessions, odd["id"], {"kind": "trajectory", "function": "nope", "x": 1})
    assert client.get(f"/v1/sweeps/{extra['id']}/trajectories").status_code == 422, "no path it can draw"
    answer = client.get(f"/v1/sweeps/{created['id']}/trajectories").json()
    assert answer["function"] == "rosenbrock"
    assert answer["minimum"] == [1.0, 1.0]
    assert len(answer["paths"]) == 2
    assert answer["paths"][0]["x"] == [-1.5, -1.4]
    z = answer["contour"]["z"]
    assert len(z) == len(answer["contour"]["y"])
    assert len(z[0]) == len(answer["contour"]["x"])
    none = client.get(f"/v1/sweeps/{run_sweep(client, sessions, {(0.1, 0): [1.0]})}/trajectories")
    assert none.status_code == 422
