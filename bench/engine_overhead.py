"""How much the engine costs over a hand-written torch loop, side by side in one process.

Workload: MLP 64-128-10 on scikit-learn's digits, batch 64, Adam lr 1e-3, 20 epochs, one
thread. Each repetition runs every variant once, in an order rotated per repetition; the table
shows medians over the repetitions.

    (a) engine defaults vs a hand-written loop with the same optimizer implementation
        (the engine's overhead; target <= 1.05)
    (b) engine defaults vs the naive hand-written loop with torch's default Adam (target <= 0.8)
    (c) a DataLoader(TensorDataset) loop, for contrast

Every variant does the same work per run: load and standardize digits, build the model, train,
and measure validation loss after each epoch. The last line printed is ratio (a). With
``--device cuda`` every variant trains on the GPU (the engine picks fused Adam there too, so (a)
still compares the same optimizer implementation); ``--json`` also writes the figures to a file
(bench/gpu_check.sh reads them).

    python bench/engine_overhead.py [--reps 11] [--epochs 20] [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from optim_engine import JobSpec, build_model, train
from optim_engine._seeding import epoch_permutation

BATCH = 64
SPEC = {
    "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "loss": "cross_entropy",
    "optimizer": {"name": "adam", "lr": 1e-3},
    "batch_size": BATCH,
    "device": "cpu",
}


def _digits(device: str) -> tuple[torch.Tensor, ...]:
    bunch = load_digits()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    order = np.random.default_rng(0).permutation(len(x))
    n_val = int(len(x) * 0.2)
    val, tr = order[:n_val], order[n_val:]
    mean, std = x[tr].mean(0), x[tr].std(0)
    std[std < 1e-8] = 1.0
    x = (x - mean) / std
    features = torch.as_tensor(x, dtype=torch.float32, device=device)
    labels = torch.as_tensor(y, device=device)
    return features[tr], labels[tr], features[val], labels[val]


def _validate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: torch.nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        loss = loss_fn(model(x), y).item()
    model.train()
    return loss


def hand_written(epochs: int, fused: bool, device: str) -> None:
    """nanoGPT-style loop: tensors in memory, one permutation gather per epoch, batch views."""
    x, y, x_val, y_val = _digits(device)
    spec = JobSpec.model_validate({**SPEC, "epochs": epochs})
    model = build_model(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        order = epoch_permutation(len(x), 0, epoch).to(device)
        xs, ys = x[order], y[order]
        total = torch.zeros((), device=device)
        for start in range(0, len(xs), BATCH):
            xb, yb = xs[start : start + BATCH], ys[start : start + BATCH]
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total.add_(loss.detach(), alpha=len(xb))
        _ = total.item() / len(xs), _validate(model, x_val, y_val, loss_fn)


def naive(epochs: int, device: str) -> None:
    """The loop most people write first: index a batch per step, .item() every step, default Adam."""
    x, y, x_val, y_val = _digits(device)
    model = build_model(JobSpec.model_validate({**SPEC, "epochs": epochs})).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    for _epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        _ = total / len(x), _validate(model, x_val, y_val, loss_fn)


def dataloader(epochs: int, device: str) -> None:
    """A DataLoader over a TensorDataset, default Adam."""
    x, y, x_val, y_val = _digits(device)
    model = build_model(JobSpec.model_validate({**SPEC, "epochs": epochs})).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _epoch in range(epochs):
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
        _ = total / len(x), _validate(model, x_val, y_val, loss_fn)


def engine(epochs: int, device: str) -> None:
    """optim_engine.train with its defaults (it picks the fused Adam kernel on the CPU and on CUDA)."""
    train({**SPEC, "epochs": epochs, "device": device}, num_threads=1)


def _sync(device: str) -> None:
    """Wait for the GPU: a variant's time must include the kernels it queued."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(reps: int, epochs: int, device: str) -> dict[str, float]:
    """Median seconds per run of each variant, in an order rotated per repetition."""
    variants: dict[str, Callable[[int, str], None]] = {
        "engine (defaults)": engine,
        "hand-written, same optimizer (fused Adam)": lambda e, d: hand_written(e, True, d),
        "hand-written, naive (default Adam)": naive,
        "DataLoader loop (default Adam)": dataloader,
    }
    names = list(variants)
    for name in names:  # warm-up: first-call costs (imports, allocator, CUDA context) are not the loop's
        variants[name](1, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        rotated = names[rep % len(names) :] + names[: rep % len(names)]
        for name in rotated:
            _sync(device)
            start = time.perf_counter()
            variants[name](epochs, device)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    median = measure(args.reps, args.epochs, args.device)
    names = list(median)
    print(
        f"MLP 64-128-10 on digits, batch {BATCH}, Adam, {args.epochs} epochs, 1 thread, device {args.device}, "
        f"{args.reps} reps (median)"
    )
    print(f"{'variant':<44} {'s/run':>8} {'ms/epoch':>9}")
    for name in names:
        print(f"{name:<44} {median[name]:8.3f} {1000 * median[name] / args.epochs:9.2f}")
    same, naive_time = median[names[1]], median[names[2]]
    figures = {
        "device": args.device,
        "engine_vs_same_impl": median[names[0]] / same,
        "engine_vs_naive": median[names[0]] / naive_time,
        "dataloader_vs_naive": median[names[3]] / naive_time,
        "engine_ms_per_epoch": 1000 * median[names[0]] / args.epochs,
    }
    print(f"(b) engine defaults / naive hand-written loop: {figures['engine_vs_naive']:.3f}  (target <= 0.8)")
    print(f"(c) DataLoader loop / naive hand-written loop: {figures['dataloader_vs_naive']:.3f}")
    print(f"(a) engine / hand-written loop, same optimizer implementation: {figures['engine_vs_same_impl']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
