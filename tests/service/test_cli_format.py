"""The CLI's formatting and plumbing without a server: one number format, short labels, tables
that fit 100 columns without a wrapped cell, the URL check, the client's fail-fast first
connection, and what ``import service.cli`` leaves out (its start-up time)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console

from service import cli_common
from service.cli_common import checked_url, out_width
from service.cli_lazy import SERVE_COMMANDS, serve_group
from service.cli_tables import Column, layout, print_table
from service.client import Client, Unavailable
from service.client_display import detail_lines, flatten, number, short_label, short_labels


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (7.36412e-05, "7.364e-05"),
        (0.389812, "0.3898"),
        (12345.6, "1.235e+04"),
        (0.1, "0.1"),
        (1.0, "1"),
        (3, "3"),
        (None, "-"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        ("sgd", "sgd"),
    ],
)
def test_one_number_format_with_four_significant_digits(value: object, shown: str) -> None:
    assert number(value) == shown
    assert len(number(value)) <= 10


def test_short_labels_name_first_abbreviated_without_separators() -> None:
    config = {
        "optimizer": {"lr": 0.1, "name": "sgd", "params": {"momentum": 0.9, "weight_decay": 0.0005}},
        "scheduler": {"name": "cosine_annealing_lr"},
    }
    assert short_label(flatten(config)) == "sgd lr=0.1 m=0.9 wd=0.0005 cosine"
    grid = {"optimizer.lr": 7.364e-05, "optimizer.params.momentum": 0.0, "scheduler": None}
    assert short_label(flatten(grid)) == "lr=7.364e-05 m=0 sched=none"
    assert short_label(flatten({"scheduler": {"name": "step_lr", "params": {"gamma": 0.1}}})) == "step gamma=0.1"
    assert short_label({}) == "base"


def test_labels_shown_together_leave_out_what_they_share_while_they_stay_distinct() -> None:
    step = {"name": "step_lr", "params": {"step_size": 10, "gamma": 0.1}}
    configs: list[dict[str, Any]] = [
        {"optimizer": {"name": "sgd", "lr": 0.01, "params": {"momentum": 0.9}}, "scheduler": step},
        {"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": step},
        {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": None},
    ]
    assert short_labels(configs) == ["sgd lr=0.01 m=0.9 step", "sgd lr=0.01 step", "adam lr=0.001 sched=none"]
    assert short_labels([{"optimizer.lr": 0.1, "scheduler": step}]) == ["lr=0.1 step step_size=10 gamma=0.1"]
    assert short_labels([{"optimizer.lr": 0.1}, {"optimizer.lr": 0.01}]) == ["lr=0.1", "lr=0.01"]


def test_error_details_are_one_line_each() -> None:
    detail = [{"field": "spec.optimizer.lr", "msg": "Input should be greater than 0"}, {"msg": "bad body"}]
    assert detail_lines(detail) == ["spec.optimizer.lr: Input should be greater than 0", "body: bad body"]
    assert detail_lines("sweep 9 not found") == ["sweep 9 not found"]


def _board(labels: list[str]) -> list[dict[str, object]]:
    """Leaderboard-shaped rows with the widest numbers the format makes."""
    return [
        {"rank": i + 1, "configuration": text, "n": 3, "mean": 7.36412e-05 * (i + 1), "ci": 1.23456e-05, "std": 0.1234}
        | {"min": 12345.6, "max": -1.5e-07, "diverged": 0, "s": 123.456}
        for i, text in enumerate(labels)
    ]


BOARD: list[Column | str] = ["rank", "configuration", "n", "mean", Column("±95%", "ci"), "std"]
BOARD += [Column("min", drop=3), Column("max", drop=3), "diverged", Column("s/run", "s", drop=2)]


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What ``print_table`` writes to a 100-column stdout."""
    buffer = io.StringIO()
    monkeypatch.setattr(cli_common, "out", Console(file=buffer, width=100))
    return buffer


def test_a_leaderboard_fits_100_columns_one_line_per_row(printed: io.StringIO) -> None:
    labels = ["sgd lr=7.364e-05 m=0.9 cosine", "adamw lr=0.001 wd=0.01 sched=none", "sgd lr=0.1"]
    print_table(_board(labels), BOARD, title="sweep 12: best val_loss (min is better) " + "x" * 120)
    lines = printed.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 100
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == len(labels), "every row one line: no cell wrapped"
    assert "sgd lr=7.364e-05 m=0.9 cosine" in rows[0], "optional columns go before text is cut"
    for number_shown in ("7.364e-05", "1.235e-05", "0.1234"):
        assert number_shown in rows[0], "numbers are never cut"
    header = next(line for line in lines if line.startswith("┃"))
    assert "min" not in header
    assert "max" not in header
    assert "s/run" in header, "dropped highest first: min and max were enough"


def test_a_label_too_long_for_any_layout_is_cut_with_an_ellipsis(printed: io.StringIO) -> None:
    labels = ["sgd " + " ".join(f"knob{i}={i}.5" for i in range(30))]
    print_table(_board(labels), BOARD)
    rows = [line for line in printed.getvalue().splitlines() if line.startswith("│")]
    assert len(rows) == 1
    assert "…" in rows[0]
    assert len(rows[0]) == 100
    assert "7.364e-05" in rows[0]


def test_a_wide_terminal_shows_every_column_whole() -> None:
    shown = layout(_board(["sgd lr=0.1 m=0.9 cosine"]), BOARD, 200)
    assert [column.column.name for column, _ in shown] == [c if isinstance(c, str) else c.name for c in BOARD]
    assert all(width == column.natural for column, width in shown)


def test_the_width_is_columns_or_unbounded_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert out_width() == 100
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal
    assert out_width() == 10_000


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://optimlab.example.org/api", "http://test"])
def test_http_urls_pass(url: str) -> None:
    assert checked_url(url) == url


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("127.0.0.1:8000", "did you mean http://127.0.0.1:8000?"),
        ("localhost:8000", "did you mean http://localhost:8000?"),
        ("ftp://host", ""),
        ("http://", ""),
        ("http://host:99999", ""),
        ("http://host:port", ""),
    ],
)
def test_a_malformed_url_is_a_usage_error_naming_the_option(
    url: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as exit_:
        checked_url(url)
    assert exit_.value.exit_code == cli_common.EXIT_USAGE
    message = " ".join(capsys.readouterr().err.split())
    assert "--url / OPTIMLAB_URL" in message
    assert hint in message


def test_fail_fast_refuses_at_once_until_the_server_answered_then_retries() -> None:
    calls: list[str] = []
    refusing = True

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if refusing or len(calls) == 3:  # after an answer: one refusal (a restart), then it is back
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={})

    transport = httpx.MockTransport(handler)
    with Client("http://test", transport=transport, fail_fast=True, backoff=0.001) as client:
        with pytest.raises(Unavailable) as refused:
            client.catalog()
        assert (len(calls), refused.value.status_code) == (1, 0), "no retries before the first answer"
        refusing = False
        assert client.catalog() == {}
        assert client.catalog() == {}
    assert len(calls) == 4, "the refusal after an answer was retried"


def test_importing_the_cli_leaves_out_the_engine_the_client_and_pandas() -> None:
    """What keeps every call under half a second: each command imports what it needs."""
    heavy = ("optim_engine", "service.settings", "service.cli_serve", "service.client", "pandas", "numpy", "yaml")
    code = f"import sys, service.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    code = "import sys, service.client; print([m for m in ('numpy', 'pandas', 'optim_engine') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", "a client command loads no numpy: plots load when one is drawn"


def test_help_lists_the_serve_commands_without_importing_them() -> None:
    code = (
        "import sys\nfrom service.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('service.cli_serve' in sys.modules, 'optim_engine' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ | {"COLUMNS": "200"}
    )
    for name, help_line in SERVE_COMMANDS.items():
        assert name in done.stdout
        assert " ".join(help_line.split()[:6]) in " ".join(done.stdout.split())
    assert done.stdout.split()[-2:] == ["False", "False"]


def test_the_serve_commands_help_lines_are_their_own() -> None:
    """``SERVE_COMMANDS`` repeats each command's first help paragraph: change both together."""
    for name, command in serve_group().commands.items():
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert SERVE_COMMANDS[name] == first, f"service/cli_lazy.py SERVE_COMMANDS[{name!r}]"


def test_parquet_without_pyarrow_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from service.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    result = CliRunner().invoke(
        app, ["export", "1", "--format", "parquet", "--out", "x.parquet", "--url", "http://test"]
    )
    assert result.exit_code == cli_common.EXIT_USAGE
    assert "pip install pyarrow" in result.stderr
    assert "optimlab[parquet]" in result.stderr
    unknown = CliRunner().invoke(app, ["export", "1", "--format", "xlsx", "--out", "x.xlsx", "--url", "http://test"])
    assert (unknown.exit_code, "csv, parquet" in unknown.stderr) == (cli_common.EXIT_USAGE, True)


# --- what a new user met at 100 columns, against a server that answers from a table ------------


class Answers:
    """A server that answers by path (a route may be a (status, body) pair) and records requests."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.routes.get(request.url.path, (404, {"error": "not_found", "detail": "not here"}))
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return httpx.Response(status, json=body)


@pytest.fixture
def answer(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The routes every client the CLI builds is answered from; stdout at 100 columns."""
    import functools

    import service.client

    routes: dict[str, Any] = {}
    transport = httpx.MockTransport(Answers(routes))
    monkeypatch.setattr(service.client, "Client", functools.partial(service.client.Client, transport=transport))
    monkeypatch.setattr(cli_common, "out", Console(width=100, soft_wrap=False))
    return routes


def invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    from service.cli import app

    return CliRunner().invoke(app, [*args, "--url", "http://test"] if args[-1] != "--help" else list(args))


def lone_job(job_id: int, scheduler: Any) -> dict[str, Any]:
    """A job outside any sweep, as ``GET /v1/jobs`` lists it."""
    spec = {"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": scheduler, "seed": 0}
    summary = {"epochs_done": 3, "epochs_total": 3, "best_loss": 0.1, "final_val_loss": 0.2}
    return {"id": job_id, "status": "succeeded", "sweep_id": None, "config": None, "spec": spec, "summary": summary}


def test_jobs_ls_shows_a_lone_jobs_schedule_whatever_its_shape(answer: dict[str, Any]) -> None:
    chain = [{"name": "linear_lr", "params": {}}, {"name": "cosine_annealing_lr", "params": {"T_max": 3}}]
    schedulers = [None, {"name": "step_lr"}, [{"name": "step_lr"}], chain]
    items = [lone_job(i, scheduler) | {"tags": [], "cached_from": None} for i, scheduler in enumerate(schedulers, 1)]
    answer["/v1/jobs"] = {"items": items, "next_cursor": None}
    listed = invoke("jobs", "ls")
    assert listed.exit_code == 0, listed.output
    labels = [line.split("│")[4].strip() for line in listed.stdout.splitlines() if line.startswith("│")]
    assert labels == ["sgd", "sgd step", "sgd step", "sgd linear→cosine"]


def test_a_bug_is_one_line_and_its_own_exit_code(answer: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    answer["/v1/jobs"] = {"items": [{"id": 1, "spec": {}}], "next_cursor": None}  # no summary: a KeyError
    broken = invoke("jobs", "ls")
    assert broken.exit_code == cli_common.EXIT_INTERNAL != cli_common.EXIT_REJECTED
    assert broken.stderr.startswith("internal error: KeyError: ")
    assert "OPTIMLAB_TRACEBACK=1" in broken.stderr
    assert len(broken.stderr.splitlines()) == 1, "no traceback"
    monkeypatch.setenv("OPTIMLAB_TRACEBACK", "1")
    assert isinstance(invoke("jobs", "ls").exception, KeyError), "asked for: the exception itself"


def test_help_shows_no_type_for_a_flag() -> None:
    for command in (["--help"], ["submit", "--help"], ["jobs", "ls", "--help"]):
        shown = invoke(*command)
        assert shown.exit_code == 0
        assert "<bool>" not in shown.stdout, command
        assert "--help" in shown.stdout
    assert "<path>" in invoke("submit", "--help").stdout, "an option that takes a value keeps its type"


def test_the_same_problem_in_many_combinations_is_one_line() -> None:
    def entry(lr: float, seed: int, field: str, msg: str) -> dict[str, Any]:
        combination = {"optimizer.lr": lr, "seed": seed}
        text = f"combination {json.dumps(combination, sort_keys=True)}: {field}: {msg}"
        return {"field": field, "combination": combination, "msg": text, "type": "invalid_combination"}

    too_big = "Input should be less than or equal to 10 " + "x" * 300
    detail = [entry(lr, seed, "spec.optimizer.lr", too_big) for lr in (20.0, 30.0) for seed in (0, 1, 2)]
    detail.append(entry(40.0, 0, "spec.batch_size", "Input should be greater than 0"))
    lines = detail_lines(detail)
    assert lines == [
        f'spec.optimizer.lr: {too_big} (in 6 combinations, e.g. {{"optimizer.lr": 20.0, "seed": 0}})',
        'spec.batch_size: Input should be greater than 0 (in 1 combination, e.g. {"optimizer.lr": 40.0, "seed": 0})',
    ]
    cut = detail_lines(detail, width=100)
    assert cut[0] == f"spec.optimizer.lr: {too_big} (in 6 combinations)", "the problem whole, the example left out"
    assert cut[1].endswith('(in 1 combination, e.g. {"optimizer.lr": 40.0, "se…)')
    assert len(cut[1]) == 100


def test_a_rejected_sweep_says_each_problem_once(answer: dict[str, Any], tmp_path: Any) -> None:
    msg = 'combination {"optimizer.lr": -1, "seed": %d}: spec.optimizer.lr: Input should be greater than 0'
    detail = [
        {"field": "spec.optimizer.lr", "combination": {"optimizer.lr": -1, "seed": s}, "msg": msg % s} for s in range(5)
    ]
    answer["/v1/sweeps"] = (422, {"error": "invalid_request", "detail": detail})
    (tmp_path / "sweep.yaml").write_text("base: {epochs: 1}\ngrid: {optimizer.lr: [-1]}\nseeds: [0, 1, 2, 3, 4]\n")
    refused = invoke("sweep", str(tmp_path / "sweep.yaml"))
    assert refused.exit_code == cli_common.EXIT_REJECTED
    assert refused.stderr.count("Input should be greater than 0") == 1
    assert "(in 5 combinations, e.g. " in refused.stderr


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("base: {}\ngird: {optimizer.lr: [0.1]}\n", "unknown key 'gird' (did you mean 'grid'?)"),
        ("gird: {optimizer.lr: [0.1]}\n", "needs 'base'; unknown key 'gird' (did you mean 'grid'?)"),
        ("base: {}\nzzz: 1\n", "unknown key 'zzz'"),
        ("model: {name: linear}\noptimizer: {name: sgd, lr: 0.1}\n", "this is a job spec: use `optimlab submit "),
    ],
)
def test_a_sweep_file_error_names_the_fix(text: str, said: str, tmp_path: Any) -> None:
    (tmp_path / "s.yaml").write_text(text)
    refused = invoke("sweep", str(tmp_path / "s.yaml"))
    assert refused.exit_code == cli_common.EXIT_USAGE
    assert said in " ".join(refused.stderr.split())


def board_row(rank: int, config: dict[str, Any], n: int, mean: float | None) -> dict[str, Any]:
    return {
        "rank": rank,
        "config": config,
        "config_hash": f"{rank:02d}" + "ab" * 20,
        "n": n,
        "mean": mean,
        "std": None if mean is None else 1.2345e-05,
        "ci95_low": None if mean is None else mean - 1.1111e-05,
        "ci95_high": None if mean is None else mean + 1.1111e-05,
        "min": mean,
        "max": mean,
        "diverged": 0,
        "mean_wall_seconds": 12.345,
    }


def test_a_leaderboard_of_a_metric_no_job_reports_says_so(answer: dict[str, Any]) -> None:
    rows = [board_row(i, {"optimizer.lr": 0.1 * i}, 0, None) for i in range(1, 7)]
    answer["/v1/sweeps/1/leaderboard"] = {"metric": "val_accuracy", "mode": "max", "rows": rows}
    empty = invoke("leaderboard", "1", "--metric", "val_accuracy")
    assert empty.exit_code == cli_common.EXIT_REJECTED
    assert empty.stdout == ""
    assert empty.stderr == "no job of sweep 1 reports val_accuracy (a regression dataset?)\n"


def test_the_leaderboard_with_hashes_keeps_whole_labels_at_100_columns(answer: dict[str, Any]) -> None:
    configs = [
        {"optimizer.lr": lr, "optimizer.params.momentum": m, "scheduler": s}
        for lr in (0.1, 7.364e-05)
        for m in (0.0, 0.9)
        for s in ({"name": "cosine_annealing_lr", "params": {"T_max": 3}}, None)
    ]
    rows = [board_row(i, c, 2, -7.36412e-05 * i) for i, c in enumerate(configs, 1)]
    answer["/v1/sweeps/1/leaderboard"] = {"metric": "val_loss", "mode": "min", "rows": rows}
    shown = invoke("leaderboard", "1", "--hash")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert "lr=7.364e-05 m=0.9 sched=none" in [row[1] for row in cells], "the label whole"
    assert all(row[2] == row[2].strip("…") and len(row[2]) == 10 for row in cells), "the hash whole"


def curves_frame(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]]) -> Any:
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.attrs["configs"] = configs
    return frame


def test_export_leaves_out_empty_configuration_columns_and_keeps_empty_metrics_float() -> None:
    from service.cli_export import results_frame

    configs: dict[str, dict[str, Any]] = {
        "sgd lr=0.1": {"optimizer.lr": 0.1, "scheduler": None},
        "sgd lr=0.01": {"optimizer.lr": 0.01},
    }
    rows = [
        {"job_id": j, "epoch": 1, "train_loss": 0.5, "val_accuracy": None, "configuration": c, "seed": 0}
        | {"status": "succeeded"}
        for j, c in enumerate(configs, 1)
    ]
    frame = results_frame(curves_frame(rows, configs))
    assert list(frame.columns) == [
        "job_id",
        "configuration",
        "optimizer.lr",
        "seed",
        "status",
        "epoch",
        "train_loss",
        "val_accuracy",
    ]
    assert frame["val_accuracy"].dtype == float
    assert frame["val_accuracy"].isna().all()


@pytest.mark.parametrize(
    ("out", "asked", "written"),
    [
        ("runs.parquet", None, "parquet"),
        ("runs.PQ", None, "parquet"),
        ("runs.csv", None, "csv"),
        ("-", None, "csv"),
        ("runs.txt", None, "csv"),
        ("runs.txt", "parquet", "parquet"),
        ("runs.csv", "csv", "csv"),
    ],
)
def test_the_export_format_follows_the_extension(out: str, asked: str | None, written: str) -> None:
    from pathlib import Path

    from service.cli_export import file_format

    assert file_format(Path(out), asked) == written


def test_a_format_the_extension_contradicts_is_refused(answer: dict[str, Any]) -> None:
    for out, asked in (("x.parquet", "csv"), ("x.csv", "parquet")):
        refused = invoke("export", "1", "--format", asked, "--out", out)
        assert refused.exit_code == cli_common.EXIT_USAGE
        assert f"names a {'csv' if asked == 'parquet' else 'parquet'} file" in refused.stderr


def test_plot_of_a_sweep_without_epochs_writes_nothing(answer: dict[str, Any], tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    answer["/v1/sweeps/1"] = {"id": 1, "name": "fresh"}
    columns = ["job_id", "epoch", "val_loss", "val_accuracy"]
    answer["/v1/sweeps/1/metrics"] = {"rows": [], "columns": columns, "jobs": []}
    path = tmp_path / "curves.png"
    empty = invoke("plot", "1", "--out", str(path))
    assert (empty.exit_code, empty.stdout) == (cli_common.EXIT_REJECTED, "")
    assert "sweep 1 has no epochs yet" in empty.stderr
    assert not path.exists()
