"""``optimlab`` as a user runs it: every client command in a subprocess at 100 columns
(``COLUMNS=100``, output piped) against one real ``optimlab up`` that the module's tests share.

Tables must fit (no line over 100 characters, one line per row), results go to stdout and
progress to stderr, and errors are one message with their exit code. Each call's time is printed
(``pytest -s``), not asserted: the machines that run this are shared.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.client_display import number
from tests.integration.conftest import Api, Proc, optimlab, service_env, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
    "dataset": {"name": "synthetic_regression", "params": {"n_samples": 256, "n_features": 10}},
    "loss": "mse",
    "optimizer": {"name": "sgd", "lr": 0.01},
    "epochs": 3,
    "batch_size": 32,
    "device": "cpu",
}
GRID = {
    "optimizer.lr": [0.1, 7.364e-05],
    "optimizer.params.momentum": [0.0, 0.9],
    "scheduler": [{"name": "cosine_annealing_lr", "params": {"T_max": 3}}, None],
}
LONGEST_LABEL = "lr=7.364e-05 m=0.9 cosine"  # T_max=3: every cosine run has it


class Cli:
    """Runs ``optimlab`` the way a shell does: a new process, stdout and stderr piped apart."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url, self.cwd = url, cwd
        self.env = service_env(COLUMNS="100", OPTIMLAB_URL=url)

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(
            optimlab(*args), env=self.env | env, cwd=self.cwd, capture_output=True, text=True, timeout=120
        )
        print(f"optimlab {' '.join(args)}: exit {done.returncode} in {time.monotonic() - started:.2f} s")
        return done


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("cli")
    port = free_port()
    env = service_env(OPTIMLAB_HOME=str(root / "home"))
    proc = Proc(optimlab("up", "--port", str(port), "--workers", "1"), env, root / "up.log", cwd=root)
    try:
        wait_for(Api(f"http://127.0.0.1:{port}").up, 90, "optimlab up to answer /healthz")
        (root / "job.yaml").write_text(yaml.safe_dump(SPEC))
        (root / "sweep.yaml").write_text(
            yaml.safe_dump({"name": "cli grid", "base": SPEC, "grid": GRID, "seeds": [0, 1]})
        )
        yield Cli(f"http://127.0.0.1:{port}", root)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def swept(cli: Cli) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``optimlab sweep sweep.yaml --wait``: 8 configurations x 2 seeds."""
    done = cli("sweep", "sweep.yaml", "--wait")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.splitlines()[0]), done


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each data row (lines that start with the body's rule)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]


def assert_fits(stdout: str) -> None:
    too_wide = [line for line in stdout.splitlines() if len(line) > 100]
    assert not too_wide, too_wide


def test_sweep_wait_prints_the_id_then_a_leaderboard_that_fits(swept: tuple[int, Any]) -> None:
    sweep_id, done = swept
    assert done.stdout.splitlines()[0] == str(sweep_id)
    assert_fits(done.stdout)
    rows = table_rows(done.stdout)
    assert len(rows) == 8, "one line per configuration: no cell wrapped"
    assert [row[0] for row in rows] == [str(rank) for rank in range(1, 9)]
    assert LONGEST_LABEL in [row[1] for row in rows], "the label whole, optional columns dropped instead"
    assert "16/16" in done.stderr, "the progress bar is on stderr"
    assert "16/16" not in done.stdout


def test_the_leaderboard_shows_the_hash_only_when_asked(cli: Cli, swept: tuple[int, Any]) -> None:
    sweep_id, _ = swept
    hashes = {r["config_hash"][:10] for r in httpx.get(f"{cli.url}/v1/sweeps/{sweep_id}/leaderboard").json()["rows"]}
    plain = cli("leaderboard", str(sweep_id), "--which", "final")
    assert plain.returncode == 0, plain.stderr
    assert not any(h in plain.stdout for h in hashes)
    assert "final val_loss" in plain.stdout
    shown = cli("leaderboard", str(sweep_id), "--hash")
    assert_fits(shown.stdout)
    assert {row[2] for row in table_rows(shown.stdout)} == hashes
    assert LONGEST_LABEL in [row[1] for row in table_rows(shown.stdout)], "optional columns go before a label is cut"
    for row in table_rows(shown.stdout):
        assert all(cell == number(float(cell)) for cell in row[4:7]), "mean, ±95% and std: 4 significant digits"


def test_a_leaderboard_of_a_metric_no_job_reports_is_a_message(cli: Cli, swept: tuple[int, Any]) -> None:
    sweep_id, _ = swept
    board = cli("leaderboard", str(sweep_id), "--metric", "val_accuracy")
    assert (board.returncode, board.stdout) == (1, "")
    assert board.stderr == f"no job of sweep {sweep_id} reports val_accuracy (a regression dataset?)\n"


def test_sweeps_ls_and_show(cli: Cli, swept: tuple[int, Any]) -> None:
    sweep_id, _ = swept
    listed = cli("sweeps", "ls")
    assert listed.returncode == 0, listed.stderr
    assert_fits(listed.stdout)
    row = next(r for r in table_rows(listed.stdout) if r[0] == str(sweep_id))
    assert row[1:6] == ["cli grid", "grid", "16", "16 ok", "done"]
    shown = cli("sweeps", "show", str(sweep_id))
    assert shown.returncode == 0, shown.stderr
    assert_fits(shown.stdout)
    summary = {row[0]: row[1] for row in table_rows(shown.stdout)}
    assert summary["name"] == "cli grid"
    assert summary["jobs"] == "16: 16 ok"
    assert summary["grid optimizer.lr"] == "0.1, 7.364e-05"
    assert summary["grid scheduler"] == "cosine T_max=3, none"
    assert summary["configurations"] == "8"
    assert summary["best"].endswith("(n=2)")


def test_wait_for_a_sweep_and_export_it(cli: Cli, swept: tuple[int, Any], tmp_path: Path) -> None:
    sweep_id, _ = swept
    waited = cli("wait", "--sweep", str(sweep_id))
    assert (waited.returncode, waited.stdout) == (0, "16 succeeded\n")
    exported = cli("export", str(sweep_id), "--format", "csv", "--out", str(tmp_path / "runs.csv"))
    assert (exported.returncode, exported.stdout) == (0, f"{tmp_path / 'runs.csv'}\n"), exported.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "runs.csv").read_text())))
    assert len(rows) == 16 * 3, "one row per job and epoch"
    first = ["job_id", "configuration", "optimizer.lr", "optimizer.params.momentum", "scheduler.name"]
    assert list(rows[0])[:5] == first
    assert {"seed", "status", "epoch", "train_loss", "val_loss", "lr", "samples_per_second"} <= set(rows[0])
    assert {r["optimizer.lr"] for r in rows} == {"0.1", "7.364e-05"}
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert {r["scheduler.params.T_max"] for r in rows} == {"3", ""}, "an int stays an int beside missing values"
    on_stdout = cli("export", str(sweep_id), "--out", "-")
    assert on_stdout.stdout == (tmp_path / "runs.csv").read_text()


def test_export_parquet(cli: Cli, swept: tuple[int, Any], tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    sweep_id, _ = swept
    path = tmp_path / "runs.parquet"
    exported = cli("export", str(sweep_id), "--out", str(path))  # the extension says Parquet
    assert exported.returncode == 0, exported.stderr
    assert "as parquet" in exported.stderr
    frame = pd.read_parquet(path)
    assert len(frame) == 48
    assert sorted(frame["optimizer.params.momentum"].unique()) == [0.0, 0.9]
    assert "scheduler" not in frame.columns, "a searched path no run has a value for is left out"
    assert frame["val_accuracy"].dtype == float, "a metric no epoch reported: NaN, not objects"
    mismatch = cli("export", str(sweep_id), "--format", "csv", "--out", str(tmp_path / "x.parquet"))
    assert mismatch.returncode == 2
    assert not (tmp_path / "x.parquet").exists()


def test_plot_writes_the_png(cli: Cli, swept: tuple[int, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep_id, _ = swept
    path = tmp_path / "curves.png"
    drawn = cli("plot", str(sweep_id), "--out", str(path), "--metric", "train_loss")
    assert (drawn.returncode, drawn.stdout) == (0, f"{path}\n"), drawn.stderr
    assert path.read_bytes().startswith(b"\x89PNG")


def test_submit_wait_prints_the_id_alone(cli: Cli) -> None:
    done = cli("submit", "job.yaml", "--wait", "--no-cache", "--tag", "cli-solo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
    assert done.stdout == done.stdout.strip() + "\n", "stdout is the id alone: `id=$(optimlab submit --wait)`"
    job_id = done.stdout.strip()
    assert f"job {job_id} succeeded" in done.stderr
    waited = cli("wait", job_id)
    assert (waited.returncode, waited.stdout) == (0, "succeeded\n")
    shown = cli("jobs", "show", job_id)
    assert json.loads(shown.stdout)["status"] == "succeeded"
    table = cli("metrics", job_id)
    assert_fits(table.stdout)
    assert [row[0] for row in table_rows(table.stdout)] == ["1", "2", "3"]
    assert "val acc" not in table.stdout, "a metric no epoch reported is left out"
    as_csv = cli("metrics", job_id, "--csv")
    assert as_csv.stdout.splitlines()[0].startswith("epoch,train_loss,val_loss")
    assert len(as_csv.stdout.splitlines()) == 4


def test_jobs_ls_shows_configuration_and_seed_and_says_when_it_is_cut(cli: Cli, swept: tuple[int, Any]) -> None:
    sweep_id, _ = swept
    listed = cli("jobs", "ls", "--sweep", str(sweep_id), "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert_fits(listed.stdout)
    rows = table_rows(listed.stdout)
    assert len(rows) == 5
    header = next(line for line in listed.stdout.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:6]] == ["id", "status", "sweep", "configuration", "seed"]
    assert all(row[4] in ("0", "1") for row in rows)
    assert "the first 5 jobs, and there are more" in listed.stderr
    whole = cli("jobs", "ls", "--sweep", str(sweep_id))
    assert len(table_rows(whole.stdout)) == 16
    assert "there are more" not in whole.stderr


def test_jobs_ls_shows_a_lone_jobs_schedule(cli: Cli) -> None:
    """The server keeps a lone job's scheduler as a chain (a list)."""
    (cli.cwd / "scheduled.yaml").write_text(
        yaml.safe_dump(SPEC | {"scheduler": {"name": "step_lr", "params": {"step_size": 1}}, "epochs": 1})
    )
    assert cli("submit", "scheduled.yaml", "--tag", "cli-scheduled").returncode == 0
    listed = cli("jobs", "ls", "--tag", "cli-scheduled")
    assert listed.returncode == 0, listed.stderr
    assert [row[3] for row in table_rows(listed.stdout)] == ["sgd lr=0.01 step"]


def test_up_says_where_its_state_is_on_one_line(cli: Cli) -> None:
    said = (cli.cwd / "up.log").read_text()
    assert f"state in {(cli.cwd / 'home').resolve()}\n" in said, "not wrapped at 80 columns in a log file"


def test_a_cancelled_job_is_exit_3(cli: Cli) -> None:
    long_job = cli.cwd / "long.yaml"
    long_job.write_text(yaml.safe_dump(SPEC | {"epochs": 5000}))
    job_id = cli("submit", "long.yaml").stdout.strip()
    assert cli("cancel", job_id).returncode == 0
    waited = cli("wait", job_id)
    assert (waited.returncode, waited.stdout) == (3, "cancelled\n")


def test_errors_are_one_message_and_an_exit_code(cli: Cli) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = cli("jobs", "ls", "--url", nobody)
    assert unreachable.returncode == 4
    assert nobody in unreachable.stderr
    assert "optimlab up" in unreachable.stderr
    for url in ("127.0.0.1:8000", "localhost:8000/v1", "htp://x"):
        malformed = cli("sweeps", "ls", "--url", url)
        assert malformed.returncode == 2, url
        assert "--url / OPTIMLAB_URL" in malformed.stderr
    from_env = cli("jobs", "ls", OPTIMLAB_URL="127.0.0.1:8000")
    assert (from_env.returncode, "--url / OPTIMLAB_URL" in from_env.stderr) == (2, True)
    swept_file = cli("submit", "sweep.yaml")
    assert swept_file.returncode == 2
    assert swept_file.stderr == "sweep.yaml: this is a sweep file: use `optimlab sweep sweep.yaml`\n"
    (cli.cwd / "bad.yaml").write_text(yaml.safe_dump(SPEC | {"optimizer": {"name": "sgd", "lr": -1}}))
    rejected = cli("submit", "bad.yaml")
    assert rejected.returncode == 1
    assert "\n  spec.optimizer.lr: " in rejected.stderr, "each detail on its own line as field: msg"
    assert cli("jobs", "show", "99999").returncode == 1


def test_help_lists_every_command(cli: Cli) -> None:
    shown = cli("--help")
    assert shown.returncode == 0
    for command in ("submit", "sweep", "wait", "jobs", "sweeps", "leaderboard", "export", "plot", "up", "worker"):
        assert f" {command} " in shown.stdout, command


def test_the_remaining_commands_fit_and_answer(cli: Cli, swept: tuple[int, Any]) -> None:
    """metrics, jobs show, analyze, cancel --sweep, keys and db: each in a subprocess at 100 columns."""
    sweep_id, _ = swept
    listed = cli("jobs", "ls", "--sweep", str(sweep_id), "--limit", "1")
    job_id = table_rows(listed.stdout)[0][0]
    shown = cli("jobs", "show", job_id)
    assert (shown.returncode, json.loads(shown.stdout)["id"]) == (0, int(job_id))
    epochs = cli("metrics", job_id)
    assert epochs.returncode == 0
    assert len(table_rows(epochs.stdout)) == SPEC["epochs"]
    for args in (["compare", str(sweep_id)], ["divergence", str(sweep_id)], ["budget", str(sweep_id)]):
        answered = cli("analyze", *args)
        assert answered.returncode == 0, (args, answered.stderr)
        assert table_rows(answered.stdout), args
        assert_fits(answered.stdout)
    home = {"OPTIMLAB_HOME": str(cli.cwd / "home")}
    assert cli("db", "upgrade", **home).returncode == 0
    created = cli("keys", "create", "--owner", "alice", "--name", "laptop", **home)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("olk_")  # the token alone on stdout
    keys = cli("keys", "ls", **home)
    assert (keys.returncode, "alice" in keys.stdout) == (0, True)
    assert_fits(keys.stdout)
    (cli.cwd / "later.yaml").write_text(yaml.safe_dump({"base": SPEC | {"epochs": 5000}, "seeds": [0, 1]}))
    later = cli("sweep", "later.yaml").stdout.splitlines()[0]
    cancelled = cli("cancel", later, "--sweep")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cli("wait", later, "--sweep").returncode == 3  # its jobs were cancelled
