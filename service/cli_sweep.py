"""``optimlab sweep FILE``: create a sweep from a YAML or JSON file (a grid or random search, or an
adaptive one: strategy, space, budget, parallelism, objective, sampler_seed, pruner) and, with --wait,
print its leaderboard: the id first on stdout, then the table; progress on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli_common import EXIT_USAGE, KeyOption, UrlOption, connected, console, fail, finished_ok, load, result

KEYS = frozenset({"name", "base", "grid", "random", "seeds", "tags", "execution", "lr_from", "cache"})
SEARCH_KEYS = frozenset({"strategy", "space", "budget", "parallelism", "objective", "sampler_seed", "pruner"})
"""What a sweep file may hold: ``client.sweep``'s keyword arguments (and ``base``)."""
JOB_KEYS = frozenset({"model", "dataset", "loss", "optimizer", "scheduler", "epochs", "batch_size"})
"""Keys of a job spec that a sweep file holds only under ``base``: ``sweep`` names the right command."""


def sweep(
    file: Annotated[
        Path,
        typer.Argument(
            help=(
                "A sweep: name, base, grid / random / seeds, lr_from, execution, cache; or an adaptive search: "
                "strategy, space, budget, parallelism, objective, sampler_seed, pruner (YAML or JSON)."
            )
        ),
    ],
    wait: Annotated[bool, typer.Option(help="Wait (a progress bar on stderr), then print the leaderboard.")] = False,
    metric: Annotated[
        str | None,
        typer.Option(help="Leaderboard metric with --wait (default: an adaptive sweep's objective, else val_loss)."),
    ] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Create a sweep and print its id (stdout); --wait: then its leaderboard.

    With --wait, the progress bar goes to stderr, the leaderboard follows the id on stdout, and
    the exit code is 3 if a job failed or was cancelled."""
    from service.cli_sweeps import print_leaderboard

    body = _checked(load(file), file)
    with connected(url, api_key) as client:
        search = {key: body[key] for key in SEARCH_KEYS if key in body}
        created = client.sweep(
            body["base"],
            grid=body.get("grid"),
            random=body.get("random"),
            seeds=body.get("seeds"),
            name=body.get("name"),
            tags=body.get("tags") or [],
            execution=body.get("execution", "auto"),
            lr_from=body.get("lr_from"),
            cache=body.get("cache", True),
            **search,
        )
        console.print(_created(created))
        result(created["id"])
        if not wait:
            return
        done = client.wait(created)
        objective = done.get("objective") or {}  # an adaptive sweep ranks by what it optimized
        ranked_by = metric or objective.get("metric", "val_loss")
        print_leaderboard(client, created["id"], ranked_by, None, objective.get("which", "best"))
        if (best := done.get("best_trial")) is not None:
            console.print(f"best trial {best['number']}: {best['value']} with {best['params']}", markup=False)
    raise typer.Exit(finished_ok([s for s, n in done["counts"].items() if n]))


def _checked(body: dict[str, Any], file: Path) -> dict[str, Any]:
    """The file's body, or the usage exit code naming what is wrong with it (a job spec: which
    command takes it; an unknown key: the known one it is closest to)."""
    import difflib

    unknown = sorted(set(body) - KEYS - SEARCH_KEYS)
    problem = None
    if "base" not in body and JOB_KEYS & body.keys():
        problem = f"this is a job spec: use `optimlab submit {file}`"
    elif not isinstance(body.get("cache", True), bool):
        problem = "cache must be true or false"
    elif unknown:
        known = sorted(KEYS | SEARCH_KEYS)
        guesses = [(key, difflib.get_close_matches(key, known, n=1)) for key in unknown]
        named = ", ".join(f"{key!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "") for key, guess in guesses)
        problem = ("" if "base" in body else "needs 'base'; ") + f"unknown key{'s' * (len(unknown) > 1)} {named}"
    elif "base" not in body:
        problem = "needs 'base'"
    if problem is not None:
        raise fail(f"[red]{escape(str(file))}[/]: {escape(problem)}", EXIT_USAGE)
    return body


def _created(sweep: dict[str, Any]) -> str:
    """The line that says what was created: jobs (and how many the result cache served); for an
    adaptive search, its strategy and the trials created of its budget."""
    served = f", {sweep['cached']} from the result cache" if sweep.get("cached") else ""
    line = f"sweep {sweep['id']}: {sweep['n_jobs']} jobs{served}"
    if sweep.get("budget") is not None:
        line += f" ({sweep['strategy']}: {sweep['trials']} of {sweep['budget']} trials so far)"
    return line
