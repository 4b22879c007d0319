"""Packed trials vs the same trials run one after another, side by side in one process.

Workload: MLP 64-128-10 on scikit-learn's digits, batch 64, 10 epochs; N trials mixing SGD,
SGD + momentum 0.9 and Adam at log-spaced learning rates, each with its own seed (so its own
initial weights and batch order). For each N, every repetition runs ``train_packed(specs)`` and
``[train(s) for s in specs]`` (the ordinary engine, what a worker runs per job), in an order
that alternates per repetition; the table shows medians. Both sides do their own set-up (data,
initial weights) and validate after every epoch.

Agreement is each trial's largest per-epoch |train or val loss difference| between the packed
and the sequential run; the table shows its median and maximum over the N trials, and a trial
whose outcome differs (diverged on one side only) counts as a mismatch.

The layout: one process, ``--threads`` torch threads on both sides (default 1, the workers'
default). The last line printed is the N = 32 speedup (the largest N when 32 is not measured).
``--device cuda`` and ``--width 512`` are bench/gpu_check.sh's GPU figures (a small model leaves
a GPU idle: one trial at a time is launch-bound, which is what packing removes); ``--json``
also writes the table to a file.

    python bench/packed_trials.py [--sizes 8 32 128] [--reps 3] [--epochs 10] [--threads 1]
                                  [--device cpu] [--width 128] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from optim_engine import train, train_packed

BASE: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "loss": "cross_entropy",
    "batch_size": 64,
}
# Packed and sequential runs agree to float32 drift (~1e-7 per epoch on a CPU, tests/optim_engine/
# test_packed.py holds 1e-4 at most); a wrong vectorized update is off by 1e-1 and more.
AGREEMENT_LIMIT = 1e-3


def trials(n: int, epochs: int, device: str, width: int = 128) -> list[dict[str, Any]]:
    """n trials: SGD / momentum / Adam in turn, learning rates log-spaced per optimizer."""
    families = [
        ("sgd", {}, (1e-3, 0.5)),
        ("sgd", {"momentum": 0.9}, (1e-4, 0.1)),
        ("adam", {}, (1e-4, 1e-2)),
    ]
    specs = []
    for i in range(n):
        name, params, (low, high) = families[i % 3]
        share = (n + 2 - i % 3) // 3  # trials of this family
        position = i // 3
        lr = low * (high / low) ** (position / max(1, share - 1))
        optimizer = {"name": name, "lr": lr, "params": params}
        model = {"name": "mlp", "params": {"depth": 1, "width": width}}
        specs.append({**BASE, "model": model, "optimizer": optimizer, "epochs": epochs, "seed": i, "device": device})
    return specs


def _agreement(packed: list[Any], alone: list[Any]) -> tuple[list[float], int]:
    """Each trial's largest finite loss difference over the epochs both sides ran, and how many
    trials ended differently (a diverged trial's losses are not finite, so it is compared by its
    outcome and the epoch it diverged at)."""
    worst, mismatched = [], 0
    for mine, theirs in zip(packed, alone, strict=True):
        mismatched += (mine.outcome, mine.diverged_epoch) != (theirs.outcome, theirs.diverged_epoch)
        diff = 0.0
        for a, b in zip(mine.history, theirs.history, strict=False):
            for x, y in ((a.train_loss, b.train_loss), (a.val_loss or 0.0, b.val_loss or 0.0)):
                if math.isfinite(x) and math.isfinite(y):
                    diff = max(diff, abs(x - y))
        worst.append(diff)
    return worst, mismatched


def measure(n: int, reps: int, epochs: int, threads: int, device: str, width: int = 128) -> dict[str, float]:
    specs = trials(n, epochs, device, width)
    packed_s: list[float] = []
    alone_s: list[float] = []
    agreement: tuple[list[float], int] = ([], 0)
    for rep in range(reps):
        order = ("packed", "alone") if rep % 2 == 0 else ("alone", "packed")
        results: dict[str, list[Any]] = {}
        for side in order:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            if side == "packed":
                results[side] = train_packed(specs, num_threads=threads)
            else:
                results[side] = [train(spec, num_threads=threads) for spec in specs]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            (packed_s if side == "packed" else alone_s).append(time.perf_counter() - started)
        agreement = _agreement(results["packed"], results["alone"])
    packed, alone = statistics.median(packed_s), statistics.median(alone_s)
    return {
        "packed": packed,
        "alone": alone,
        "speedup": alone / packed,
        "median_diff": statistics.median(agreement[0]),
        "max_diff": max(agreement[0]),
        "mismatched": agreement[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=128, help="the MLP's hidden width")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"layout: one process, {args.threads} torch thread(s) for both sides; device {args.device} ({where}); "
        f"{os.cpu_count()} cores; torch {torch.__version__}; MLP 64-{args.width}-10, {args.epochs} epochs"
    )
    train_packed(trials(2, 1, args.device, args.width), num_threads=args.threads)  # warm-up: imports, data cache
    train(trials(1, 1, args.device, args.width)[0], num_threads=args.threads)
    print(
        f"{'N':>5} {'packed s':>10} {'sequential s':>13} {'speedup':>8} {'median |diff|':>14} {'max |diff|':>11} "
        f"{'mismatched':>10}"
    )
    rows = {}
    for n in args.sizes:
        row = rows[n] = measure(n, args.reps, args.epochs, args.threads, args.device, args.width)
        print(
            f"{n:>5} {row['packed']:>10.3f} {row['alone']:>13.3f} {row['speedup']:>7.2f}x "
            f"{row['median_diff']:>14.2e} {row['max_diff']:>11.2e} {row['mismatched']:>10}",
            flush=True,
        )
        if args.json is not None:  # after every row: a run stopped at its time limit keeps the rows it has
            _write(args, rows)
    headline = 32 if 32 in rows else max(rows)
    print(f"N = {headline} speedup, packed vs sequential (target >= 5x): {rows[headline]['speedup']:.2f}x")


def _write(args: argparse.Namespace, rows: dict[int, dict[str, float]]) -> None:
    agree = all(row["max_diff"] <= AGREEMENT_LIMIT and not row["mismatched"] for row in rows.values())
    figures = {"device": args.device, "width": args.width, "epochs": args.epochs, "reps": args.reps, "agree": agree}
    args.json.write_text(json.dumps(figures | {"rows": {str(n): row for n, row in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
