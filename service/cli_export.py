"""``optimlab export`` and ``optimlab plot``: a sweep's per-epoch results as a file, a table for
pandas, R or a spreadsheet (CSV, or Parquet with pyarrow), or a PNG of its curves.

The path written goes to stdout, what was written to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from service.cli_common import EXIT_REJECTED, EXIT_USAGE, KeyOption, UrlOption, connected, console, fail, result

if TYPE_CHECKING:
    import pandas as pd

SweepArgument = Annotated[int, typer.Argument(metavar="SWEEP", help="Sweep id.")]
FORMATS = ("csv", "parquet")
EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
"""The format each extension of --out implies."""
PARQUET_HINT = "pip install pyarrow (or pip install 'optimlab[parquet]')"


def export(
    sweep_id: SweepArgument,
    out: Annotated[Path, typer.Option("--out", help="The file to write ('-': CSV on stdout).")],
    format_: Annotated[
        str | None, typer.Option("--format", help="csv or parquet (needs pyarrow); default: --out's extension.")
    ] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Write a sweep's results as CSV or Parquet, one row per job and epoch.

    The format is --out's extension's (.parquet or .pq: Parquet; .csv or '-': CSV; any other: CSV
    unless --format says). Columns: job_id, configuration (its label) and each searched value as a
    column (optimizer.lr, ...), seed, status, epoch and every metric."""
    import importlib.util

    format_ = file_format(out, format_)
    if format_ == "parquet" and (str(out) == "-" or importlib.util.find_spec("pyarrow") is None):
        why = "is a file format: give --out FILE" if str(out) == "-" else f"needs pyarrow: {escape(PARQUET_HINT)}"
        raise fail(f"[red]--format parquet[/] {why}", EXIT_USAGE)  # before any request: nothing to lose
    from optim_engine.results import METRIC_NAMES

    with connected(url, api_key) as client:
        frame = results_frame(client.sweep_metrics(sweep_id, columns=METRIC_NAMES))
    if str(out) == "-":
        frame.to_csv(sys.stdout, index=False)
        return
    try:
        frame.to_csv(out, index=False) if format_ == "csv" else frame.to_parquet(out, index=False)
    except OSError as exc:
        raise fail(f"[red]cannot write {escape(str(out))}[/]: {escape(str(exc))}", EXIT_USAGE) from None
    console.print(
        f"{len(frame)} rows ({frame['job_id'].nunique()} jobs) of sweep {sweep_id} written to {escape(str(out))}"
        f" as {format_}"
    )
    result(out)


def file_format(out: Path, asked: str | None) -> str:
    """The format to write ``out`` in: ``asked`` (--format), else its extension's, else CSV. A
    --format that the extension contradicts (``--format csv --out x.parquet``) is a usage error."""
    if asked is not None and asked not in FORMATS:
        raise fail(f"[red]--format[/]: {escape(asked)} is not one of {', '.join(FORMATS)}", EXIT_USAGE)
    implied = "csv" if str(out) == "-" else EXTENSIONS.get(out.suffix.lower())
    if asked is not None and implied is not None and asked != implied and str(out) != "-":
        raise fail(
            f"[red]--format {escape(asked)}[/] but --out {escape(str(out))} names a {implied} file: "
            "change one (or drop --format)",
            EXIT_USAGE,
        )
    return asked or implied or "csv"


def results_frame(curves: pd.DataFrame) -> pd.DataFrame:
    """``client.sweep_metrics``' frame with each searched value as its own column, in the order
    job_id, configuration, the searched paths, seed, status, epoch, the metrics; no ``attrs``
    (Parquet would store them). A searched path no row has a value for (``scheduler`` where every
    run has one) is left out; a metric no epoch reported is a column of NaN, a float like the others."""
    configs = curves.attrs.get("configs") or {}  # label -> {path: value}
    paths = list(dict.fromkeys(path for flat in configs.values() for path in flat))
    frame = curves.copy()
    frame.attrs = {}
    for path in paths:
        values = frame["configuration"].map(lambda label, path=path: _cell(configs.get(label, {}).get(path)))
        frame[path] = values.convert_dtypes()  # a searched int stays an int where other rows lack it
    paths = [path for path in paths if frame[path].notna().any()]
    first = ["job_id", "configuration", *paths, "seed", "status", "epoch"]
    metrics = [c for c in curves.columns if c not in first]
    for name in metrics:
        if frame[name].isna().all():
            frame[name] = frame[name].astype(float)
    return frame[[*first, *metrics]]


def _cell(value: object) -> object:
    """A searched value as a table cell: a whole object (a schedule) as its JSON, so that every
    column holds scalars, which CSV and Parquet both need."""
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, sort_keys=True)
    return value


def plot(
    sweep_id: SweepArgument,
    out: Annotated[Path, typer.Option("--out", help="The PNG to write.")] = Path("curves.png"),
    metric: Annotated[str, typer.Option(help="train_loss, val_loss or val_accuracy.")] = "val_loss",
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Draw a sweep's curves as a PNG (needs matplotlib: the `plot` extra).

    The metric per epoch for each configuration (mean over seeds, band min..max), titled with the
    sweep's name. A sweep with no epoch of the metric yet writes nothing: exit 1."""
    with connected(url, api_key) as client:
        try:
            from service.plots_curves import NothingToPlot

            client.plot_curves(sweep_id, out, metric=metric)
        except NothingToPlot as exc:
            raise fail(f"[red]nothing to plot[/]: sweep {sweep_id} {escape(str(exc))}", EXIT_REJECTED) from None
        except ImportError:
            raise fail("[red]plot needs matplotlib[/]: pip install 'optimlab\\[plot]'", EXIT_USAGE) from None
        except OSError as exc:
            raise fail(f"[red]cannot write {escape(str(out))}[/]: {escape(str(exc))}", EXIT_USAGE) from None
    console.print(f"plot of sweep {sweep_id}'s {metric} written to {escape(str(out))}")
    result(out)
