"""The seed article's comparison, reproduced through the service.

SGD (lr 0.01), SGD with momentum 0.9 and Adam (lr 0.001), each with and without StepLR(10, 0.1),
over seeds 0, 1, 2: on the article's Linear(10, 1) + MSE problem and on digits with an MLP.
Prints each leaderboard and saves the curves as PNGs.

    optimlab up &                      # or any running server (OPTIMLAB_URL)
    python examples/optimizer_comparison.py [--out .] [--epochs 30]

The same linear sweep as a file: `optimlab sweep examples/optimizer_comparison.yaml --wait`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.client import Client

OPTIMIZERS = [
    {"name": "sgd", "lr": 0.01},
    {"name": "sgd", "lr": 0.01, "params": {"momentum": 0.9}},
    {"name": "adam", "lr": 0.001},
]
SCHEDULES = [None, {"name": "step_lr", "params": {"step_size": 10, "gamma": 0.1}}]
SEEDS = [0, 1, 2]


def problems(epochs: int) -> dict[str, dict[str, Any]]:
    return {
        "linear": {
            "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
            "dataset": {"name": "synthetic_regression", "params": {"n_samples": 1024, "n_features": 10}},
            "loss": "mse",
            "optimizer": OPTIMIZERS[0],
            "epochs": epochs,
            "batch_size": 32,
        },
        "digits": {
            "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
            "dataset": {"name": "digits"},
            "loss": "cross_entropy",
            "optimizer": OPTIMIZERS[0],
            "epochs": epochs,
            "batch_size": 64,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="server (default OPTIMLAB_URL or http://127.0.0.1:8000)")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the PNGs go")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import pandas as pd

    pd.set_option("display.width", 200)
    with Client(args.url) as client:
        for problem, base in problems(args.epochs).items():
            sweep = client.sweep(
                base,
                grid={"optimizer": OPTIMIZERS, "scheduler": SCHEDULES},
                seeds=SEEDS,
                name=f"seed article: {problem}",
            )
            print(f"\n{problem}: sweep {sweep['id']}, {sweep['n_jobs']} jobs")
            client.wait(sweep)
            board = client.leaderboard(sweep, metric="val_loss", which="final")
            columns = ["rank", "configuration", "n", "mean", "std", "ci95_low", "ci95_high", "diverged"]
            print(board[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
            png = client.plot_curves(sweep, args.out / f"optimizer_comparison_{problem}.png", metric="val_loss")
            print(f"curves: {png}")


if __name__ == "__main__":
    main()
