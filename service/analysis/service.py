"""The rules of the analysis routes: which jobs form an arm, which values count, and what is
reported beside the statistics (unpaired seeds, excluded runs and why), for one principal.

The numbers come from ``service.analysis.stats`` (scipy); this module only gathers them from the
jobs' summary columns and says which jobs each number covers, so every figure can be checked by
hand against the jobs it names.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.analysis import repository, stats
from service.analysis.repository import JobValue
from service.auth.principal import Principal
from service.db.models import Job, JobStatus
from service.errors import InvalidFields, JobNotFound, field_error
from service.jobs import repository as job_repository
from service.labels import config_label, flatten
from service.sweeps import repository as sweep_repository

BETTER = sweep_repository.BETTER
SHARED_PROBLEM = ("model", "dataset", "loss", "epochs", "batch_size")
"""What two sweeps must share for their arms to be compared seed by seed."""

_REASONS = {
    JobStatus.diverged: "diverged",
    JobStatus.failed: "failed",
    JobStatus.cancelled: "cancelled",
    JobStatus.pruned: "pruned",
    JobStatus.queued: "not finished",
    JobStatus.running: "not finished",
}


def resolved_mode(metric: str, mode: str | None, which: str = "final") -> str:
    """The better direction: as asked, else the metric's own (min for losses, max for accuracy).
    A job's best value is best in the metric's own direction, so ``which=best`` takes no other."""
    if mode is not None and which == "best" and mode != BETTER[metric]:
        msg = f"the best {metric} of a run is its {BETTER[metric]}imum; use mode {BETTER[metric]} or which=final"
        raise InvalidFields([field_error(("query", "mode"), msg, "mode_against_best")])
    return mode or BETTER[metric]


@dataclass(frozen=True)
class Arm:
    """One configuration of one sweep: the jobs (one per seed) that a comparison pairs."""

    sweep_id: int
    config_hash: str | None
    config: dict[str, Any]
    label: str
    jobs: list[JobValue]

    def describe(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "config_hash": self.config_hash, "config": self.config, "label": self.label}

    def _paired(self) -> dict[int, JobValue]:
        """Seed → the first succeeded job with a value: what is paired (a repeated configuration's
        later jobs of the same seed are excluded as duplicates)."""
        chosen: dict[int, JobValue] = {}
        for j in self.jobs:
            if j.status == JobStatus.succeeded and j.value is not None:
                chosen.setdefault(j.seed, j)
        return chosen

    def values(self) -> dict[int, float]:
        """Seed → value of every paired job."""
        return {seed: j.value for seed, j in self._paired().items() if j.value is not None}

    def diverged(self) -> set[int]:
        """The seeds at which this configuration diverged."""
        return {j.seed for j in self.jobs if j.status == JobStatus.diverged}

    def excluded(self, side: str) -> list[dict[str, Any]]:
        """The jobs not paired, each with why."""
        paired = {j.job_id for j in self._paired().values()}
        return [
            {"side": side, "seed": j.seed, "job_id": j.job_id, "status": j.status, "reason": _reason(j)}
            for j in self.jobs
            if j.job_id not in paired
        ]


def _reason(job: JobValue) -> str:
    if job.status == JobStatus.succeeded and job.value is not None:
        return "duplicate seed (an earlier job of this configuration has it)"
    return _REASONS.get(JobStatus(job.status), "no value for this metric")


def arms(jobs: Iterable[JobValue], sweep_id: int) -> list[Arm]:
    """The sweep's configurations (jobs that differ only in seed), in order of first job."""
    grouped: dict[str | None, list[JobValue]] = defaultdict(list)
    for job in jobs:
        grouped[job.config_hash].append(job)
    return [
        Arm(sweep_id, config_hash, members[0].config, config_label(members[0].config, members[0].optimizer), members)
        for config_hash, members in grouped.items()
    ]


def _pick(found: Sequence[Arm], ref: str | None, name: str) -> Arm:
    """The arm ``ref`` names (a config hash or a unique prefix of one); with ``ref`` None, the
    sweep's only configuration."""
    where = ("query", name)
    if ref is None:
        if len(found) == 1:
            return found[0]
        msg = f"the sweep has {len(found)} configurations; name one by its config_hash (see the leaderboard)"
        raise InvalidFields([field_error(where, msg, "configuration_required")])
    matches = [arm for arm in found if arm.config_hash is not None and arm.config_hash.startswith(ref)]
    if len(matches) != 1:
        what = "no configuration" if not matches else f"{len(matches)} configurations"
        raise InvalidFields([field_error(where, f"{ref!r} matches {what} of the sweep", "unknown_configuration")])
    return matches[0]


def _check_same_problem(session: Session, a: Arm, b: Arm) -> None:
    """Seeds pair only when both arms train the same model on the same data for as long."""
    query = select(Job.id, Job.spec).where(Job.id.in_([a.jobs[0].job_id, b.jobs[0].job_id]))
    specs: dict[int, dict[str, Any]] = {job_id: spec for job_id, spec in session.execute(query)}
    first, second = specs[a.jobs[0].job_id], specs[b.jobs[0].job_id]
    differ = [key for key in SHARED_PROBLEM if first.get(key) != second.get(key)]
    if differ:
        msg = f"the two sweeps are not the same problem: {', '.join(differ)} differ, so their seeds do not pair"
        raise InvalidFields([field_error(("query", "b_sweep"), msg, "different_problem")])


def compare(
    session: Session,
    sweep_id: int,
    principal: Principal,
    *,
    a: str | None,
    b: str | None,
    b_sweep: int | None,
    metric: str,
    which: str,
    mode: str | None,
) -> dict[str, Any]:
    """A paired comparison of two configurations seed by seed (the second may be in ``b_sweep``)."""
    sweep_repository.get_sweep(session, sweep_id, principal)
    column = f"{which}_{metric}"
    first = arms(repository.job_values(session, sweep_id, column), sweep_id)
    second = first
    if b_sweep is not None and b_sweep != sweep_id:
        sweep_repository.get_sweep(session, b_sweep, principal)
        second = arms(repository.job_values(session, b_sweep, column), b_sweep)
    for found, where in ((first, ("path", "sweep_id")), (second, ("query", "b_sweep"))):
        if not found:
            raise InvalidFields([field_error(where, "the sweep has no jobs", "empty_sweep")])
    arm_a, arm_b = _pick(first, a, "a"), _pick(second, b, "b")
    if arm_a.sweep_id != arm_b.sweep_id:
        _check_same_problem(session, arm_a, arm_b)
    elif arm_a.config_hash == arm_b.config_hash:
        raise InvalidFields([field_error(("query", "b"), "a and b name the same configuration", "same_configuration")])
    better = resolved_mode(metric, mode, which)
    result = stats.paired(arm_a.values(), arm_b.values(), mode=better).as_dict()  # type: ignore[arg-type]
    # A seed where one arm diverged and the other finished is evidence against the diverging arm
    # that the statistics (over finished pairs) cannot see: no verdict for that arm.
    diverged_a = sorted(arm_a.diverged() & set(arm_b.values()))
    diverged_b = sorted(arm_b.diverged() & set(arm_a.values()))
    note = None
    if (result["verdict"] == "a" and diverged_a) or (result["verdict"] == "b" and diverged_b):
        side, seeds = ("A", diverged_a) if result["verdict"] == "a" else ("B", diverged_b)
        note = f"{side} wins the finished pairs but diverged at seeds {seeds} where the other finished"
        result["verdict"] = "inconclusive"
    return {
        "metric": metric,
        "which": which,
        "mode": better,
        "a": arm_a.describe(),
        "b": arm_b.describe(),
        **result,
        "diverged_a": diverged_a,
        "diverged_b": diverged_b,
        "verdict_note": note,
        "excluded": arm_a.excluded("a") + arm_b.excluded("b"),
    }


def compare_all(
    session: Session, sweep_id: int, principal: Principal, *, metric: str, which: str, mode: str | None
) -> dict[str, Any]:
    """Every ordered pair of the sweep's configurations, compared seed by seed."""
    sweep_repository.get_sweep(session, sweep_id, principal)
    found = arms(repository.job_values(session, sweep_id, f"{which}_{metric}"), sweep_id)
    better = resolved_mode(metric, mode, which)
    if len(found) > stats.MAX_MATRIX_CONFIGS:
        msg = (
            f"{len(found)} configurations; every pair is computed for at most {stats.MAX_MATRIX_CONFIGS}: name a and b"
        )
        raise InvalidFields([field_error(("path", "sweep_id"), msg, "too_many_configurations")])
    values = {arm.config_hash or "": arm.values() for arm in found}
    configs = [
        {
            **arm.describe(),
            "n": len(values[arm.config_hash or ""]),
            "mean": statistics.fmean(values[arm.config_hash or ""].values()) if values[arm.config_hash or ""] else None,
        }
        for arm in found
    ]
    cells = stats.all_pairs(values, mode=better) if len(found) > 1 else []  # type: ignore[arg-type]
    return {"metric": metric, "which": which, "mode": better, "configs": configs, "cells": cells}


def _group_key(job: JobValue) -> tuple[str, str]:
    """An optimizer configuration without its learning rate: what a divergence map is drawn for."""
    rest = _without_lr(job.config)
    return config_label(rest, job.optimizer), repr(sorted(rest.items()))


def _without_lr(config: Mapping[str, Any]) -> dict[str, Any]:
    return {path: value for path, value in flatten(config).items() if path != "optimizer.lr"}


def divergence(session: Session, sweep_id: int, principal: Principal, *, metric: str, which: str) -> dict[str, Any]:
    """Per optimizer configuration: the fraction of runs diverged at each learning rate, the
    largest lr with none diverged and the smallest with all, and the metric vs lr (the
    lr-sensitivity table). Counts cover finished runs (succeeded or diverged); runs still queued
    or running, failed or cancelled are not counted (``not_counted``; listed under an lr that has
    finished runs). ``stable_max_lr`` is the largest lr with no run diverged, which a lower lr's
    divergence does not rule out; ``stable_up_to_lr``, the largest lr at and below which none did."""
    sweep_repository.get_sweep(session, sweep_id, principal)
    groups: dict[tuple[str, str], list[JobValue]] = defaultdict(list)
    for job in repository.job_values(session, sweep_id, f"{which}_{metric}"):
        if job.lr is not None:
            groups[_group_key(job)].append(job)
    out = []
    for (name, _), jobs in groups.items():
        counted = [j for j in jobs if j.status in (JobStatus.succeeded, JobStatus.diverged)]
        runs = [(j.lr, j.status == JobStatus.diverged, j.value) for j in counted]
        found = stats.divergence_map(runs).as_dict()  # type: ignore[arg-type]
        by_lr: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for j in jobs:
            by_lr[float(j.lr or 0.0)].append({"job_id": j.job_id, "seed": j.seed, "status": j.status, "value": j.value})
        for row in found["lrs"]:
            row["jobs"] = by_lr.pop(float(row["lr"]), [])
        found["not_counted"] = len(jobs) - len(counted)
        found["stable_up_to_lr"] = _stable_up_to(found["lrs"])
        config = _without_lr(jobs[0].config)
        out.append({"group": name, "optimizer": jobs[0].optimizer, "config": config, **found})
    return {"metric": metric, "which": which, "groups": out}


def _stable_up_to(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest lr such that no run at it or at any lower lr diverged."""
    stable = None
    for row in rows:  # ascending lr
        if row["diverged"]:
            break
        stable = row["lr"]
    return stable


def budget(
    session: Session,
    sweep_id: int,
    principal: Principal,
    *,
    metric: str,
    which: str,
    mode: str | None,
    group_by: str = "optimizer",
) -> dict[str, Any]:
    """Per optimizer (``group_by="optimizer"``) or per optimizer configuration without its lr
    (``"config"``: sgd apart from sgd with momentum 0.9): the expected best metric after k
    trials of random search over the sweep's runs (each finished run, a configuration and a
    seed, is one trial), k = 1..N, with a bootstrap band. A diverged trial counts as the worst
    finite value the sweep reached: a tuner that draws it learns nothing."""
    sweep_repository.get_sweep(session, sweep_id, principal)
    better = resolved_mode(metric, mode, which)
    jobs = [
        j
        for j in repository.job_values(session, sweep_id, f"{which}_{metric}")
        if j.status == JobStatus.diverged or (j.status == JobStatus.succeeded and j.value is not None)
    ]
    finite = [j.value for j in jobs if j.status == JobStatus.succeeded and j.value is not None]
    groups = []
    if finite:
        worst = max(finite) if better == "min" else min(finite)
        trials: dict[str, list[float]] = defaultdict(list)
        for j in jobs:
            value = j.value if j.status == JobStatus.succeeded and j.value is not None else worst
            trials[j.optimizer if group_by == "optimizer" else _group_key(j)[0]].append(value)
        for optimizer, values in trials.items():
            curve = stats.budget_curve(values, mode=better).as_dict()  # type: ignore[arg-type]
            groups.append({"group": optimizer, "n_trials": len(values), "diverged_as": worst, **curve})
    return {"metric": metric, "which": which, "mode": better, "group_by": group_by, "groups": groups}


def _target(best: float, tolerance: float, mode: str) -> float:
    """The value a problem's target asks for: the best configuration's mean, relaxed by ``tolerance``."""
    return best + tolerance * abs(best) if mode == "min" else best - tolerance * abs(best)


def profiles(
    session: Session, sweep_ids: Sequence[int], principal: Principal, *, metric: str, tolerance: float
) -> dict[str, Any]:
    """Time-to-target across problems (each sweep is a problem) and performance profiles.

    A problem's target is the best configuration's mean final metric over seeds, relaxed by
    ``tolerance`` (relative). A configuration's time is the median over its seeds of the first
    epoch (and seconds) at which the metric reaches the target (never: infinite); an
    optimizer's time is its best configuration's, as after tuning. Seconds are left out (None)
    for runs trained in packs, whose trials share the pack's clock.
    """
    better = BETTER[metric]
    problems = []
    epochs_times: dict[str, dict[str, float | None]] = {}
    seconds_times: dict[str, dict[str, float | None]] = {}
    for sweep_id in sweep_ids:
        sweep = sweep_repository.get_sweep(session, sweep_id, principal)
        problem = _problem(session, sweep_id, metric, better, tolerance)
        problems.append({"sweep_id": sweep_id, "name": sweep.name or f"sweep {sweep_id}", **problem})
        key = f"{sweep_id}"
        epochs_times[key] = {o: t["epochs"] for o, t in problem["times"].items()}
        seconds_times[key] = {o: t["seconds"] for o, t in problem["times"].items()}
    return {
        "metric": metric,
        "tolerance": tolerance,
        "problems": problems,
        "epochs": stats.performance_profiles(epochs_times),
        "seconds": stats.performance_profiles(seconds_times),
    }


def _problem(session: Session, sweep_id: int, metric: str, mode: str, tolerance: float) -> dict[str, Any]:
    """A sweep's target and each optimizer's time to it: in epochs, and in seconds unless its runs
    trained in packs (a pack's trials share one clock, so their seconds say nothing apart)."""
    found = arms(repository.job_values(session, sweep_id, f"final_{metric}"), sweep_id)
    means = {arm.config_hash: statistics.fmean(v.values()) for arm in found if (v := arm.values())}
    if not means:
        return {"target": None, "times": {}}
    best = min(means.values()) if mode == "min" else max(means.values())
    target = _target(best, tolerance, mode)
    curves = repository.epoch_curves(session, [j.job_id for arm in found for j in arm.jobs], metric)
    times: dict[str, dict[str, Any]] = {}
    for arm in found:
        finished = [j for j in arm.jobs if j.status in (JobStatus.succeeded, JobStatus.diverged)]
        if not finished:
            continue
        reached = [_reach(curves[j.job_id], target, mode) for j in finished]
        epochs = _median([r[0] for r in reached])
        seconds = None if any(j.packed for j in finished) else _median([r[1] for r in reached])
        mine = times.setdefault(arm.jobs[0].optimizer, {"epochs": None, "seconds": None})
        # Each measure takes the optimizer's best configuration for it, as after tuning.
        for measure, value in (("epochs", epochs), ("seconds", seconds)):
            if value is not None and (mine[measure] is None or value < mine[measure]):
                mine[measure], mine[f"{measure}_config"] = value, arm.label
    return {"target": target, "times": times, "packed": any(j.packed for arm in found for j in arm.jobs)}


def _reach(curve: list[tuple[int, float, Any]], target: float, mode: str) -> tuple[float | None, float | None]:
    epochs, seconds, values = [c[0] for c in curve], [c[1] for c in curve], [c[2] for c in curve]
    epoch, elapsed = stats.time_to_target(epochs, seconds, values, target=target, mode=mode)  # type: ignore[arg-type]
    if elapsed is not None:
        elapsed = max(elapsed, 1e-9)  # a profile's ratios need positive times
    return (float(epoch) if epoch is not None else None), elapsed


def _median(values: list[float | None]) -> float | None:
    """The median, counting a seed that never reached the target as infinitely late."""
    ordered = sorted(float("inf") if v is None else v for v in values)
    middle = statistics.median(ordered)
    return None if middle == float("inf") else float(middle)


def trajectories(session: Session, sweep_id: int, principal: Principal) -> dict[str, Any]:
    """Every 2-D test function run of the sweep: its path, and the function's contour to draw it on."""
    from optim_engine.spec.surfaces import grid, surface

    sweep_repository.get_sweep(session, sweep_id, principal)
    results = repository.job_results(session, sweep_id)
    paths, functions = [], set()
    for job in repository.job_values(session, sweep_id, "final_train_loss"):
        result, dataset = results.get(job.job_id, (None, {}))
        if not _is_path(result):
            continue
        assert result is not None
        functions.add((result["function"], (dataset.get("params") or {}).get("condition")))
        paths.append(
            {
                "job_id": job.job_id,
                "label": config_label(job.config, job.optimizer),
                "optimizer": job.optimizer,
                "lr": job.lr,
                "seed": job.seed,
                "status": job.status,
                "x": result["x"],
                "y": result["y"],
                "value": result["value"],
            }
        )
    if len(functions) != 1:
        msg = "the sweep has no finished 2-D test function run" if not functions else "its runs use several functions"
        raise InvalidFields([field_error(("path", "sweep_id"), msg, "no_trajectories")])
    ((name, condition),) = functions
    drawn = surface(name, condition)
    xs, ys, zs = grid(name, 120, condition=condition)
    return {
        "function": name,
        "bounds": [list(drawn.bounds[0]), list(drawn.bounds[1])],
        "minimum": list(drawn.minimum) if drawn.minimum is not None else None,
        "contour": {"x": xs, "y": ys, "z": zs},
        "paths": paths,
    }


def _check_range_test_fits(tested: Mapping[str, Any], base: Mapping[str, Any], job_id: int) -> None:
    """A range test's suggestion holds for the model, data, loss, batch size and optimizer it ran."""
    keys = ("model", "dataset", "loss", "batch_size")
    differ = [key for key in keys if tested.get(key) != base.get(key)]
    if (tested.get("optimizer") or {}).get("name") != (base.get("optimizer") or {}).get("name"):
        differ.append("optimizer.name")
    if differ:
        msg = f"job {job_id} tested another setting: {', '.join(differ)} differ from the sweep's base"
        raise InvalidFields([field_error(("body", "lr_from", "job_id"), msg, "range_test_mismatch")])


def _is_path(result: Mapping[str, Any] | None) -> bool:
    """A stored trajectory this code can draw (results written by other versions are skipped)."""
    from optim_engine.spec.surfaces import SURFACES

    if not result or result.get("kind") != "trajectory" or result.get("function") not in SURFACES:
        return False
    return all(isinstance(result.get(key), list) for key in ("x", "y", "value"))


def job_result(session: Session, job_id: int, principal: Principal) -> dict[str, Any]:
    """A job's result beyond its epochs (None for a plain training run, or until it finishes)."""
    job = job_repository.get_job(session, job_id, principal)
    return {"job_id": job.id, "status": job.status, "result": job.result}


def lr_suggestion(
    session: Session, job_id: int, principal: Principal, suggestion: str, base: Mapping[str, Any] | None = None
) -> float:
    """The learning rate a finished LR range test suggests; a 422 naming ``lr_from`` otherwise,
    also when the test ran another problem or optimizer than ``base`` (a sweep's base spec)."""
    where = ("body", "lr_from", "job_id")
    try:
        job = job_repository.get_job(session, job_id, principal)
    except JobNotFound:
        raise InvalidFields([field_error(where, f"job {job_id} not found", "unknown_job")]) from None
    result = job.result or {}
    if base is not None:
        _check_range_test_fits(job.spec, base, job_id)
    if result.get("kind") != "lr_range_test":
        why = "has not finished" if job.status in (JobStatus.queued, JobStatus.running) else "is not an LR range test"
        raise InvalidFields([field_error(where, f"job {job_id} {why}", "not_a_range_test")])
    value = (result.get("suggestions") or {}).get(suggestion)
    if not isinstance(value, int | float) or value <= 0:
        msg = f"job {job_id}'s range test found no {suggestion} suggestion (its loss never fell steadily)"
        raise InvalidFields([field_error(("body", "lr_from", "suggestion"), msg, "no_suggestion")])
    return float(value)
