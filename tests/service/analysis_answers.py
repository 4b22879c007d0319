"""Fixed answers shaped as the issue-13 analysis routes send them (the HTTP contract), for the
client, plot and CLI tests. The statistics are what ``service.analysis.stats`` computes for these
values, rounded; the tests check that the client and the CLI show them, not how they are made."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

SGD, ADAM, ADAMW = "a1b2c3d4e5f6", "0f9e8d7c6b5a", "77aa88bb99cc"


def arm(config_hash: str, label: str, sweep_id: int = 3) -> dict[str, Any]:
    name, _, lr = label.partition(" lr=")
    return {
        "sweep_id": sweep_id,
        "config_hash": config_hash,
        "config": {"optimizer.name": name, "optimizer.lr": float(lr)},
        "label": label,
    }


def compare() -> dict[str, Any]:
    """adam (A) against sgd (B) on five paired seeds; seed 5 of A has no partner (B diverged)."""
    return {
        "metric": "val_loss",
        "which": "best",
        "mode": "min",
        "a": arm(ADAM, "adam lr=0.001"),
        "b": arm(SGD, "sgd lr=0.1"),
        "n": 5,
        "seeds": [0, 1, 2, 3, 4],
        "a_values": [0.30, 0.32, 0.29, 0.31, 0.33],
        "b_values": [0.35, 0.34, 0.36, 0.30, 0.38],
        "diffs": [-0.05, -0.02, -0.07, 0.01, -0.05],
        "mean_diff": -0.036,
        "std_diff": 0.0313,
        "t_ci": [-0.07487, 0.00287],
        "bca_ci": [-0.056, -0.008],
        "wilcoxon_p": 0.125,
        "wilcoxon_method": "exact",
        "a_wins": 4,
        "b_wins": 1,
        "ties": 0,
        "p_a_better": 0.8,
        "unpaired_a": [5],
        "unpaired_b": [],
        "excluded": [{"side": "b", "seed": 5, "job_id": 42, "status": "diverged", "reason": "diverged"}],
        "verdict": "inconclusive",
    }


def compare_decisive() -> dict[str, Any]:
    """The same pair with a verdict: A's t CI is below zero and p < 0.05."""
    body = compare() | {"t_ci": [-0.06, -0.01], "wilcoxon_p": 0.031, "verdict": "a"}
    return body


def _cell(a: str, b: str, mean: float, verdict: str = "inconclusive") -> dict[str, Any]:
    spread = abs(mean) + 0.01
    return {
        "a": a,
        "b": b,
        "n": 5,
        "mean_diff": mean,
        "t_ci": [mean - spread, mean + spread],
        "bca_ci": [mean - spread / 2, mean + spread / 2],
        "wilcoxon_p": 0.0625 if verdict == "inconclusive" else 0.031,
        "p_a_better": 0.8 if mean < 0 else 0.2,
        "verdict": verdict,
    }


def compare_matrix() -> dict[str, Any]:
    """Three configurations; adam beats sgd decisively, the rest is inconclusive."""
    return {
        "metric": "val_loss",
        "which": "best",
        "mode": "min",
        "configs": [
            {**arm(SGD, "sgd lr=0.1"), "n": 5, "mean": 0.346},
            {**arm(ADAM, "adam lr=0.001"), "n": 5, "mean": 0.31},
            {**arm(ADAMW, "adamw lr=0.001"), "n": 5, "mean": 0.316},
        ],
        "cells": [
            _cell(SGD, ADAM, 0.036, "b"),
            _cell(SGD, ADAMW, 0.03),
            _cell(ADAM, SGD, -0.036, "a"),
            _cell(ADAM, ADAMW, -0.006),
            _cell(ADAMW, SGD, -0.03),
            _cell(ADAMW, ADAM, 0.006),
        ],
    }


def _lr_row(lr: float, values: list[float | None], seeds: range = range(3)) -> dict[str, Any]:
    """One lr of a divergence map: a None value is a diverged run."""
    finite = [v for v in values if v is not None]
    jobs = [
        {"job_id": 100 + int(1000 * lr) + s, "seed": s, "status": "diverged" if v is None else "succeeded", "value": v}
        for s, v in zip(seeds, values, strict=True)
    ]
    diverged = len(values) - len(finite)
    mean = sum(finite) / len(finite) if finite else None
    std = (
        math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
        if mean is not None and len(finite) > 1
        else None
    )
    return {
        "lr": lr,
        "runs": len(values),
        "diverged": diverged,
        "fraction": diverged / len(values),
        "mean": mean,
        "std": std,
        "jobs": jobs,
    }


def divergence() -> dict[str, Any]:
    """sgd (momentum 0.9) is stable up to lr 0.1 and diverges everywhere from 1.0; adam is
    stable up to 0.001 and half-diverged at 0.1, never fully."""
    return {
        "metric": "val_loss",
        "which": "final",
        "groups": [
            {
                "group": "sgd momentum=0.9",
                "optimizer": "sgd",
                "config": {"optimizer.name": "sgd", "optimizer.params.momentum": 0.9},
                "stable_max_lr": 0.1,
                "diverged_min_lr": 1.0,
                "lrs": [
                    _lr_row(0.01, [0.52, 0.5, 0.51]),
                    _lr_row(0.1, [0.31, 0.3, 0.29]),
                    _lr_row(1.0, [None, None, None]),
                ],
            },
            {
                "group": "adam",
                "optimizer": "adam",
                "config": {"optimizer.name": "adam"},
                "stable_max_lr": 0.001,
                "diverged_min_lr": None,
                "lrs": [
                    _lr_row(0.0001, [0.6, 0.58, 0.61]),
                    _lr_row(0.001, [0.33, 0.32, 0.34]),
                    _lr_row(0.01, [0.4, None, 0.45]),
                ],
            },
        ],
    }


def budget() -> dict[str, Any]:
    """Expected best of k draws from eight sgd trials and five adam trials, with a band."""
    return {
        "metric": "val_loss",
        "which": "best",
        "mode": "min",
        "groups": [
            {
                "group": "sgd",
                "n_trials": 8,
                "k": [1, 2, 3, 4, 5, 6, 7, 8],
                "expected": [0.545, 0.455, 0.423, 0.4083, 0.4003, 0.3954, 0.3922, 0.3898],
                "lo": [0.445, 0.4031, 0.3895, 0.3849, 0.3827, 0.3814, 0.3808, 0.3805],
                "hi": [0.6628, 0.5658, 0.5211, 0.4939, 0.4737, 0.4627, 0.4557, 0.4502],
            },
            {
                "group": "adam",
                "n_trials": 5,
                "k": [1, 2, 3, 4, 5],
                "expected": [0.41, 0.37, 0.355, 0.349, 0.346],
                "lo": [0.36, 0.345, 0.34, 0.338, 0.337],
                "hi": [0.47, 0.41, 0.385, 0.372, 0.364],
            },
        ],
    }


def _profile(ratios: dict[str, dict[str, float | None]], taus: list[float]) -> dict[str, Any]:
    solved = {p: r for p, r in ratios.items() if any(v is not None for v in r.values())}
    optimizers = sorted({o for r in ratios.values() for o in r})
    profiles = {
        o: [sum(1 for r in solved.values() if r[o] is not None and r[o] <= tau) / len(solved) for tau in taus]
        for o in optimizers
    }
    return {"taus": taus, "profiles": profiles, "ratios": solved, "unsolved": [p for p in ratios if p not in solved]}


def profiles() -> dict[str, Any]:
    """Four problems: adam fastest on two, sgd on one, nobody reaches the target on the fourth."""
    times = {
        "1": {"sgd": (10, 20.0), "adam": (5, 11.0)},
        "2": {"sgd": (8, 16.0), "adam": (12, 30.0)},
        "3": {"sgd": (20, 44.0), "adam": (6, 12.0)},
        "4": {"sgd": (None, None), "adam": (None, None)},
    }
    problems = [
        {
            "sweep_id": int(p),
            "name": f"problem {p}",
            "target": 0.3 + 0.01 * int(p),
            "times": {o: {"epochs": e, "seconds": s} for o, (e, s) in t.items()},
        }
        for p, t in times.items()
    ]

    def ratios(index: int) -> dict[str, dict[str, float | None]]:
        found = {}
        for p, t in times.items():
            best = min((v[index] for v in t.values() if v[index] is not None), default=None)
            found[p] = {o: None if v[index] is None or best is None else v[index] / best for o, v in t.items()}
        return found

    taus = [1.0, 1.5, 2.0, 2.5, 3.0, 10 / 3]
    return {
        "metric": "val_loss",
        "tolerance": 0.05,
        "problems": problems,
        "epochs": _profile(ratios(0), taus),
        "seconds": _profile(ratios(1), [1.0, 1.5, 2.0, 2.5, 3.0, 3.7]),
    }


def range_test() -> dict[str, Any]:
    """A range test over 1e-7..10 that stopped at divergence after 90 of 100 steps."""
    lr = np.geomspace(1e-7, 10.0, 100)[:90]
    x = np.log10(lr)
    loss = 2.3 - 1.9 / (1 + np.exp(-1.5 * (x + 3.5))) + np.where(x > -1.0, 12 * (x + 1.0) ** 2, 0.0)
    loss = loss + 0.04 * np.sin(7 * x)
    smoothed, average = [], 0.0
    for i, value in enumerate(loss, start=1):
        average = 0.98 * average + 0.02 * value
        smoothed.append(average / (1 - 0.98**i))
    return {
        "kind": "lr_range_test",
        "lr": [float(v) for v in lr],
        "loss": [float(v) for v in loss],
        "smoothed": smoothed,
        "suggestions": {"steepest": 0.00032, "valley": 0.0021, "min_over_10": 0.0167},
        "stopped": "diverged",
    }


def rosenbrock(x: Any, y: Any) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _descent(lr: float, steps: int, momentum: float = 0.0) -> dict[str, list[float | None]]:
    """Gradient descent (heavy ball) on the Rosenbrock function from its standard start; NaN
    and inf (divergence) sent as None."""
    x, y, vx, vy = np.float64(-1.2), np.float64(1.0), np.float64(0.0), np.float64(0.0)
    points = [(x, y)]
    with np.errstate(all="ignore"):
        for _ in range(steps):
            vx = momentum * vx - 2 * (1 - x) - 400 * x * (y - x**2)
            vy = momentum * vy + 200 * (y - x**2)
            x, y = x - lr * vx, y - lr * vy
            points.append((x, y))
        values = [rosenbrock(px, py) for px, py in points]

    def sent(column: list[Any]) -> list[float | None]:
        return [float(v) if math.isfinite(v) else None for v in column]

    return {"x": sent([p[0] for p in points]), "y": sent([p[1] for p in points]), "value": sent(values)}


def trajectories() -> dict[str, Any]:
    """Three runs on Rosenbrock (two steady, one diverged); a 100 x 80 contour grid in
    meshgrid order (z[i][j] is the value at x[j], y[i])."""
    xs, ys = np.linspace(-2.0, 2.0, 100), np.linspace(-1.0, 3.0, 80)
    grid_x, grid_y = np.meshgrid(xs, ys)
    runs = [  # label, lr, momentum, steps, status
        ("sgd lr=0.002", 0.002, 0.0, 400, "succeeded"),
        ("sgd lr=0.0005 momentum=0.9", 0.0005, 0.9, 400, "succeeded"),
        ("sgd lr=0.008", 0.008, 0.0, 20, "diverged"),
    ]
    paths = [
        {"job_id": 7 + i, "label": name, "optimizer": "sgd", "lr": lr, "seed": 0, "status": status}
        | _descent(lr, steps, momentum)
        for i, (name, lr, momentum, steps, status) in enumerate(runs)
    ]
    return {
        "function": "rosenbrock",
        "bounds": [[-2.0, 2.0], [-1.0, 3.0]],
        "minimum": [1.0, 1.0],
        "contour": {"x": xs.tolist(), "y": ys.tolist(), "z": rosenbrock(grid_x, grid_y).tolist()},
        "paths": paths,
    }


def fresh(answer: dict[str, Any]) -> dict[str, Any]:
    """A copy a test may change."""
    return copy.deepcopy(answer)
