"""An adaptive (TPE + ASHA) sweep on PostgreSQL + Redis + two prefork workers, its controller's API
process SIGKILLed mid-sweep and replaced: the new process takes the search over once the dead one's
lease lapses, and the sweep ends with exactly its budget of trials, each with exactly its seeds'
jobs, every job run once; the workers' pruner stopped some trials, whose jobs ended pruned."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.faults.conftest import assert_invariants, post_sweep
from tests.integration.conftest import Api, Deployment, slow_spec, wait_for

pytestmark = pytest.mark.slow

BUDGET, SEEDS = 20, [0, 1]
SWEEP = {
    "base": slow_spec(4, n_samples=2048),
    "strategy": "tpe",
    "space": {"optimizer.lr": {"log_uniform": [1e-3, 0.1]}, "optimizer.params.momentum": {"uniform": [0.0, 0.9]}},
    "budget": BUDGET,
    "parallelism": 4,
    "seeds": SEEDS,
    "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 2},
}


def sweep_state(api: Api, sweep_id: int) -> dict[str, Any]:
    return dict(api.http.get(f"/v1/sweeps/{sweep_id}").json())


def jobs_of(database_url: str, sweep_id: int) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = "SELECT id, trial_number, status, attempt, spec FROM jobs WHERE sweep_id = :id ORDER BY id"
            return list(connection.execute(text(query), {"id": sweep_id}))
    finally:
        engine.dispose()


@pytest.mark.parametrize("deployment", [{"OPTIMLAB_SEARCH_LEASE_S": "2"}], indirect=True)
def test_a_tpe_sweep_survives_its_controller_killed_mid_sweep(deployment: Deployment) -> None:
    sweep = post_sweep(deployment.api, SWEEP)
    assert (sweep["trials"], sweep["n_jobs"]) == (4, 8), "the first pass runs in the request"
    # Some trials beyond the first pass exist, the budget is not reached: kill the controller's
    # process (the only API process) without warning, perhaps inside a pass's transaction.
    before = wait_for(
        lambda: state if (state := sweep_state(deployment.api, sweep["id"]))["trials"] >= 6 else None,
        60,
        "the controller to create trials after the first pass",
    )
    assert before["trials"] < BUDGET
    assert deployment.api_proc is not None
    deployment.api_proc.kill()
    api = deployment.start_api()
    final = wait_for(
        lambda: state if (state := sweep_state(api, sweep["id"]))["done"] else None, 90, "the sweep to finish"
    )
    trials = api.http.get(f"/v1/sweeps/{sweep['id']}/trials").json()["trials"]
    assert [trial["number"] for trial in trials] == list(range(BUDGET))
    odd = [t for t in trials if t["state"] not in ("complete", "pruned") or len(t["job_ids"]) != len(SEEDS)]
    assert not odd, odd
    assert any(t["state"] == "pruned" for t in trials), "halving at epochs 1 and 2: some trials lose"
    assert (final["trials"], final["n_jobs"]) == (BUDGET, BUDGET * len(SEEDS))
    jobs = jobs_of(deployment.database_url, sweep["id"])
    assert Counter((job.trial_number, job.spec["seed"]) for job in jobs) == {
        (number, seed): 1 for number in range(BUDGET) for seed in SEEDS
    }
    # Each job ran once: claimed by one attempt (a duplicate message finds it claimed and does
    # nothing), which the workers' logs confirm attempt by attempt, none overlapping.
    assert {job.attempt for job in jobs} == {1}
    assert_invariants(deployment.database_url, deployment.every_worker(), statuses=("succeeded", "diverged", "pruned"))
