"""The analysis routes: verdicts a reviewer accepts, computed from the jobs' stored results.

``/v1/sweeps/{id}/compare`` (paired over seeds, or every pair), ``/divergence`` (divergence map and
lr sensitivity), ``/budget`` (expected best after k trials), ``/trajectories`` (2-D test
functions), ``/v1/profiles`` (time-to-target across sweeps) and ``/v1/jobs/{id}/result`` (an LR
range test's curve and suggestions, a 2-D run's path). Each is the data its plot is drawn from.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from service.analysis import service as analysis
from service.deps import PrincipalDep, SessionDep
from service.errors import InvalidFields, field_error
from service.schemas import Id, error_responses

router = APIRouter(tags=["analysis"])

METRIC_PATTERN = f"^({'|'.join(analysis.BETTER)})$"
Metric = Annotated[str, Query(pattern=METRIC_PATTERN, description="A summary metric.")]
Which = Annotated[str, Query(pattern="^(best|final)$", description="The best epoch's value or the final one.")]
Mode = Annotated[str | None, Query(pattern="^(min|max)$", description="Default: min for losses, max for accuracy.")]
ConfigRef = Annotated[
    str | None,
    Query(pattern="^[0-9a-f]{4,64}$", description="A config_hash (or a unique prefix of 4+ characters)."),
]
MAX_PROFILE_SWEEPS = 50


@router.get("/sweeps/{sweep_id}/compare", responses=error_responses(404))
def compare(
    sweep_id: Id,
    session: SessionDep,
    principal: PrincipalDep,
    a: ConfigRef = None,
    b: ConfigRef = None,
    b_sweep: Annotated[Id | None, Query(description="b's sweep, when it is another sweep on the same problem.")] = None,
    metric: Metric = "val_loss",
    which: Which = "best",
    mode: Mode = None,
) -> dict[str, Any]:
    """Is A better than B? Per-seed differences A - B of the metric (seeds pair: every arm gets
    the same initial weights and batch order per seed), their mean, 95% CIs (Student t, bootstrap
    BCa), the Wilcoxon signed-rank p (exact for small n), P(A beats B), wins, the seeds only one
    arm has, the runs excluded and why, and a verdict. Without `a`, `b` and `b_sweep`: every pair
    of the sweep's configurations (`configs`, `cells`)."""
    if a is None and b is None and b_sweep is None:
        return analysis.compare_all(session, sweep_id, principal, metric=metric, which=which, mode=mode)
    return analysis.compare(
        session, sweep_id, principal, a=a, b=b, b_sweep=b_sweep, metric=metric, which=which, mode=mode
    )


@router.get("/sweeps/{sweep_id}/divergence", responses=error_responses(404))
def divergence(
    sweep_id: Id, session: SessionDep, principal: PrincipalDep, metric: Metric = "val_loss", which: Which = "final"
) -> dict[str, Any]:
    """Per optimizer configuration (all but its lr): each lr's runs, diverged count and fraction,
    the metric's mean and std over the runs that did not diverge, every job; the largest lr at
    which no run diverged (`stable_max_lr`) and the smallest at which all did (`diverged_min_lr`)."""
    return analysis.divergence(session, sweep_id, principal, metric=metric, which=which)


@router.get("/sweeps/{sweep_id}/budget", responses=error_responses(404))
def budget(
    sweep_id: Id,
    session: SessionDep,
    principal: PrincipalDep,
    metric: Metric = "val_loss",
    which: Which = "best",
    mode: Mode = None,
    group_by: Annotated[
        str, Query(pattern="^(optimizer|config)$", description="optimizer, or its configuration without lr.")
    ] = "optimizer",
) -> dict[str, Any]:
    """Per optimizer (or per optimizer configuration without its lr): the expected best metric
    after k random-search trials drawn from the sweep's runs, k = 1..N (exact, Dodge et al.
    2019), with a 95% bootstrap band. A diverged run counts as the sweep's worst value."""
    return analysis.budget(session, sweep_id, principal, metric=metric, which=which, mode=mode, group_by=group_by)


@router.get("/sweeps/{sweep_id}/trajectories", responses=error_responses(404))
def trajectories(sweep_id: Id, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Each 2-D test function run's path (x, y and value per step) and the function's contour."""
    return analysis.trajectories(session, sweep_id, principal)


@router.get("/profiles", responses=error_responses(404))
def profiles(
    session: SessionDep,
    principal: PrincipalDep,
    sweeps: Annotated[str, Query(pattern=r"^\d{1,10}(,\d{1,10})*$", description="Sweep ids, comma-separated.")],
    metric: Metric = "val_loss",
    tolerance: Annotated[float, Query(ge=0.0, le=1.0, description="The target's relative slack.")] = 0.05,
) -> dict[str, Any]:
    """Time-to-target per optimizer on each sweep (a problem) and performance profiles rho(tau)
    over epochs and seconds (AlgoPerf style)."""
    ids = list(dict.fromkeys(int(part) for part in sweeps.split(",")))
    bad = [i for i in ids if not 1 <= i <= 2**31 - 1]
    if bad or len(ids) > MAX_PROFILE_SWEEPS:
        msg = f"ids from 1 to 2147483647, at most {MAX_PROFILE_SWEEPS}" + (f"; not {bad[:5]}" if bad else "")
        raise InvalidFields([field_error(("query", "sweeps"), msg, "invalid_ids")])
    return analysis.profiles(session, ids, principal, metric=metric, tolerance=tolerance)


@router.get("/jobs/{job_id}/result", responses=error_responses(404))
def job_result(job_id: Id, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """What a run reports beyond its epochs: an LR range test's lrs, raw and smoothed losses and
    suggestions; a 2-D test function run's trajectory. `result` is null for plain training runs."""
    return analysis.job_result(session, job_id, principal)
