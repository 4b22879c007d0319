"""Sweeps: expansion (unit) and the API contract on SQLite and PostgreSQL, including a
leaderboard checked against statistics computed here from the raw epoch rows."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from scipy import stats
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.db.models import EpochMetric, Job, JobStatus, Sweep
from service.sweeps.expansion import SweepInvalid, apply, configurations, count, expand, plan_packs
from service.sweeps.schemas import SweepCreate
from tests.conftest import eventually, seed_spec, service_settings
from tests.factories import advance

BASE = seed_spec({"name": "sgd", "lr": 0.01}, epochs=3)


def sweep(**search: Any) -> SweepCreate:
    return SweepCreate.model_validate({"base": BASE, **search})


# --- expansion ---------------------------------------------------------------------------------


def test_grid_times_seeds() -> None:
    request = sweep(grid={"optimizer.lr": [0.1, 0.01], "optimizer.params.momentum": [0.0, 0.9]}, seeds=[0, 1, 2])
    trials = expand(request)
    assert count(request) == len(trials) == 12
    assert len({t.config_hash for t in trials}) == 4, "seeds share a configuration"
    assert sorted({t.seed for t in trials}) == [0, 1, 2]
    first = trials[0]
    assert first.config == {"optimizer.lr": 0.1, "optimizer.params.momentum": 0.0}
    assert first.spec.optimizer.lr == 0.1  # type: ignore[union-attr]


def test_a_list_of_grids_is_their_union_and_whole_objects_compose_with_paths() -> None:
    request = sweep(
        grid=[
            {"optimizer": [{"name": "sgd", "params": {"momentum": 0.9}}], "optimizer.lr": [0.1, 0.01]},
            {"optimizer": [{"name": "adam"}], "optimizer.lr": [1e-3]},
        ]
    )
    trials = expand(request)
    assert [(type(t.spec.optimizer).__name__, t.spec.optimizer.lr) for t in trials] == [  # type: ignore[union-attr]
        ("SGDOptimizer", 0.1),
        ("SGDOptimizer", 0.01),
        ("AdamOptimizer", 1e-3),
    ]
    assert trials[0].spec.optimizer.params.momentum == 0.9  # type: ignore[union-attr]


def test_paths_into_lists_and_null_restores_the_default() -> None:
    base = BASE | {"scheduler": [{"name": "step_lr", "params": {"step_size": 10}}]}
    spec = apply(base, {"scheduler.0.params.gamma": 0.5})
    assert spec["scheduler"][0]["params"] == {"step_size": 10, "gamma": 0.5}
    assert "scheduler" not in apply(base, {"scheduler": None})


def test_random_search_is_reproducible_and_in_bounds() -> None:
    params = {
        "optimizer.lr": {"log_uniform": [1e-4, 1e-1]},
        "optimizer.params.momentum": {"uniform": [0.0, 0.99]},
        "batch_size": {"int": [16, 20]},
        "optimizer.params.nesterov": {"choice": [True, False]},
    }
    one = list(configurations(sweep(random={"n": 500, "seed": 7, "params": params})))
    again = list(configurations(sweep(random={"n": 500, "seed": 7, "params": params})))
    other = list(configurations(sweep(random={"n": 500, "seed": 8, "params": params})))
    assert one == again
    assert one != other
    lrs = [c["optimizer.lr"] for c in one]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    logs = [math.log10(lr) for lr in lrs]
    assert min(logs) < -3.5, "log-uniform covers the decades"
    assert max(logs) > -1.5
    assert statistics.median(logs) == pytest.approx(-2.5, abs=0.25)
    assert {c["batch_size"] for c in one} == {16, 17, 18, 19, 20}
    assert all(0.0 <= c["optimizer.params.momentum"] <= 0.99 for c in one)


@pytest.mark.parametrize(
    "bad",
    [
        {"log_uniform": [0.0, 1.0]},
        {"uniform": [1.0, 0.0]},
        {"uniform": [0.0, 1.0], "int": [1, 2]},
        {"choice": []},
        {},
    ],
)
def test_bad_distributions_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        sweep(random={"n": 1, "params": {"optimizer.lr": bad}})


def test_an_invalid_combination_names_itself() -> None:
    request = sweep(grid={"optimizer.name": ["sgd", "adam"], "optimizer.params.momentum": [0.9]})
    with pytest.raises(SweepInvalid) as info:
        expand(request)
    (problem,) = info.value.problems
    assert problem["combination"] == {"optimizer.name": "adam", "optimizer.params.momentum": 0.9}
    assert problem["errors"][0]["field"] == "spec.optimizer.params.momentum"


# --- the API -----------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url, max_sweep_jobs=100))) as test_client:
        yield test_client


def counts(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Sweep)) or 0),
            int(session.scalar(select(func.count()).select_from(Job)) or 0),
        )


@pytest.mark.parametrize(("execution", "messages"), [("separate", 60), ("auto", 2)])
def test_a_4x5_grid_over_3_seeds_creates_60_jobs_at_once(
    client: TestClient, sessions: sessionmaker[Session], tmp_path: Path, execution: str, messages: int
) -> None:
    body = {
        "name": "lr x momentum",
        "base": BASE,
        "grid": {"optimizer.lr": [0.1, 0.03, 0.01, 0.003], "optimizer.params.momentum": [0.0, 0.5, 0.9, 0.95, 0.99]},
        "seeds": [0, 1, 2],
        "tags": ["grid"],
        "execution": execution,
    }
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["n_jobs"], created["counts"]["queued"], created["done"]) == (60, 60, False)
    assert created["execution"] == execution
    assert counts(sessions) == (1, 60)
    # auto: one task per pack; the cap of 32 splits the 60 into two packs of 30.
    eventually(lambda: len(list((tmp_path / "home" / "broker" / "queue").glob("*.msg"))) == messages)
    jobs = client.get("/v1/jobs", params={"sweep_id": created["id"], "limit": 500}).json()["items"]
    assert {job["spec"]["seed"] for job in jobs} == {0, 1, 2}
    assert len({tuple(sorted(job["config"].items())) for job in jobs}) == 20
    assert all(job["tags"] == ["grid"] for job in jobs)
    packs = [job["pack_id"] for job in jobs]
    if execution == "separate":
        assert packs == [None] * 60
    else:
        assert sorted(packs.count(p) for p in set(packs)) == [30, 30]


def test_pack_plan_groups_by_pack_key_and_explains_what_cannot_pack() -> None:
    mixed = sweep(
        grid={"optimizer.lr": [0.1, 0.01], "batch_size": [16, 32], "optimizer.name": ["sgd", "nadam"]}, seeds=[0, 1]
    )
    trials = expand(mixed)
    packs = plan_packs(trials, "auto", pack_max=32)
    by_pack: dict[str | None, set[tuple[str, int]]] = {}
    for trial, pack in zip(trials, packs, strict=True):
        by_pack.setdefault(pack, set()).add((trial.spec.optimizer.name, trial.spec.batch_size))
    assert by_pack[None] == {("nadam", 16), ("nadam", 32)}  # not packable: run separately
    assert sorted(v for k, v in by_pack.items() if k is not None) == [{("sgd", 16)}, {("sgd", 32)}]
    assert plan_packs(trials, "separate", pack_max=32) == [None] * len(trials)
    with pytest.raises(SweepInvalid) as invalid:
        plan_packs(trials, "packed", pack_max=32)
    assert invalid.value.problems[0]["errors"][0]["field"] == "spec.optimizer.name"
    assert "cannot be packed" in invalid.value.problems[0]["errors"][0]["msg"]

    many = expand(sweep(grid={"optimizer.lr": [0.1, 0.01, 0.001]}, seeds=list(range(7))))
    sizes = sorted(Counter(plan_packs(many, "auto", pack_max=8)).values())
    assert sizes == [7, 7, 7]  # 21 trials, cap 8: three even packs, not 8 + 8 + 5
    alone = expand(sweep(seeds=[0]))
    assert plan_packs(alone, "auto", pack_max=8) == [None]
    assert plan_packs(alone, "packed", pack_max=8) != [None]


def test_execution_packed_rejects_an_unpackable_sweep(client: TestClient, sessions: sessionmaker[Session]) -> None:
    body = {"base": BASE, "grid": {"optimizer.name": ["sgd", "nadam"]}, "execution": "packed"}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [d["combination"]["optimizer.name"] for d in detail] == ["nadam"]
    assert detail[0]["field"] == "spec.optimizer.name"
    assert counts(sessions) == (0, 0)


def test_one_invalid_combination_rejects_the_whole_sweep(client: TestClient, sessions: sessionmaker[Session]) -> None:
    body = {"base": BASE, "grid": {"optimizer.name": ["sgd", "adam"], "optimizer.params.momentum": [0.0, 0.9]}}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert {d["combination"]["optimizer.name"] for d in detail} == {"adam"}
    assert all("optimizer.params.momentum" in d["msg"] for d in detail)
    assert counts(sessions) == (0, 0)


def test_the_sweep_cap_and_resource_caps(client: TestClient, sessions: sessionmaker[Session]) -> None:
    too_big = client.post("/v1/sweeps", json={"base": BASE, "grid": {"seed": list(range(101))}})
    assert too_big.status_code == 422
    assert "cap is 100" in too_big.json()["detail"][0]["msg"]
    too_long = client.post("/v1/sweeps", json={"base": BASE, "grid": {"epochs": [5, 20_000]}})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["combination"] == {"epochs": 20_000, "seed": 0}
    assert counts(sessions) == (0, 0)


def test_what_the_host_lacks_rejects_the_sweep_naming_the_combination(
    client: TestClient, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import admission

    def lacking(spec: Any, data_root: Any = None) -> list[tuple[tuple[str, ...], str]]:
        return [(("optimizer", "name"), "needs the 'extras' extra")] if spec.optimizer.lr == 0.1 else []

    monkeypatch.setattr(admission, "host_problems", lacking)
    response = client.post("/v1/sweeps", json={"base": BASE, "grid": {"optimizer.lr": [0.1, 0.01]}})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["combination"] == {"optimizer.lr": 0.1, "seed": 0}
    assert detail["field"] == "spec.optimizer.name"
    assert detail["type"] == "invalid_combination"
    assert "needs the 'extras' extra" in detail["msg"]
    assert counts(sessions) == (0, 0)


def test_idempotent_sweep_retry(client: TestClient, sessions: sessionmaker[Session]) -> None:
    body = {"base": BASE, "seeds": [0, 1]}
    first = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "s-1"})
    again = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "s-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert counts(sessions) == (1, 2)
    other = client.post("/v1/sweeps", json=body | {"seeds": [5]}, headers={"Idempotency-Key": "s-1"})
    assert other.status_code == 409


def test_unknown_sweeps_are_404(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/sweeps/9"),
        ("POST", "/v1/sweeps/9/cancel"),
        ("GET", "/v1/sweeps/9/leaderboard"),
        ("GET", "/v1/sweeps/9/metrics"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "sweep_not_found"


def _run_sweep(
    client: TestClient, sessions: sessionmaker[Session], losses: dict[tuple[float, int], list[float]]
) -> int:
    body = {"base": BASE, "grid": {"optimizer.lr": sorted({lr for lr, _ in losses})}, "seeds": [0, 1, 2]}
    created = client.post("/v1/sweeps", json=body).json()
    for job in client.get("/v1/jobs", params={"sweep_id": created["id"], "limit": 500}).json()["items"]:
        key = (job["config"]["optimizer.lr"], job["spec"]["seed"])
        curve = losses[key]
        status = JobStatus.diverged if not math.isfinite(curve[-1]) else JobStatus.succeeded
        advance(sessions, job["id"], losses=curve, status=status)
    return int(created["id"])


LOSSES = {
    (0.1, 0): [3.0, 1.0, 0.5],
    (0.1, 1): [3.0, 1.2, 0.7],
    (0.1, 2): [3.0, 2.0, float("nan")],  # diverged
    (0.01, 0): [3.0, 2.5, 2.0],
    (0.01, 1): [3.0, 2.0, 2.2],  # best epoch is not the last
    (0.01, 2): [3.0, 2.4, 1.9],
}


@pytest.mark.parametrize("which", ["best", "final"])
def test_leaderboard_equals_statistics_from_the_raw_rows(
    client: TestClient, sessions: sessionmaker[Session], which: str
) -> None:
    sweep_id = _run_sweep(client, sessions, LOSSES)
    board = client.get(f"/v1/sweeps/{sweep_id}/leaderboard", params={"metric": "val_loss", "which": which}).json()
    assert board["mode"] == "min"

    # Independently: each job's val_loss rows straight from epoch_metrics.
    by_config: dict[float, list[float]] = {}
    diverged: dict[float, int] = {}
    by_job: dict[int, tuple[float, str, list[float]]] = {}
    with sessions() as session:
        for job_id, config, status, val in session.execute(
            select(Job.id, Job.config, Job.status, EpochMetric.val_loss)
            .join(EpochMetric, EpochMetric.job_id == Job.id)
            .where(Job.sweep_id == sweep_id)
            .order_by(Job.id, EpochMetric.epoch)
        ):
            by_job.setdefault(job_id, (config["optimizer.lr"], status, []))[2].append(val)
    for lr, status, values in by_job.values():
        if status == "diverged":
            diverged[lr] = diverged.get(lr, 0) + 1
            continue
        by_config.setdefault(lr, []).append(min(values) if which == "best" else values[-1])

    assert [row["config"]["optimizer.lr"] for row in board["rows"]] == sorted(
        by_config, key=lambda lr: statistics.mean(by_config[lr])
    )
    for row in board["rows"]:
        values = by_config[row["config"]["optimizer.lr"]]
        n = len(values)
        mean, std = statistics.mean(values), statistics.stdev(values)
        half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
        assert (row["jobs"], row["n"]) == (3, n)
        assert row["mean"] == pytest.approx(mean, rel=1e-9)
        assert row["std"] == pytest.approx(std, rel=1e-6)
        assert row["ci95_low"] == pytest.approx(mean - half, rel=1e-6)
        assert row["ci95_high"] == pytest.approx(mean + half, rel=1e-6)
        assert (row["min"], row["max"]) == (pytest.approx(min(values)), pytest.approx(max(values)))
        assert row["diverged"] == diverged.get(row["config"]["optimizer.lr"], 0)
        assert row["pending"] == 0
        assert row["mean_wall_seconds"] is not None
    summary = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert summary["done"] is True
    assert summary["counts"]["diverged"] == 1
    best_board = client.get(f"/v1/sweeps/{sweep_id}/leaderboard").json()
    assert summary["best"]["config"] == best_board["rows"][0]["config"]
    without = client.get(f"/v1/sweeps/{sweep_id}", params={"best": "false"}).json()
    assert without["best"] is None  # the dashboard's pages read it from the leaderboard they fetch anyway
    assert without | {"best": summary["best"]} == summary


def test_accuracy_ranks_highest_first(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sweep_id = _run_sweep(client, sessions, LOSSES)
    board = client.get(f"/v1/sweeps/{sweep_id}/leaderboard", params={"metric": "val_accuracy"}).json()
    assert board["mode"] == "max"
    means = [row["mean"] for row in board["rows"]]
    assert means == sorted(means, reverse=True)
    assert board["rows"][0]["config"] == {"optimizer.lr": 0.1}  # the lower losses, so the higher accuracy
    assert client.get(f"/v1/sweeps/{sweep_id}/leaderboard", params={"metric": "loss"}).status_code == 422


def test_sweep_metrics_in_bulk(client: TestClient, sessions: sessionmaker[Session]) -> None:
    sweep_id = _run_sweep(client, sessions, LOSSES)
    body = client.get(f"/v1/sweeps/{sweep_id}/metrics", params={"columns": "train_loss,lr"}).json()
    assert body["columns"] == ["job_id", "epoch", "train_loss", "lr"]
    assert len(body["rows"]) == 18
    assert len(body["jobs"]) == 6
    assert {job["seed"] for job in body["jobs"]} == {0, 1, 2}
    assert [row[2] for row in body["rows"]].count(None) == 1  # the diverged epoch's NaN
    assert [row[:2] for row in body["rows"]] == sorted(row[:2] for row in body["rows"])
    text = client.get(f"/v1/sweeps/{sweep_id}/metrics", params={"format": "csv"}).text
    assert len(list(csv.reader(io.StringIO(text)))) == 19
    assert client.get(f"/v1/sweeps/{sweep_id}/metrics", params={"columns": "colour"}).status_code == 422


def test_cancel_a_sweep(client: TestClient, sessions: sessionmaker[Session]) -> None:
    created = client.post("/v1/sweeps", json={"base": BASE, "seeds": [0, 1, 2]}).json()
    jobs = client.get("/v1/jobs", params={"sweep_id": created["id"]}).json()["items"]
    advance(sessions, jobs[0]["id"], losses=[1.0], status=JobStatus.succeeded)
    advance(sessions, jobs[1]["id"], losses=[1.0])
    cancelled = client.post(f"/v1/sweeps/{created['id']}/cancel").json()
    assert (cancelled["counts"]["succeeded"], cancelled["counts"]["running"], cancelled["counts"]["cancelled"]) == (
        1,
        1,
        1,
    )
    assert client.get(f"/v1/jobs/{jobs[1]['id']}").json()["cancel_requested"] is True


def test_a_path_through_a_value_that_is_not_an_object_is_a_named_problem() -> None:
    with pytest.raises(SweepInvalid) as info:
        expand(sweep(grid={"epochs.count": [3]}))
    (problem,) = info.value.problems
    assert problem["combination"] == {"epochs.count": 3}
    assert problem["errors"][0]["field"] == "search"
    assert "epochs.count" in problem["errors"][0]["msg"]


def test_non_finite_names_work_in_a_grid_and_seeds_must_be_distinct() -> None:
    trials = expand(
        SweepCreate.model_validate(
            {"base": seed_spec({"name": "prodigy"}), "grid": {"optimizer.params.growth_rate": ["Infinity", 2.0]}}
        )
    )
    assert [t.spec.optimizer.params.growth_rate for t in trials] == [math.inf, 2.0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="seeds must be distinct"):
        sweep(seeds=[0, 0])


def test_list_sweeps_newest_first_with_counts_and_cursor(client: TestClient, sessions: sessionmaker[Session]) -> None:
    ids = [client.post("/v1/sweeps", json={"base": BASE, "seeds": [0, 1]}).json()["id"] for _ in range(3)]
    first_job = client.get("/v1/jobs", params={"sweep_id": ids[0]}).json()["items"][0]["id"]
    advance(sessions, first_job, losses=[1.0], status=JobStatus.succeeded)
    page = client.get("/v1/sweeps", params={"limit": 2}).json()
    assert [s["id"] for s in page["items"]] == [ids[2], ids[1]]
    rest = client.get("/v1/sweeps", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [s["id"] for s in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None
    assert (rest["items"][0]["counts"]["succeeded"], rest["items"][0]["counts"]["queued"]) == (1, 1)
    assert page["items"][0]["counts"]["queued"] == 2
    assert client.get("/v1/sweeps", params={"cursor": "x"}).status_code == 422
