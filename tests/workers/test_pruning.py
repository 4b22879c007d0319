"""Pruning on the worker: an adaptive sweep's trial stops after the epoch its pruner says, ends
``pruned`` with its rows, and the decision's rung attrs are stored for the next decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import EpochMetric, Job, JobStatus, Sweep, SweepTrial
from service.db.session import utcnow
from service.settings import Settings
from tests.conftest import digits_spec, service_settings
from tests.factories import advance, insert_job
from workers.run import execute

MLP = {"name": "mlp", "params": {"depth": 1, "width": 32}}
OBJECTIVE = {"metric": "val_loss", "which": "final", "direction": "minimize"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return service_settings(tmp_path, database_url)


def make_sweep(sessions: sessionmaker[Session], pruner: dict[str, Any], n_trials: int) -> int:
    """An adaptive sweep's row and its trials' rows (no jobs yet)."""
    with sessions() as session, session.begin():
        sweep = Sweep(
            template={}, search={}, created_at=utcnow(), execution="packed", strategy="tpe",
            objective=OBJECTIVE, pruner=pruner, budget=n_trials, parallelism=4, sampler_seed=0,
        )  # fmt: skip
        session.add(sweep)
        session.flush()
        for number in range(n_trials):
            session.add(SweepTrial(sweep_id=sweep.id, number=number, params={}, system_attrs={}, created_at=utcnow()))
        return int(sweep.id)


def trial_jobs(
    sessions: sessionmaker[Session], sweep_id: int, number: int, specs: list[dict[str, Any]], pack: str | None = None
) -> list[int]:
    with sessions() as session, session.begin():
        ids = [insert_job(session, spec, sweep_id=sweep_id, pack_id=pack) for spec in specs]
        session.execute(update(Job).where(Job.id.in_(ids)).values(trial_number=number))
    return ids


def finished_trial(
    sessions: sessionmaker[Session], sweep_id: int, number: int, losses: list[float], attrs: dict[str, Any]
) -> None:
    """A trial that ran before: one succeeded job with these losses and the attrs its decisions wrote."""
    (job_id,) = trial_jobs(sessions, sweep_id, number, [digits_spec({"name": "sgd"}, seed=number)])
    advance(sessions, job_id, losses=losses, status=JobStatus.succeeded)
    with sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(prune_attrs=attrs))


def outcome(sessions: sessionmaker[Session], job_id: int) -> tuple[str, int, dict[str, Any] | None]:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        rows = session.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id)).all()
        return str(job.status), len(rows), job.prune_attrs


def test_a_losing_trial_is_pruned_at_the_first_rung_with_its_row(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Successive halving (halving at epochs 1, 2, 4, 8): four earlier trials at rung 0 with val
    losses near 0.1; a trial that barely learns (2.3) is the worst of five there and stops."""
    sweep_id = make_sweep(sessions, {"name": "asha", "min_resource": 1, "reduction_factor": 2}, 5)
    for number in range(4):
        losses = [0.1 + 0.01 * number] * 9
        finished_trial(sessions, sweep_id, number, losses, {"completed_rung_0": losses[0] * 1.1})
    spec = digits_spec({"name": "sgd", "lr": 1e-6}, model=MLP, epochs=9, seed=7)
    (job_id,) = trial_jobs(sessions, sweep_id, 4, [spec])
    assert execute([job_id], sessions, settings) == "pruned=1"
    status, rows, attrs = outcome(sessions, job_id)
    assert (status, rows) == ("pruned", 1)
    assert attrs is not None
    assert attrs["completed_rung_0"] > 2.0  # its own rung value, for the next decision


def test_in_a_pack_the_losing_trial_is_pruned_and_the_winning_one_trains_on(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Median pruner against one earlier trial at 2.0 every epoch: of two trials of two seeds
    each, in one pack, the one that barely learns stops after epoch 1 (both its seeds); the
    other trains to the end."""
    sweep_id = make_sweep(sessions, {"name": "median", "n_startup_trials": 1}, 3)
    finished_trial(sessions, sweep_id, 0, [2.0 / 1.1] * 5, {})
    good = [digits_spec({"name": "adam", "lr": 1e-2}, model=MLP, epochs=5, seed=s) for s in (0, 1)]
    bad = [digits_spec({"name": "sgd", "lr": 1e-6}, model=MLP, epochs=5, seed=s) for s in (0, 1)]
    good_ids = trial_jobs(sessions, sweep_id, 1, good, pack="p1")
    bad_ids = trial_jobs(sessions, sweep_id, 2, bad, pack="p1")
    assert execute(good_ids + bad_ids, sessions, settings) == "pruned=2 succeeded=2"
    assert [outcome(sessions, j)[:2] for j in good_ids] == [("succeeded", 5)] * 2
    assert [outcome(sessions, j)[:2] for j in bad_ids] == [("pruned", 1)] * 2


def test_a_sweep_without_a_pruner_trains_every_epoch(sessions: sessionmaker[Session], settings: Settings) -> None:
    sweep_id = make_sweep(sessions, {}, 1)
    (job_id,) = trial_jobs(sessions, sweep_id, 0, [digits_spec({"name": "sgd", "lr": 1e-6}, model=MLP, epochs=3)])
    assert execute([job_id], sessions, settings) == "succeeded=1"
    assert outcome(sessions, job_id)[:2] == ("succeeded", 3)


def test_wilcoxon_stops_a_configuration_whose_paired_seeds_lose(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Five seeds, paired with the best configuration's same seeds: a configuration worse on
    every seed at its first epoch (p = 1/32 < 0.1) stops there; one that is better trains on."""
    sweep_id = make_sweep(sessions, {"name": "wilcoxon", "p_threshold": 0.1, "n_startup_steps": 2}, 3)
    best = []
    for seed in range(5):
        (job_id,) = trial_jobs(sessions, sweep_id, 0, [digits_spec({"name": "sgd"}, seed=seed)])
        advance(sessions, job_id, losses=[0.3 + 0.01 * seed] * 4, status=JobStatus.succeeded)
        best.append(job_id)
    bad = [digits_spec({"name": "sgd", "lr": 1e-6}, model=MLP, epochs=4, seed=s) for s in range(5)]
    good = [digits_spec({"name": "adam", "lr": 1e-2}, model=MLP, epochs=4, seed=s) for s in range(5)]
    bad_ids = trial_jobs(sessions, sweep_id, 1, bad, pack="p")
    good_ids = trial_jobs(sessions, sweep_id, 2, good, pack="p")
    assert execute(bad_ids + good_ids, sessions, settings) == "pruned=5 succeeded=5"
    assert {outcome(sessions, j)[:2] for j in bad_ids} == {("pruned", 1)}
    assert {outcome(sessions, j)[:2] for j in good_ids} == {("succeeded", 4)}


def test_a_failing_pruner_never_fails_the_training(
    sessions: sessionmaker[Session],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pruner only shortens a run: if asking it raises, the trial trains to its end."""

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a pruner bug")

    monkeypatch.setattr("workers.pruning.decide", broken)
    sweep_id = make_sweep(sessions, {"name": "median", "n_startup_trials": 0}, 1)
    (job_id,) = trial_jobs(sessions, sweep_id, 0, [digits_spec({"name": "sgd", "lr": 1e-6}, model=MLP, epochs=3)])
    assert execute([job_id], sessions, settings) == "succeeded=1"
    assert outcome(sessions, job_id)[:2] == ("succeeded", 3)
    assert "pruning trial 0 at epoch 1 failed" in caplog.text


def test_a_seed_training_alone_stops_once_a_sibling_seed_was_pruned(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Separate execution: a trial's seeds train in different tasks; one was pruned, so the
    other stops at its next decision, and the trial's seeds end alike."""
    sweep_id = make_sweep(sessions, {"name": "median", "n_startup_trials": 0}, 1)
    first, second = trial_jobs(
        sessions, sweep_id, 0, [digits_spec({"name": "adam", "lr": 1e-2}, model=MLP, epochs=4, seed=s) for s in (0, 1)]
    )
    advance(sessions, first, losses=[2.0], status=JobStatus.pruned)
    assert execute([second], sessions, settings) == "pruned=1"
    assert outcome(sessions, second)[:2] == ("pruned", 1)
