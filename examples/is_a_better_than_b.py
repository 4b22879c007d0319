"""Is A better than B? SGD with momentum against Adam on digits, 10 seeds, compared seed by seed;
an LR range test and a sweep gridded around its suggestion; the Rosenbrock paths of SGD,
momentum and Adam. Run it with the service up (`optimlab up`):

    python examples/is_a_better_than_b.py [--out docs]

It prints the paired comparison and the range test's suggestions, and writes compare.png,
range_test.png, divergence.png and rosenbrock.png into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.client import DEFAULT_URL, Client

DIGITS = {
    "model": {"name": "mlp", "params": {"depth": 1, "width": 64}},
    "dataset": {"name": "digits"},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.05},
    "epochs": 15,
    "batch_size": 64,
}
ARMS = [
    {"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9}},
    {"name": "adam", "lr": 0.001},
]
ROSENBROCK = {
    "model": {"name": "point"},  # starts at the function's classic start, (-1.5, 2)
    "dataset": {"name": "rosenbrock", "params": {"steps_per_epoch": 50}},
    "loss": "value",
    "optimizer": {"name": "sgd", "lr": 0.001},
    "epochs": 10,
}
PATHS = [
    {"name": "sgd", "lr": 0.001},
    {"name": "sgd", "lr": 0.001, "params": {"momentum": 0.9}},
    {"name": "adam", "lr": 0.05},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with Client(args.url) as client:
        sweep = client.sweep(DIGITS, grid={"optimizer": ARMS}, seeds=range(10), name="digits: momentum vs adam")
        client.wait(sweep, progress=False)
        board = client.leaderboard(sweep, metric="val_loss", which="final")
        hashes = dict(zip(board["configuration"], board["config_hash"], strict=True))
        sgd, adam = (next(h for label, h in hashes.items() if label.startswith(name)) for name in ("sgd", "adam"))
        pairs = client.compare(sweep, a=sgd, b=adam, metric="val_loss", which="final")
        answer = pairs.attrs
        print(pairs.to_string(index=False, float_format="%.4f"))
        print(
            f"{answer['a']['label']} - {answer['b']['label']}: mean {answer['mean_diff']:+.4f} over n={answer['n']}, "
            f"95% t CI [{answer['t_ci'][0]:+.4f}, {answer['t_ci'][1]:+.4f}], "
            f"BCa [{answer['bca_ci'][0]:+.4f}, {answer['bca_ci'][1]:+.4f}], "
            f"Wilcoxon p = {answer['wilcoxon_p']:.4g} ({answer['wilcoxon_method']}), "
            f"P(A beats B) = {answer['p_a_better']:.2f}, verdict: {answer['verdict']}"
        )
        client.plot_compare(sweep, a=sgd, b=adam, metric="val_loss", which="final", path=args.out / "compare.png")

        found = client.range_test(DIGITS | {"optimizer": {"name": "adam", "lr": 0.001}}, progress=False)
        print("range test suggestions:", {k: f"{v:.3g}" for k, v in found["suggestions"].items() if v})
        client.plot_range_test(found["job_id"], path=args.out / "range_test.png")
        around = client.sweep(
            DIGITS | {"optimizer": {"name": "adam", "lr": 0.001}},
            lr_from={"job_id": found["job_id"], "points": 5, "factor": 10},
            seeds=range(3),
            name="digits: adam around the range test",
        )
        client.wait(around, progress=False)
        print(client.divergence(around).to_string(index=False, float_format="%.4g"))
        client.plot_divergence(around, path=args.out / "divergence.png")

        paths = client.sweep(ROSENBROCK, grid={"optimizer": PATHS}, name="rosenbrock")
        client.wait(paths, progress=False)
        client.plot_trajectories(paths, path=args.out / "rosenbrock.png")
        print(f"wrote {args.out}/compare.png, range_test.png, divergence.png, rosenbrock.png")


if __name__ == "__main__":
    main()
