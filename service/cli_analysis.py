"""``optimlab analyze``: paired comparisons, divergence maps, tuning budgets, performance
profiles, LR range tests and 2-D trajectories as tables, or ``--json`` for the server's answer,
and ``--plot`` for a PNG.

Numbers in the CLI's one format (``client_display.number``), tables that fit the terminal
(``cli_tables``), the client and its errors as every command has them (``cli_common``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from service import cli_common  # its ``out``, looked up when printing: a test may replace it
from service.cli_common import EXIT_REJECTED, EXIT_USAGE, KeyOption, UrlOption, connected, console, fail, out
from service.cli_tables import print_table
from service.client_display import number

if TYPE_CHECKING:
    import pandas as pd

analysis_app = typer.Typer(
    help="Is A better than B, and how sure are we: paired comparisons, divergence, tuning budgets, profiles.",
    no_args_is_help=True,
)

SweepArgument = Annotated[int, typer.Argument(metavar="SWEEP", help="Sweep id.")]
MetricOption = Annotated[str, typer.Option(help="train_loss, val_loss or val_accuracy.")]
WhichOption = Annotated[str, typer.Option(help="best (the best epoch's value) or final.")]
PlotOption = Annotated[Path | None, typer.Option("--plot", help="Also draw a PNG here (the `plot` extra).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON instead of tables.")]


def _attrs(frame: pd.DataFrame) -> dict[str, Any]:
    """The server's whole answer, which the client's frames keep in ``attrs``."""
    return {str(key): value for key, value in frame.attrs.items()}


def _interval(bounds: Sequence[float] | None) -> str:
    return "-" if bounds is None else f"[{number(bounds[0])}, {number(bounds[1])}]"


def _show(body: Mapping[str, Any], as_json: bool, tables: Callable[[Mapping[str, Any]], None]) -> None:
    if as_json:
        out.print_json(data=dict(body))
    else:
        tables(body)


def _draw(draw: Callable[[Any, Path], Any], body: Mapping[str, Any], path: Path | None) -> None:
    """Draw the plot to ``path``; a missing matplotlib or an unwritable path is a message and
    the usage exit code, not a traceback."""
    if path is None:
        return
    try:
        draw(body, path)
    except ImportError:
        raise fail("[red]--plot needs matplotlib[/]: pip install 'optimlab\\[plot]'", EXIT_USAGE) from None
    except OSError as exc:
        raise fail(f"[red]cannot write {escape(str(path))}[/]: {escape(str(exc))}", EXIT_USAGE) from None
    console.print(f"plot written to {escape(str(path))}")


# --- compare -----------------------------------------------------------------------------------


@analysis_app.command("compare")
def compare(
    sweep_id: SweepArgument,
    a: Annotated[str | None, typer.Option("--a", help="Configuration A: config_hash or a unique prefix.")] = None,
    b: Annotated[str | None, typer.Option("--b", help="Configuration B: config_hash or a unique prefix.")] = None,
    b_sweep: Annotated[int | None, typer.Option("--b-sweep", help="B's sweep (same problem), if not SWEEP.")] = None,
    metric: MetricOption = "val_loss",
    which: WhichOption = "best",
    plot: PlotOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """A against B seed by seed: mean difference with t and BCa CIs, Wilcoxon p, P(A beats B),
    wins and a verdict. Without --a, --b and --b-sweep: every pair of SWEEP's configurations."""
    from service import plots

    matrix = a is None and b is None and b_sweep is None
    with connected(url, api_key) as client:
        if matrix:
            body = _attrs(client.compare_matrix(sweep_id, metric=metric, which=which))
        else:
            body = _attrs(client.compare(sweep_id, a, b, b_sweep=b_sweep, metric=metric, which=which))
    _show(body, as_json, _print_matrix if matrix else _print_pair)
    _draw(plots.plot_compare_matrix if matrix else plots.plot_compare, body, plot)


def _arm(arm: Mapping[str, Any]) -> str:
    return f"{arm['label']} ({(arm.get('config_hash') or '')[:10]}, sweep {arm['sweep_id']})"


def _seeds(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in seeds) or "none"


def _print_pair(body: Mapping[str, Any]) -> None:
    from service.client_frames import verdict_words

    p = body.get("wilcoxon_p")
    excluded = body.get("excluded") or []
    why = "; ".join(f"{e['side'].upper()} seed {e['seed']} {e['reason']}" for e in excluded[:6])
    rows = [
        ("A", _arm(body["a"])),
        ("B", _arm(body["b"])),
        ("metric", f"{body['which']} {body['metric']} ({body['mode']} is better)"),
        ("pairs (n)", str(body["n"])),
        ("mean diff (A - B)", number(body.get("mean_diff"))),
        ("std of diffs", number(body.get("std_diff"))),
        ("95% t CI", _interval(body.get("t_ci"))),
        ("95% BCa CI", _interval(body.get("bca_ci"))),
        ("Wilcoxon p", "-" if p is None else f"{number(p)} ({body.get('wilcoxon_method')})"),
        ("P(A beats B)", number(body.get("p_a_better"))),
        ("wins", f"A {body['a_wins']}, B {body['b_wins']}, ties {body['ties']}"),
        ("unpaired seeds", f"A: {_seeds(body['unpaired_a'])}; B: {_seeds(body['unpaired_b'])}"),
        ("excluded runs", f"{len(excluded)}" + (f" ({why}{'; ...' if len(excluded) > 6 else ''})" if why else "")),
        ("verdict", verdict_words(body)),
    ]
    print_table([{"": k, "value": v} for k, v in rows], ["", "value"], title="paired by seed")


def _print_matrix(body: Mapping[str, Any]) -> None:
    """The configurations as the leaderboard labels them, each with a key (``#1``), then the
    matrix with those keys as its row and column headers: whole labels would not fit."""
    from service.client_display import short_labels

    configs = body["configs"]
    labels = short_labels([c.get("config") or {} for c in configs])
    keys = {c["config_hash"]: f"#{i}" for i, c in enumerate(configs, 1)}
    legend = [
        {
            "#": keys[c["config_hash"]],
            "configuration": text if c.get("config") else c["label"],
            "config_hash": c["config_hash"][:10],
            "n": c["n"],
            "mean": c["mean"],
        }
        for c, text in zip(configs, labels, strict=True)
    ]
    print_table(legend, ["#", "configuration", "config_hash", "n", "mean"], title=f"{body['which']} {body['metric']}")
    cells = {(c["a"], c["b"]): c for c in body["cells"]}
    rows = []
    for a, a_key in keys.items():
        row = {"A \\ B": a_key}
        for b, b_key in keys.items():
            cell = cells.get((a, b))
            mark = "" if cell is None or cell["verdict"] == "inconclusive" else " *"
            row[b_key] = "" if cell is None else f"{number(cell['mean_diff'])}{mark}"
        rows.append(row)
    print_table(rows, ["A \\ B", *keys.values()], title=f"mean A - B ({body['mode']} is better)")
    note = "*: a decisive verdict (Holm-adjusted over all pairs); one pair in detail: --a HASH --b HASH"
    cli_common.out.print(note, markup=False, highlight=False, soft_wrap=True)  # a line: no table to fit


# --- divergence, budget, profiles --------------------------------------------------------------


@analysis_app.command("divergence")
def divergence(
    sweep_id: SweepArgument,
    metric: MetricOption = "val_loss",
    which: WhichOption = "final",
    plot: PlotOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Per optimizer configuration: the largest lr with no run diverged, the smallest with all
    diverged, and the fraction diverged and the metric at each lr."""
    from service import plots

    with connected(url, api_key) as client:
        body = _attrs(client.divergence(sweep_id, metric=metric, which=which))
    _show(body, as_json, _print_divergence)
    _draw(plots.plot_divergence, body, plot)


def _print_divergence(body: Mapping[str, Any]) -> None:
    groups = body["groups"]
    summary = [
        {
            "group": g["group"],
            "stable_max_lr": number(g["stable_max_lr"]),
            "diverged_min_lr": number(g["diverged_min_lr"]),
            "lrs": len(g["lrs"]),
        }
        for g in groups
    ]
    print_table(summary, ["group", "stable_max_lr", "diverged_min_lr", "lrs"], title="divergence")
    rows = [
        {"group": g["group"], **{k: r[k] for k in ("lr", "runs", "diverged", "fraction", "mean", "std")}}
        for g in groups
        for r in g["lrs"]
    ]
    columns = ["group", "lr", "runs", "diverged", "fraction", "mean", "std"]
    print_table(rows, columns, title=f"{body['which']} {body['metric']} by lr (mean, std over stable runs)")


@analysis_app.command("budget")
def budget(
    sweep_id: SweepArgument,
    metric: MetricOption = "val_loss",
    which: WhichOption = "best",
    plot: PlotOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Expected best value after k random-search trials, per optimizer, with a 95% bootstrap band."""
    from service import plots

    with connected(url, api_key) as client:
        body = _attrs(client.budget(sweep_id, metric=metric, which=which))
    _show(body, as_json, _print_budget)
    _draw(plots.plot_budget, body, plot)


def budget_ks(n: int) -> list[int]:
    """The k a table shows: 1, 2, 4, 8, ... and N."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i < n]
    return [*ks, n] if n else []


def _print_budget(body: Mapping[str, Any]) -> None:
    rows = [
        {
            "group": g["group"],
            "n_trials": g["n_trials"],
            "k": g["k"][i],
            "expected best": number(g["expected"][i]),
            "95% band": _interval([g["lo"][i], g["hi"][i]]),
        }
        for g in body["groups"]
        for i in (k - 1 for k in budget_ks(len(g["k"])))
    ]
    title = f"expected best of k trials: {body['which']} {body['metric']} ({body['mode']} is better)"
    print_table(rows, ["group", "n_trials", "k", "expected best", "95% band"], title=title)


@analysis_app.command("profiles")
def profiles(
    sweep_ids: Annotated[list[int], typer.Argument(metavar="SWEEP...", help="The problems: one sweep each.")],
    metric: MetricOption = "val_loss",
    tolerance: Annotated[float | None, typer.Option(help="Target: within this fraction of the best.")] = None,
    plot: PlotOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Time to target on each problem and performance profiles: the share of problems each
    optimizer solves within tau times the fastest, in epochs and in seconds."""
    from service import plots

    with connected(url, api_key) as client:
        body = client.profiles(sweep_ids, metric=metric, tolerance=tolerance)
    _show(body, as_json, _print_profiles)
    _draw(plots.plot_profiles, body, plot)


def rho_at(taus: Sequence[float], rho: Sequence[float], tau: float) -> float:
    """rho(tau) of a step profile: its value at the largest listed tau not above ``tau``."""
    below = [value for t, value in zip(taus, rho, strict=True) if t <= tau]
    return below[-1] if below else 0.0


def _print_profiles(body: Mapping[str, Any]) -> None:
    optimizers = sorted({o for p in body["problems"] for o in p["times"]})
    rows = []
    for problem in body["problems"]:
        row = {"problem": f"{problem['name']} ({problem['sweep_id']})", "target": number(problem["target"])}
        for optimizer in optimizers:
            time = problem["times"].get(optimizer)
            row[optimizer] = "never" if not time or time["epochs"] is None else _reached(time)
        rows.append(row)
    print_table(rows, ["problem", "target", *optimizers], title=f"time to target ({body['metric']})")
    for measure in ("epochs", "seconds"):
        profile = body[measure]
        taus, last = profile["taus"], profile["taus"][-1] if profile["taus"] else 1.0
        summary = [
            {
                "optimizer": optimizer,
                "fastest (rho(1))": number(rho_at(taus, rho, 1.0)),
                "within 2x (rho(2))": number(rho_at(taus, rho, 2.0)),
                f"solved (rho({number(last)}))": number(rho_at(taus, rho, last)),
            }
            for optimizer, rho in sorted(profile["profiles"].items())
        ]
        columns = ["optimizer", "fastest (rho(1))", "within 2x (rho(2))", f"solved (rho({number(last)}))"]
        unsolved = profile.get("unsolved") or []
        print_table(summary, columns, title=f"profile in {measure}" + (f"; unsolved: {unsolved}" if unsolved else ""))


def _reached(time: Mapping[str, Any]) -> str:
    return f"{number(time['epochs'])} ep, {number(time['seconds'])} s"


# --- range tests and trajectories --------------------------------------------------------------


@analysis_app.command("range-test")
def range_test(
    job_id: Annotated[int, typer.Argument(metavar="JOB", help="An LR range test job.")],
    plot: PlotOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """An LR range test's suggested learning rates (steepest, valley, minimum/10)."""
    from service import plots

    with connected(url, api_key) as client:
        result = client.result(job_id)
        status = None if result else client.job(job_id)["status"]
    if result is None or result.get("kind") != "lr_range_test":
        why = f"it is {status}" if result is None else "it is not an LR range test"
        raise fail(f"[red]job {job_id} has no range test result[/]: {why}", EXIT_REJECTED)
    _show(result, as_json, lambda body: _print_range_test(job_id, body))
    _draw(plots.plot_range_test, result, plot)


def _print_range_test(job_id: int, body: Mapping[str, Any]) -> None:
    lrs = body["lr"]
    span = f"{len(lrs)} steps, lr {number(lrs[0])} to {number(lrs[-1])}" if lrs else "no steps"
    out.print(f"job {job_id}: {span}, stopped: {body['stopped']}")
    rows = [{"suggestion": name, "lr": number(lr)} for name, lr in body["suggestions"].items()]
    print_table(rows, ["suggestion", "lr"], title="suggested learning rates")
    console.print(f"a sweep around one: lr_from: {{job_id: {job_id}, suggestion: valley}}")


@analysis_app.command("trajectories")
def trajectories(
    sweep_id: SweepArgument,
    plot: PlotOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Each 2-D test function run's start, end and final value (--plot draws the paths)."""
    from service import plots

    with connected(url, api_key) as client:
        body = client.trajectories(sweep_id)
    _show(body, as_json, _print_trajectories)
    _draw(plots.plot_trajectories, body, plot)


def _print_trajectories(body: Mapping[str, Any]) -> None:
    minimum = body.get("minimum")
    rows = []
    for path in body["paths"]:
        finite = [
            i for i, (x, y) in enumerate(zip(path["x"], path["y"], strict=True)) if x is not None and y is not None
        ]
        first, last = (finite[0], finite[-1]) if finite else (None, None)
        row = {"job": path["job_id"], "run": path["label"], "seed": path.get("seed"), "status": path["status"]}
        row["steps"] = max(len(path["x"]) - 1, 0)
        row["start"] = "-" if first is None else f"({number(path['x'][first])}, {number(path['y'][first])})"
        row["end"] = "-" if last is None else f"({number(path['x'][last])}, {number(path['y'][last])})"
        row["final value"] = "-" if last is None else number(path["value"][last])
        if minimum and last is not None:
            row["to minimum"] = number(math.dist((path["x"][last], path["y"][last]), minimum))
        rows.append(row)
    title = body["function"] + (f" (minimum at ({number(minimum[0])}, {number(minimum[1])}))" if minimum else "")
    columns = ["job", "run", "seed", "status", "steps", "start", "end", "final value", "to minimum"]
    print_table(rows, columns if minimum else columns[:-1], title=title + "; end: the last finite point")
