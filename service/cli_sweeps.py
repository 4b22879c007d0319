"""``optimlab sweeps ls``, ``sweeps show`` and ``leaderboard``: what a sweep is and how its
configurations rank, in tables that fit the terminal (short labels, one number format, the
configuration hash only with --hash).

They read the server's JSON (``client.get``) rather than the client's DataFrames: pandas alone
takes longer to import than the whole call may.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from service.cli_common import EXIT_REJECTED, KeyOption, UrlOption, connected, console
from service.cli_tables import Column, print_table

if TYPE_CHECKING:
    from service.client import Client

sweeps_app = typer.Typer(help="List and inspect sweeps.", no_args_is_help=True)
SweepArgument = Annotated[int, typer.Argument(metavar="SWEEP", help="Sweep id.")]
STATUS_WORDS = {"succeeded": "ok", "diverged": "div", "cancelled": "cancel"}
"""Statuses as a sweep's counts show them: short enough for a table cell."""


def counts_text(counts: Mapping[str, int]) -> str:
    """A sweep's jobs per status in a few characters: ``20 ok 3 div 1 running`` (none: ``-``)."""
    return " ".join(f"{n} {STATUS_WORDS.get(status, status)}" for status, n in counts.items() if n) or "-"


def when(stamp: str | None) -> str:
    """An ISO timestamp from the server as local time to the minute."""
    if not stamp:
        return "-"
    return dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")


@sweeps_app.command("ls")
def sweeps_ls(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Your sweeps, newest first: name, strategy, jobs per status, created.

    The best configuration of each is on `optimlab sweeps show`."""
    items: list[dict[str, Any]] = []
    with connected(url, api_key) as client:
        cursor = None
        while len(items) <= limit:  # one more than shown: whether the list was cut
            page = client.get(
                "/v1/sweeps", limit=min(limit + 1 - len(items), 200), **({"cursor": cursor} if cursor else {})
            )
            items += page["items"]
            if (cursor := page["next_cursor"]) is None:
                break
    rows = [
        {
            "id": s["id"],
            "name": s["name"] or "-",
            "strategy": s["strategy"],
            "jobs": s["n_jobs"],
            "status": counts_text(s["counts"]),
            "state": "done" if s["done"] else "running",
            "created": when(s["created_at"]),
        }
        for s in items[:limit]
    ]
    print_table(rows, ["id", "name", "strategy", "jobs", "status", "state", Column("created", drop=1)])
    if len(items) > limit:
        console.print(f"the newest {limit} sweeps, and there are more (--limit {limit * 4} shows more)")


@sweeps_app.command("show")
def sweeps_show(sweep_id: SweepArgument, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """One sweep: what it searches, its jobs per status, configurations and the best so far.

    The best is by val_loss, else train_loss; an adaptive sweep's best trial is shown too."""
    with connected(url, api_key) as client:
        sweep = client.get_sweep(sweep_id)
        board = _board(client, sweep_id, "val_loss", None, "best")
    rows = [("name", sweep["name"] or "-"), ("strategy", f"{sweep['strategy']}, execution {sweep['execution']}")]
    rows += [("created", when(sweep["created_at"])), ("state", "done" if sweep["done"] else "running")]
    cached = f" ({sweep['cached']} from the result cache)" if sweep.get("cached") else ""
    rows.append(("jobs", f"{sweep['n_jobs']}: {counts_text(sweep['counts'])}{cached}"))
    rows += [(f"{key} {path}" if path else key, text) for key, path, text in _search_rows(sweep["search"])]
    if sweep.get("budget") is not None:
        rows.append(("trials", f"{sweep['trials']} of {sweep['budget']}, {sweep['parallelism']} at a time"))
        objective = sweep.get("objective") or {}
        rows.append(("objective", " ".join(str(objective.get(k, "")) for k in ("direction", "which", "metric"))))
    rows.append(("configurations", str(len(board["rows"]))))
    if (best := sweep.get("best")) is not None:
        rows.append(("best", _best_text(best)))
    if (trial := sweep.get("best_trial")) is not None:
        rows.append(("best trial", f"{trial['number']}: {_compact(trial['value'])} with {_compact(trial['params'])}"))
    print_table([{"": k, "value": v} for k, v in rows], ["", "value"], title=f"sweep {sweep_id}", header=False)


def _search_rows(search: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """What a sweep searches, a row per grid or space path: (key, path, values)."""
    rows = []
    for key, value in search.items():
        if isinstance(value, Mapping) and key in ("grid", "space"):
            rows += [(key, path, _compact(values)) for path, values in value.items()]
        elif value is not None:
            rows.append((key, "", _compact(value)))
    return rows


def _compact(value: Any) -> str:
    """A value of a sweep's search in few characters: numbers in the table format, a named
    object (a schedule) as its short label, lists comma-separated."""
    from service.client_display import flatten, number, short_label

    if value is None:
        return "none"
    if isinstance(value, Mapping):
        if "name" in value:
            return short_label(flatten({"x": value}))
        return "; ".join(f"{k}: {_compact(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_compact(v) for v in value)
    return number(value)


def _best_text(best: Mapping[str, Any]) -> str:
    from service.client_display import flatten, number, short_label

    spread = ""
    if best.get("ci95_low") is not None and best.get("ci95_high") is not None:
        spread = f" ±{number((best['ci95_high'] - best['ci95_low']) / 2)}"
    return f"{short_label(flatten(best['config']))}: mean {number(best['mean'])}{spread} (n={best['n']})"


def _board(client: Client, sweep_id: int, metric: str, mode: str | None, which: str) -> dict[str, Any]:
    params = {"metric": metric, "which": which} | ({"mode": mode} if mode else {})
    return dict(client.get(f"/v1/sweeps/{sweep_id}/leaderboard", **params))


def leaderboard(
    sweep_id: SweepArgument,
    metric: Annotated[str, typer.Option(help="train_loss, val_loss or val_accuracy.")] = "val_loss",
    mode: Annotated[str | None, typer.Option(help="min or max (default: min for losses).")] = None,
    which: Annotated[str, typer.Option(help="best (best epoch's value) or final.")] = "best",
    show_hash: Annotated[
        bool, typer.Option("--hash", help="Show each configuration's hash (for analyze --a).")
    ] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Rank a sweep's configurations by the metric's mean over seeds.

    Each with n, the 95% CI's half-width (±95%), std, diverged runs and, when they fit, min, max
    and seconds per run."""
    with connected(url, api_key) as client:
        if not print_leaderboard(client, sweep_id, metric, mode, which, show_hash=show_hash):
            raise typer.Exit(EXIT_REJECTED)


def print_leaderboard(
    client: Client, sweep_id: int, metric: str, mode: str | None, which: str, *, show_hash: bool = False
) -> bool:
    """The leaderboard as a table: rank, short label, n, mean, ±95%, std, then what fits (min,
    max, seconds per run); pruned, failed and pending counts only where a configuration has any.
    False, and no table but a line on stderr, when no job has a value of the metric."""
    from service.client_display import short_labels

    board = _board(client, sweep_id, metric, mode, which)
    if not any(row.get("n") for row in board["rows"]):
        hint = " (a regression dataset?)" if "accuracy" in metric else " (none finished yet?)"
        console.print(f"no job of sweep {sweep_id} reports {escape(metric)}{hint}")
        return False
    rows = []
    labels = short_labels([row["config"] for row in board["rows"]])
    for row, text in zip(board["rows"], labels, strict=True):
        low, high = row.get("ci95_low"), row.get("ci95_high")
        half = None if low is None or high is None else (high - low) / 2
        rows.append(row | {"configuration": text, "ci": half, "hash": (row.get("config_hash") or "-")[:10]})
    # With the hash shown, std (the ±95% says the spread) goes before the labels are cut.
    columns: list[Column | str] = ["rank", "configuration", "n", "mean", Column("±95%", "ci")]
    columns.append(Column("std", drop=1 if show_hash else 0))
    columns += [Column("min", drop=3), Column("max", drop=3), "diverged"]
    columns += [c for c in ("pruned", "failed", "pending") if any(r.get(c) for r in rows)]
    columns.append(Column("s/run", "mean_wall_seconds", drop=2))
    if show_hash:
        columns.insert(2, "hash")
    print_table(rows, columns, title=f"sweep {sweep_id}: {which} {board['metric']} ({board['mode']} is better)")
    return True
