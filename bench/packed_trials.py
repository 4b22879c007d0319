"""Packed trials vs the same trials run one after another, side by side in one process.

Workload: MLP 64-128-10 on scikit-learn's digits, batch 64, 10 epochs; N trials mixing SGD,
SGD + momentum 0.9 and Adam at log-spaced learning rates, each with its own seed (so its own
initial weights and batch order). For each N, every repetition runs ``train_packed(specs)`` and
``[train(s) for s in specs]`` (the ordinary engine, what a worker runs per job), in an order
that alternates per repetition; the table shows medians. Both sides do their own set-up (data,
initial weights) and validate after every epoch.

Agreement is each trial's largest per-epoch |train or val loss difference| between the packed
and the sequential run; the table shows its median and maximum over the N trials.

The layout: one process, ``--threads`` torch threads on both sides (default 1, the workers'
default). The last line printed is the N = 32 speedup.

    python bench/packed_trials.py [--sizes 8 32 128] [--reps 3] [--epochs 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import torch

from optim_engine import train, train_packed

BASE: dict[str, Any] = {
    "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
    "dataset": {"name": "digits"},
    "loss": "cross_entropy",
    "batch_size": 64,
}


def trials(n: int, epochs: int, device: str) -> list[dict[str, Any]]:
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
        specs.append({**BASE, "optimizer": optimizer, "epochs": epochs, "seed": i, "device": device})
    return specs


def _agreement(packed: list[Any], alone: list[Any]) -> list[float]:
    worst = []
    for mine, theirs in zip(packed, alone, strict=True):
        diff = 0.0
        for a, b in zip(mine.history, theirs.history, strict=True):
            diff = max(diff, abs(a.train_loss - b.train_loss), abs((a.val_loss or 0.0) - (b.val_loss or 0.0)))
        worst.append(diff)
    return worst


def measure(n: int, reps: int, epochs: int, threads: int, device: str) -> dict[str, float]:
    specs = trials(n, epochs, device)
    packed_s, alone_s = [], []
    agreement: list[float] = []
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
        "median_diff": statistics.median(agreement),
        "max_diff": max(agreement),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if 32 not in args.sizes:
        args.sizes.append(32)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"layout: one process, {args.threads} torch thread(s) for both sides; device {args.device} ({where}); "
        f"{os.cpu_count()} cores; torch {torch.__version__}"
    )
    train_packed(trials(2, 1, args.device), num_threads=args.threads)  # warm-up: imports, data cache
    train(trials(1, 1, args.device)[0], num_threads=args.threads)
    print(f"{'N':>5} {'packed s':>10} {'sequential s':>13} {'speedup':>8} {'median |diff|':>14} {'max |diff|':>11}")
    rows = {}
    for n in args.sizes:
        row = rows[n] = measure(n, args.reps, args.epochs, args.threads, args.device)
        print(
            f"{n:>5} {row['packed']:>10.3f} {row['alone']:>13.3f} {row['speedup']:>7.2f}x "
            f"{row['median_diff']:>14.2e} {row['max_diff']:>11.2e}",
            flush=True,
        )
    print(f"N = 32 speedup, packed vs sequential (target >= 5x): {rows[32]['speedup']:.2f}x")


if __name__ == "__main__":
    main()
