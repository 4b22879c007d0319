"""The CLI's formatting and plumbing without a server: one number format, short labels, tables
that fit 100 columns without a wrapped cell, the URL check, the client's fail-fast first
connection, and what ``import service.cli`` leaves out (its start-up time)."""

from __future__ import annotations

import io
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
