"""Adaptive search against an exhaustive grid on the same space: how many trials TPE needs to find
what the grid finds, and how many epochs successive halving (ASHA) saves.

Workload: scikit-learn's digits, MLP 64-128-10, cross_entropy, batch 64, 15 epochs, 3 seeds per
configuration. Space: optimizer in {sgd, adam, adamw}; log lr in [1e-4, 1]; momentum in [0, 0.95]
for sgd only (sgd with momentum 0 is plain sgd); log weight decay in [1e-6, 1e-2].

The grid: sgd, sgd + momentum 0.9, adam and adamw x 7 log-spaced learning rates x 3 weight
decays = 84 configurations x 3 seeds, trained once with the engine (packed, as the service would)
and kept in ``bench/.cache/`` under a key of everything that decides its numbers; its best
configuration (mean final val_loss over the seeds) and that mean's 95% interval define the target:
a configuration whose mean is at most the best's upper bound "reaches the grid's best".

Through the service (a fresh ``optimlab up --workers 2``, embedded):
  TPE       ``--sweeps`` sweeps (sampler seeds 0..n-1) of budget 42 (half the grid), parallelism
            4: the trials a sweep needed to reach the target, as a fraction of the grid's 84;
            the median over sweeps is the figure (target <= 0.30).
  ASHA      one TPE sweep of budget 42 with ``pruner={"name": "asha", "reduction_factor": 3}``:
            epochs trained (every job's epochs_done) against the same trials unpruned (trials x
            3 seeds x 15); its best complete trial must reach the target (target: >= 60% saved).

    python bench/adaptive_search.py [--sweeps 5] [--rebuild-grid]

Last line: ``tpe trials fraction <x>; asha epochs saved <y>``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

EPOCHS, SEEDS, BUDGET, PARALLELISM = 15, [0, 1, 2], 42, 4
BASE: dict[str, Any] = {
    "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
    "dataset": {"name": "digits"},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.1},
    "batch_size": 64,
    "epochs": EPOCHS,
    "device": "cpu",
}
SPACE: dict[str, Any] = {
    "optimizer.name": {"choice": ["sgd", "adam", "adamw"]},
    "optimizer.lr": {"log_uniform": [1e-4, 1.0]},
    "optimizer.params.momentum": {"uniform": [0.0, 0.95], "when": {"optimizer.name": ["sgd"]}},
    "optimizer.params.weight_decay": {"log_uniform": [1e-6, 1e-2]},
}
GRID_LRS = [1e-4 * 10 ** (4 * i / 6) for i in range(7)]
GRID_DECAYS = [1e-6, 1e-4, 1e-2]
GRID_OPTIMIZERS = [("sgd", {}), ("sgd", {"momentum": 0.9}), ("adam", {}), ("adamw", {})]
CACHE = ROOT / "bench" / ".cache"


def grid_configs() -> list[dict[str, Any]]:
    """The grid's 84 optimizers (a spec's ``optimizer`` each)."""
    return [
        {"name": name, "lr": float(f"{lr:.6g}"), "params": {**params, "weight_decay": decay}}
        for name, params in GRID_OPTIMIZERS
        for lr in GRID_LRS
        for decay in GRID_DECAYS
    ]


def t975(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def grid_results(rebuild: bool) -> list[dict[str, Any]]:
    """Every grid configuration's mean final val_loss over the seeds and its 95% half-width,
    trained once and cached."""
    import torch

    from optim_engine import train_trials

    key = hashlib.sha256(
        json.dumps(
            [BASE, grid_configs(), SEEDS, torch.__version__, importlib.metadata.version("optimlab")], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    path = CACHE / f"adaptive_grid-{key}.json"
    if path.exists() and not rebuild:
        return list(json.loads(path.read_text()))
    started = time.perf_counter()
    specs = [BASE | {"optimizer": config, "seed": seed} for config in grid_configs() for seed in SEEDS]
    losses: list[float] = []
    for start in range(0, len(specs), 32):  # packs of at most 32, as the service packs a sweep
        for result in train_trials(specs[start : start + 32], packed=True, num_threads=1):
            loss = result.history[-1].val_loss if result.outcome != "diverged" else None
            losses.append(loss if loss is not None and math.isfinite(loss) else math.inf)
    rows = []
    for i, config in enumerate(grid_configs()):
        values = losses[i * len(SEEDS) : (i + 1) * len(SEEDS)]
        finite = all(math.isfinite(v) for v in values)
        mean = statistics.fmean(values) if finite else math.inf
        half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)) if finite else math.inf
        rows.append({"optimizer": config, "mean": mean, "half_width": half})
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows))
    print(f"grid: {len(specs)} runs trained in {time.perf_counter() - started:.1f} s, cached in {path.name}")
    return rows


def trials_of(client: Any, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's trials in the order they were asked (number, state, value)."""
    return sorted(client.trials(sweep)["trials"], key=lambda t: t["number"])


def _number(value: Any) -> float:
    """A trial's value as the API writes it (a diverged seed makes it "Infinity")."""
    return float(value) if value is not None else math.inf


def tpe_sweep(client: Any, sampler_seed: int, **extra: Any) -> dict[str, Any]:
    """A TPE sweep of the space (budget, parallelism and seeds as above), once it is done."""
    sweep = client.sweep(
        BASE,
        strategy="tpe",
        space=SPACE,
        budget=BUDGET,
        parallelism=PARALLELISM,
        seeds=SEEDS,
        sampler_seed=sampler_seed,
        **extra,
    )
    client.wait(sweep, progress=False)
    return dict(sweep)


def run_tpe(client: Any, sampler_seed: int, target: float, best: float) -> tuple[float, float, float]:
    """One TPE sweep: the trials it needed to reach ``target`` and to beat the grid's ``best``
    mean itself (each as a fraction of the grid's size), and its best mean."""
    sweep = tpe_sweep(client, sampler_seed, name=f"tpe {sampler_seed}")
    values = [_number(t["value"]) if t["state"] == "complete" else math.inf for t in trials_of(client, sweep)]
    return _first(values, target), _first(values, best), min(values)


def _first(values: list[float], bound: float) -> float:
    """The trials needed until one is at most ``bound``, over the grid's size (inf: never)."""
    reached = next((i + 1 for i, v in enumerate(values) if v <= bound), None)
    return reached / len(grid_configs()) if reached is not None else math.inf


def run_asha(client: Any) -> tuple[float, float, int]:
    """One TPE sweep with ASHA: (share of epochs saved, best complete mean, trials)."""
    sweep = tpe_sweep(client, 100, name="tpe + asha", pruner={"name": "asha", "reduction_factor": 3})
    jobs = client.jobs(sweep_id=sweep["id"], limit=10_000)
    trained = sum(int(job["summary"]["epochs_done"]) for job in jobs)
    trials = trials_of(client, sweep)
    unpruned = len(trials) * len(SEEDS) * EPOCHS
    complete = [_number(t["value"]) for t in trials if t["state"] == "complete"]
    return 1 - trained / unpruned, min(complete, default=math.inf), len(trials)


def _shown(fraction: float) -> str:
    return f"{fraction:.3f}" if math.isfinite(fraction) else f"never (budget {BUDGET})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=5, help="TPE sweeps (sampler seeds 0..n-1)")
    parser.add_argument("--rebuild-grid", action="store_true", help="train the grid again")
    args = parser.parse_args()
    from sweep_vs_optuna import optimlab_service

    grid = grid_results(args.rebuild_grid)
    best = min(grid, key=lambda row: row["mean"])
    target = best["mean"] + best["half_width"]
    print(
        f"grid: {len(grid)} configurations x {len(SEEDS)} seeds; best {best['optimizer']}: mean val_loss "
        f"{best['mean']:.4f} +- {best['half_width']:.4f} (95%); target <= {target:.4f}"
    )
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "home"
        client = stack.enter_context(optimlab_service(home, "up"))
        fractions = []
        for seed in range(args.sweeps):
            started = time.perf_counter()
            fraction, beat, best_mean = run_tpe(client, seed, target, best["mean"])
            fractions.append(fraction)
            print(
                f"tpe sweep {seed}: reached the target after {_shown(fraction)} of the grid's trials, the grid's "
                f"best mean itself after {_shown(beat)}; best mean {best_mean:.4f} ({time.perf_counter() - started:.0f} s)"
            )
        saved, asha_best, n_trials = run_asha(client)
        found = "reaches" if asha_best <= target else "DOES NOT reach"
        print(
            f"asha: {n_trials} trials, {saved:.1%} of their epochs saved; best mean {asha_best:.4f} ({found} the target)"
        )
    median = statistics.median(fractions)
    print(f"tpe trials fraction {median:.3f}; asha epochs saved {saved:.3f}")


if __name__ == "__main__":
    main()
