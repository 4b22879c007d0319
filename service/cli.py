"""The ``optimlab`` command: run the service (embedded or as separate API and worker processes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from service.cli_analysis import analysis_app
from service.cli_keys import keys_app
from service.cli_serve import api, db_app, up, worker
from service.cli_sweep import sweep

app = typer.Typer(help="optimlab: optimizer experiments as a service.", no_args_is_help=True, add_completion=False)
jobs_app = typer.Typer(help="List and inspect jobs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")
app.add_typer(analysis_app, name="analyze")
app.command()(up)  # service/cli_serve.py: the commands that run the service
app.command()(api)
app.command()(worker)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 240)  # piped output: no wrapping at 80 columns

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_REJECTED = 1  # the server refused the request (4xx): bad spec, unknown id, illegal transition
EXIT_USAGE = 2  # bad command line (typer's own)
EXIT_UNSUCCESSFUL = 3  # --wait: a job failed or was cancelled
EXIT_UNAVAILABLE = 4  # server, database or broker unreachable

UrlOption = Annotated[
    str | None, typer.Option("--url", envvar="OPTIMLAB_URL", help="Server (default http://127.0.0.1:8000).")
]
KeyOption = Annotated[str | None, typer.Option("--api-key", envvar="OPTIMLAB_API_KEY", help="Bearer key.")]

# --- client commands ---------------------------------------------------------------------------


@contextmanager
def _client(url: str | None, api_key: str | None) -> Iterator[Any]:
    """A client whose errors become a message and an exit code, not a traceback."""
    from service.client import Client, OptimlabError, Unavailable

    try:
        with Client(url, api_key=api_key) as client:
            yield client
    except Unavailable as exc:
        console.print(f"[red]unavailable[/]: {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except OptimlabError as exc:
        console.print(f"[red]{exc.error}[/] ({exc.status_code}): {_detail_lines(exc.detail)}")
        raise typer.Exit(EXIT_REJECTED) from None


def _detail_lines(detail: Any) -> str:
    if isinstance(detail, list):
        return "\n  " + "\n  ".join(
            f"{d.get('field') or 'body'}: {d.get('msg')}" for d in detail if isinstance(d, dict)
        )
    return str(detail)


def _load(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        console.print(f"[red]cannot read {path}[/]: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    if not isinstance(data, dict):
        console.print(f"[red]{path}[/]: expected a mapping at the top level")
        raise typer.Exit(EXIT_USAGE)
    return data


def _table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def _finished_ok(statuses: list[str]) -> int:
    return EXIT_UNSUCCESSFUL if any(s in ("failed", "cancelled") for s in statuses) else EXIT_OK


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="A job spec, YAML or JSON.")],
    tag: Annotated[list[str] | None, typer.Option(help="Tag (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish, with a progress bar.")] = False,
    cache: Annotated[bool, typer.Option(help="Reuse an identical earlier run of yours (--no-cache: train).")] = True,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Queue one job. Prints its id (stdout); with --wait, exits 3 if it failed or was cancelled."""
    with _client(url, api_key) as client:
        job = client.submit(_load(spec), tags=tag or [], name=name, cache=cache)
        served = f" from the result cache (job {job['cached_from']})" if job.get("cached_from") else ""
        console.print(f"job {job['id']} {job['status']} on queue {job['queue']}{served}")
        if wait:
            job = client.wait(job)
            console.print(f"job {job['id']} {job['status']}" + (f": {job['error']}" if job["error"] else ""))
        out.print(job["id"])
    raise typer.Exit(_finished_ok([job["status"]]) if wait else EXIT_OK)


app.command()(sweep)  # service/cli_sweep.py: grid, random and adaptive sweeps


@jobs_app.command("ls")
def jobs_ls(
    status: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    sweep_id: Annotated[int | None, typer.Option("--sweep", help="Jobs of this sweep.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="Optimizer name.")] = None,
    tag: Annotated[str | None, typer.Option(help="Tag.")] = None,
    sort: Annotated[str, typer.Option(help="created_at, best_loss, final_val_loss, ... ('-' for descending)")] = (
        "-created_at"
    ),
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """A table of jobs."""
    with _client(url, api_key) as client:
        jobs = client.jobs(status=status, sweep_id=sweep_id, optimizer=optimizer, tag=tag, sort=sort, limit=limit)
    rows = [
        {
            "id": j["id"],
            "status": j["status"],
            "optimizer": j["optimizer"],
            "lr": j["spec"]["optimizer"].get("lr"),
            "epochs": f"{j['summary']['epochs_done']}/{j['summary']['epochs_total']}",
            "best_loss": j["summary"]["best_loss"],
            "final_val_loss": j["summary"]["final_val_loss"],
            "sweep": j["sweep_id"],
            "cached_from": j.get("cached_from"),
            "tags": ",".join(j["tags"]),
        }
        for j in jobs
    ]
    columns = ["id", "status", "optimizer", "lr", "epochs", "best_loss", "final_val_loss", "sweep"]
    _table(rows, [*columns, "cached_from", "tags"])


@jobs_app.command("show")
def jobs_show(job_id: int, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """One job as JSON: status, spec, summary, error, attempt, worker, device, timings."""
    with _client(url, api_key) as client:
        job = client.job(job_id)
    out.print_json(data=job)


@app.command()
def metrics(
    job_id: int,
    csv_: Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of a table.")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """A job's per-epoch metrics."""
    with _client(url, api_key) as client:
        frame = client.metrics(job_id)
    if csv_:
        sys.stdout.write(frame.to_csv(index=False))
        return
    _table(frame.to_dict("records"), list(frame.columns), title=f"job {job_id}")


@app.command()
def leaderboard(
    sweep_id: int,
    metric: Annotated[str, typer.Option(help="train_loss, val_loss or val_accuracy.")] = "val_loss",
    mode: Annotated[str | None, typer.Option(help="min or max (default: min for losses).")] = None,
    which: Annotated[str, typer.Option(help="best (best epoch's value) or final.")] = "best",
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Configurations of a sweep ranked by the metric's mean over seeds, with 95% CIs."""
    with _client(url, api_key) as client:
        _print_leaderboard(client, sweep_id, metric, mode, which)


def _print_leaderboard(client: Any, sweep_id: int, metric: str, mode: str | None, which: str) -> None:
    frame = client.leaderboard(sweep_id, metric=metric, mode=mode, which=which)
    rows = frame.to_dict("records")
    for row in rows:
        if row.get("ci95_low") is not None and row.get("mean") is not None:
            row["95% CI"] = f"±{(row['ci95_high'] - row['ci95_low']) / 2:.3g}"
    columns = ["rank", "configuration", "n", "mean", "std", "95% CI", "min", "max", "diverged", "mean_wall_seconds"]
    if frame.get("pruned") is not None and frame["pruned"].any():
        columns.insert(columns.index("diverged") + 1, "pruned")
    _table(rows, columns, title=f"sweep {sweep_id}: {which} {metric}")


@app.command()
def cancel(
    target_id: Annotated[int, typer.Argument(metavar="ID")],
    sweep_: Annotated[bool, typer.Option("--sweep", help="ID is a sweep: cancel all its jobs.")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Cancel a job (queued: never runs; running: stops at its next epoch) or a whole sweep."""
    with _client(url, api_key) as client:
        if sweep_:
            state = client.cancel_sweep(target_id)
            console.print(f"sweep {target_id}: {state['counts']}")
        else:
            job = client.cancel(target_id)
            console.print(
                f"job {target_id}: {job['status']}"
                + (" (stops at its next epoch)" if job["status"] == "running" else "")
            )


if __name__ == "__main__":
    app()
