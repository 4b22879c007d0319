"""The analysis answers of the API as DataFrames, for ``service.client``.

Each frame keeps the whole answer in ``frame.attrs`` (the statistics, labels and excluded runs
that do not fit a table), so ``service.plots`` can draw from a frame as well as from the JSON.
pandas is imported on first use, as everywhere in the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

PAIR_COLUMNS = ["seed", "a", "b", "diff"]
DIVERGENCE_COLUMNS = [
    "group",
    "optimizer",
    "lr",
    "runs",
    "diverged",
    "fraction",
    "mean",
    "std",
    "stable_max_lr",
    "diverged_min_lr",
]
BUDGET_COLUMNS = ["group", "n_trials", "k", "expected", "lo", "hi"]


def _framed(records: list[dict[str, Any]], columns: list[str], body: Mapping[str, Any]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(records, columns=columns)
    frame.attrs.update(body)
    return frame


def pairs_frame(body: Mapping[str, Any]) -> pd.DataFrame:
    """One row per paired seed: seed, a, b, diff (a - b); the statistics in ``attrs``."""
    rows = zip(body["seeds"], body["a_values"], body["b_values"], body["diffs"], strict=True)
    return _framed([dict(zip(PAIR_COLUMNS, row, strict=True)) for row in rows], PAIR_COLUMNS, body)


def matrix_labels(body: Mapping[str, Any]) -> dict[str, str]:
    """config_hash → the configuration's label, made unique with a hash prefix where two agree."""
    configs = body["configs"]
    seen = [c["label"] for c in configs]
    return {
        c["config_hash"]: c["label"] if seen.count(c["label"]) == 1 else f"{c['label']} ({c['config_hash'][:8]})"
        for c in configs
    }


def matrix_frame(body: Mapping[str, Any], value: str = "mean_diff") -> pd.DataFrame:
    """Rows: configuration A (label), columns: configuration B, values: ``value`` of A - B
    (NaN on the diagonal); ``attrs`` holds the configurations and every cell."""
    import pandas as pd

    labels = matrix_labels(body)
    order = list(labels.values())
    frame = pd.DataFrame(index=pd.Index(order, name="a"), columns=pd.Index(order, name="b"), dtype=float)
    for cell in body["cells"]:
        number = cell.get(value)
        frame.loc[labels[cell["a"]], labels[cell["b"]]] = float("nan") if number is None else number
    frame.attrs.update(body)
    return frame


def divergence_frame(body: Mapping[str, Any]) -> pd.DataFrame:
    """One row per optimizer configuration (group) and learning rate, with the group's
    stable_max_lr and diverged_min_lr repeated on each of its rows."""
    records = [
        {
            "group": group["group"],
            "optimizer": group["optimizer"],
            "stable_max_lr": group["stable_max_lr"],
            "diverged_min_lr": group["diverged_min_lr"],
            **{key: row[key] for key in ("lr", "runs", "diverged", "fraction", "mean", "std")},
        }
        for group in body["groups"]
        for row in group["lrs"]
    ]
    return _framed(records, DIVERGENCE_COLUMNS, body)


def budget_frame(body: Mapping[str, Any]) -> pd.DataFrame:
    """One row per group and k: the expected best after k trials and its band (lo, hi)."""
    records = [
        {"group": g["group"], "n_trials": g["n_trials"], "k": k, "expected": e, "lo": lo, "hi": hi}
        for g in body["groups"]
        for k, e, lo, hi in zip(g["k"], g["expected"], g["lo"], g["hi"], strict=True)
    ]
    return _framed(records, BUDGET_COLUMNS, body)


def verdict_words(body: Mapping[str, Any]) -> str:
    """One comparison's verdict as words naming the winner: ``adam lr=0.001 is better (lower
    val_loss)``, or that the difference could be noise."""
    if body["verdict"] in ("a", "b"):
        better = "lower" if body["mode"] == "min" else "higher"
        return f"{body[body['verdict']]['label']} is better ({better} {body['metric']})"
    return "inconclusive: the difference could be noise"
