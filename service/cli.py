"""The ``optimlab`` command: the client commands (jobs here; sweeps in ``cli_sweep`` and
``cli_sweeps``; files in ``cli_export``; ``analyze`` and ``keys``) and, loaded only when one of
them runs, the commands that run the service (``service/cli_serve.py`` through ``cli_lazy``).

Results go to stdout, progress and messages to stderr; the exit codes are ``cli_common``'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli_analysis import analysis_app
from service.cli_common import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    EXIT_UNSUCCESSFUL,
    EXIT_USAGE,
    SWEEP_KEYS,
    KeyOption,
    UrlOption,
    connected,
    console,
    fail,
    finished_ok,
    load,
    result,
)
from service.cli_export import export, plot
from service.cli_keys import keys_app
from service.cli_lazy import LazyServeGroup
from service.cli_sweep import sweep
from service.cli_sweeps import leaderboard, sweeps_app
from service.cli_tables import Column, print_table

__all__ = ["EXIT_INTERNAL", "EXIT_OK", "EXIT_REJECTED", "EXIT_UNAVAILABLE", "EXIT_UNSUCCESSFUL", "EXIT_USAGE", "app"]


class OptimlabGroup(LazyServeGroup):
    """The ``optimlab`` group: a bug in a command is one line on stderr and ``EXIT_INTERNAL``, not
    a traceback that exits 1 (which means the server refused); ``OPTIMLAB_TRACEBACK=1`` shows it."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # what the commands meant to say
            raise
        except Exception as exc:
            if os.environ.get("OPTIMLAB_TRACEBACK"):
                raise
            what = escape(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            raise fail(
                f"[red]internal error[/]: {what} (unexpected: OPTIMLAB_TRACEBACK=1 shows where; please report it)",
                EXIT_INTERNAL,
            ) from None


def _no_type_for_flags() -> None:
    """typer's help gives every option its type, a flag too (``--help <bool>``), as if it took a
    value: a flag shows none."""
    from typer.core import TyperOption

    typed = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else typed(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_type_for_flags()
app = typer.Typer(
    cls=OptimlabGroup,
    help="optimlab: optimizer experiments as a service.",
    no_args_is_help=True,
    add_completion=False,
)
jobs_app = typer.Typer(help="List and inspect jobs.", no_args_is_help=True)

JOB_COLUMNS: list[Column | str] = [
    "id",
    "status",
    "sweep",
    "configuration",
    "seed",
    "epochs",
    Column("best loss", "best_loss"),
    Column("final val", "final_val_loss"),
    Column("cached from", "cached_from", drop=2),
    Column("tags", drop=1),
]


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="A job spec, YAML or JSON.")],
    tag: Annotated[list[str] | None, typer.Option(help="Tag (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish (a progress bar on stderr).")] = False,
    cache: Annotated[bool, typer.Option(help="Reuse an identical earlier run of yours (--no-cache: train).")] = True,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Queue one job and print its id, alone on stdout.

    `id=$(optimlab submit job.yaml --wait)` captures the id only: the progress bar and messages
    go to stderr. With --wait, exit 3 if the job failed or was cancelled."""
    body = load(spec)
    if SWEEP_KEYS & body.keys():  # the server would list pydantic errors about each sweep key
        raise fail(
            f"[red]{escape(str(spec))}[/]: this is a sweep file: use `optimlab sweep {escape(str(spec))}`", EXIT_USAGE
        )
    with connected(url, api_key) as client:
        job = client.submit(body, tags=tag or [], name=name, cache=cache)
        served = f" from the result cache (job {job['cached_from']})" if job.get("cached_from") else ""
        console.print(f"job {job['id']} {job['status']} on queue {job['queue']}{served}")
        result(job["id"])
        if not wait:
            return
        job = client.wait(job)
    console.print(f"job {job['id']} {job['status']}" + (f": {escape(job['error'])}" if job["error"] else ""))
    raise typer.Exit(finished_ok([job["status"]]))


app.command()(sweep)  # service/cli_sweep.py: grid, random and adaptive sweeps


@app.command("wait")
def wait_for(
    target_id: Annotated[int, typer.Argument(metavar="ID", help="A job id (with --sweep: a sweep id).")],
    sweep_: Annotated[bool, typer.Option("--sweep", help="ID is a sweep: wait for all its jobs.")] = False,
    progress: Annotated[bool, typer.Option(help="A progress bar on stderr.")] = True,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Wait for a job (--sweep: a sweep) to finish; exit 3 if one failed.

    Long-polls, so it returns as soon as the last job ends. Prints the job's final status (a
    sweep's jobs per status) on stdout; exits 0 when it succeeded, 3 when a job failed or was
    cancelled (diverged and pruned runs are results: 0)."""
    with connected(url, api_key) as client:
        target: int | dict[str, Any] = client.get_sweep(target_id) if sweep_ else target_id
        done = client.wait(target, progress=progress)
    if sweep_:
        statuses = [status for status, n in done["counts"].items() if n]
        result(", ".join(f"{done['counts'][s]} {s}" for s in statuses) or "no jobs")
        raise typer.Exit(finished_ok(statuses))
    if done.get("error"):
        console.print(f"job {target_id} {done['status']}: {escape(done['error'])}")
    result(done["status"])
    raise typer.Exit(finished_ok([done["status"]]))


@jobs_app.command("ls")
def jobs_ls(
    status: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    sweep_id: Annotated[int | None, typer.Option("--sweep", help="Jobs of this sweep.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="Optimizer name.")] = None,
    tag: Annotated[str | None, typer.Option(help="Tag.")] = None,
    sort: Annotated[str, typer.Option(help="created_at, best_loss, final_val_loss, ... ('-' for descending)")] = (
        "-created_at"
    ),
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """A table of jobs: configuration, seed, epochs and losses.

    The configuration is a sweep job's searched values, else the optimizer, its learning rate and
    schedule. Says so on stderr when --limit cut the list."""
    with connected(url, api_key) as client:
        # One more than shown: whether the list was cut, without counting every job.
        jobs = client.jobs(status=status, sweep_id=sweep_id, optimizer=optimizer, tag=tag, sort=sort, limit=limit + 1)
    from service.client_display import short_labels

    shown = jobs[:limit]
    labels = short_labels([job_config(job) for job in shown])
    print_table([job_row(job, text) for job, text in zip(shown, labels, strict=True)], JOB_COLUMNS)
    if len(jobs) > limit:
        console.print(f"the first {limit} jobs, and there are more (--limit {limit * 4} shows more)")


def job_config(job: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a job's configuration column shows: a sweep job's searched values; a lone job's
    optimizer, learning rate and schedule (a chain's names joined: ``linear_lr→cosine_annealing_lr``)."""
    if job.get("config"):
        return dict(job["config"])
    spec = job["spec"]
    optimizer = spec.get("optimizer") or {}
    config: dict[str, Any] = {"optimizer": {"name": optimizer.get("name"), "lr": optimizer.get("lr")}}
    scheduler = spec.get("scheduler")
    steps = scheduler if isinstance(scheduler, list) else [scheduler] if scheduler else []
    names = [str(step.get("name")) if isinstance(step, Mapping) else str(step) for step in steps]
    if names:
        config["scheduler"] = {"name": "→".join(names)}
    return config


def job_row(job: Mapping[str, Any], configuration: str) -> dict[str, Any]:
    """A job as a table row, with its configuration's label."""
    spec, summary = job["spec"], job["summary"]
    return {
        "id": job["id"],
        "status": job["status"],
        "sweep": job["sweep_id"],
        "configuration": configuration,
        "seed": spec.get("seed"),
        "epochs": f"{summary['epochs_done']}/{summary['epochs_total']}",
        "best_loss": summary.get("best_loss"),
        "final_val_loss": summary.get("final_val_loss"),
        "cached_from": job.get("cached_from"),
        "tags": ",".join(job["tags"]),
    }


@jobs_app.command("show")
def jobs_show(job_id: int, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """One job as JSON: status, spec, summary, error, attempt, worker, device, timings."""
    import json

    with connected(url, api_key) as client:
        job = client.job(job_id)
    result(json.dumps(job, indent=2))


METRIC_HEADERS = {
    "train_loss": Column("train loss", "train_loss"),
    "val_loss": Column("val loss", "val_loss"),
    "val_accuracy": Column("val acc", "val_accuracy"),
    "grad_norm": Column("grad norm", "grad_norm", drop=1),
    "epoch_seconds": Column("s", "epoch_seconds", drop=2),
    "samples_per_second": Column("samples/s", "samples_per_second", drop=3),
}
"""Short headers for ``metrics``' table (a metric not here shows under its own name)."""


@app.command()
def metrics(
    job_id: int,
    csv_: Annotated[bool, typer.Option("--csv", help="CSV on stdout (every digit) instead of a table.")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """A job's per-epoch metrics (a metric no epoch reported is left out of the table)."""
    with connected(url, api_key) as client:
        rows = client.get(f"/v1/jobs/{job_id}/metrics")["rows"]
    if csv_:
        _write_csv(rows)
        return
    names = [name for name in (rows[0] if rows else {"epoch": None}) if any(r.get(name) is not None for r in rows)]
    columns = [METRIC_HEADERS.get(name, Column(name)) for name in names]
    print_table(rows, columns, title=f"job {job_id}")


def _write_csv(rows: list[dict[str, Any]]) -> None:
    import csv

    if rows:
        names = list(rows[0])
    else:  # the header still names every column
        from optim_engine.results import METRIC_NAMES

        names = ["epoch", *METRIC_NAMES]
    writer = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


app.add_typer(jobs_app, name="jobs")
app.add_typer(sweeps_app, name="sweeps")
app.command()(leaderboard)  # service/cli_sweeps.py
app.command()(export)  # service/cli_export.py
app.command()(plot)


@app.command()
def cancel(
    target_id: Annotated[int, typer.Argument(metavar="ID")],
    sweep_: Annotated[bool, typer.Option("--sweep", help="ID is a sweep: cancel all its jobs.")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Cancel a job (queued: never runs; running: stops at its next epoch) or a whole sweep."""
    with connected(url, api_key) as client:
        if sweep_:
            counts = client.cancel_sweep(target_id)["counts"]
            console.print(f"sweep {target_id}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        else:
            job = client.cancel(target_id)
            console.print(
                f"job {target_id}: {job['status']}"
                + (" (stops at its next epoch)" if job["status"] == "running" else "")
            )


app.add_typer(analysis_app, name="analyze")
app.add_typer(keys_app, name="keys")

if __name__ == "__main__":
    app()
