"""``optimlab analyze`` against a server that answers with contract-shaped JSON: the numbers each
command prints, --json, --plot, and errors as a message and an exit code."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

import service.client
from service import cli, cli_analysis
from service.cli import app as cli_app
from tests.service import analysis_answers as answers


class Server:
    """Answers by path, records the requests; a route may be a (status, body) pair."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, Any] = {
            "/v1/sweeps/3/compare": answers.compare(),
            "/v1/sweeps/4/compare": answers.compare_matrix(),
            "/v1/sweeps/3/divergence": answers.divergence(),
            "/v1/sweeps/3/budget": answers.budget(),
            "/v1/sweeps/3/trajectories": answers.trajectories(),
            "/v1/profiles": answers.profiles(),
            "/v1/jobs/5/result": {"job_id": 5, "status": "succeeded", "result": answers.range_test()},
            "/v1/jobs/6/result": {"job_id": 6, "status": "failed", "result": None},
            "/v1/jobs/6": {"id": 6, "status": "failed"},
            "/v1/jobs/7/result": {"job_id": 7, "status": "succeeded", "result": answers.trajectories()["paths"][0]},
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get(request.url.path, (404, {"error": "not_found", "detail": "sweep 9 not found"}))
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return httpx.Response(status, json=body)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    """Every client the CLI builds talks to this server."""
    served = Server()
    transport = httpx.MockTransport(served)
    monkeypatch.setattr(service.client, "Client", functools.partial(service.client.Client, transport=transport))
    return served


def analyze(*args: str) -> Result:
    return CliRunner().invoke(cli_app, ["analyze", *args])


def rows(output: str) -> list[list[str]]:
    """The cells of every table row printed (rich's box drawing stripped)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


def test_compare_prints_the_paired_statistics(server: Server) -> None:
    result = analyze("compare", "3", "--a", "0f9e", "--b", "a1b2", "--which", "final")
    assert result.exit_code == 0, result.output
    assert dict(server.requests[0].url.params) == {"a": "0f9e", "b": "a1b2", "metric": "val_loss", "which": "final"}
    table = dict(rows(result.stdout))
    assert table["A"] == "adam lr=0.001 (0f9e8d7c6b, sweep 3)"
    assert table["pairs (n)"] == "5"
    assert table["mean diff (A - B)"] == "-0.036"
    assert table["95% t CI"] == "[-0.07487, 0.00287]"
    assert table["95% BCa CI"] == "[-0.056, -0.008]"
    assert table["Wilcoxon p"] == "0.125 (exact)"
    assert table["P(A beats B)"] == "0.8"
    assert table["wins"] == "A 4, B 1, ties 0"
    assert table["unpaired seeds"] == "A: 5; B: none"
    assert table["excluded runs"] == "1 (B seed 5 diverged)"
    assert table["verdict"] == "inconclusive: the difference could be noise"


def test_compare_names_the_winner(server: Server) -> None:
    server.routes["/v1/sweeps/3/compare"] = answers.compare_decisive()
    table = dict(rows(analyze("compare", "3", "--b-sweep", "8").stdout))
    assert dict(server.requests[0].url.params)["b_sweep"] == "8"
    assert table["verdict"] == "adam lr=0.001 is better (lower val_loss)"


def test_compare_without_a_pair_prints_the_matrix(server: Server) -> None:
    result = analyze("compare", "4")
    assert result.exit_code == 0, result.output
    assert "a" not in dict(server.requests[0].url.params)
    configs, matrix = rows(result.stdout)[:3], rows(result.stdout)[3:]
    assert configs[1] == ["#2", "adam lr=0.001", "0f9e8d7c6b", "5", "0.31"]
    assert matrix == [
        ["#1", "", "0.036 *", "0.03"],
        ["#2", "-0.036 *", "", "-0.006"],
        ["#3", "-0.03", "0.006", ""],
    ]
    header = [line for line in result.stdout.splitlines() if line.startswith("┃")][1]
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["A \\ B", "#1", "#2", "#3"]
    assert "*: a decisive verdict (Holm-adjusted over all pairs)" in result.stdout


def test_the_matrix_of_long_labels_fits_100_columns(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from service import cli_common

    body = answers.compare_matrix()
    long = {"optimizer.params.weight_decay": 0.0005, "optimizer.params.momentum": 0.9, "scheduler.name": "step_lr"}
    for i, config in enumerate(body["configs"]):
        config["config"] = config["config"] | long | {"optimizer.params.dampening": 0.1 * i}
        config["label"] = "x" * 80  # the server's label: the CLI makes its own short one
    server.routes["/v1/sweeps/4/compare"] = body
    monkeypatch.setattr(cli_common, "out", Console(width=100, soft_wrap=False))
    result = analyze("compare", "4")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    legend = rows(result.stdout)[:3]
    assert legend[0][:2] == ["#1", "sgd lr=0.1 damp=0 step"], "the leaderboard's short label, whole"
    assert "…" not in result.stdout.split("mean A - B")[1], "no key or cell of the matrix is cut"


def test_json_prints_the_servers_answer(server: Server) -> None:
    result = analyze("compare", "3", "--a", "0f9e", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == answers.compare()
    assert json.loads(analyze("trajectories", "3", "--json").stdout) == json.loads(json.dumps(answers.trajectories()))


def test_plot_writes_a_png(server: Server, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for command in (["compare", "3", "--a", "0f9e"], ["divergence", "3"], ["range-test", "5"], ["profiles", "1", "2"]):
        path = tmp_path / f"{command[0]}.png"
        result = analyze(*command, "--plot", str(path))
        assert result.exit_code == 0, result.output
        assert path.read_bytes().startswith(b"\x89PNG")
        assert f"plot written to {path}" in " ".join(result.stderr.split())
    matrix = tmp_path / "matrix.png"
    assert analyze("compare", "4", "--plot", str(matrix)).exit_code == 0
    assert matrix.exists()


def test_a_plot_without_matplotlib_is_a_message(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from service import plots

    def missing(*_: Any) -> None:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots, "plot_budget", missing)
    result = analyze("budget", "3", "--plot", "out.png")
    assert result.exit_code == cli.EXIT_USAGE
    assert "pip install 'optimlab[plot]'" in result.stderr


def test_divergence_prints_the_stable_range_and_each_lr(server: Server) -> None:
    result = analyze("divergence", "3", "--metric", "train_loss")
    assert result.exit_code == 0, result.output
    assert dict(server.requests[0].url.params) == {"metric": "train_loss", "which": "final"}
    printed = rows(result.stdout)
    assert printed[:2] == [["sgd momentum=0.9", "0.1", "1", "3"], ["adam", "0.001", "-", "3"]]
    assert printed[4] == ["sgd momentum=0.9", "1", "3", "3", "1", "-", "-"]
    assert printed[7] == ["adam", "0.01", "3", "1", "0.3333", "0.425", "0.03536"]


def test_budget_prints_doubling_ks_up_to_all_trials(server: Server) -> None:
    result = analyze("budget", "3")
    assert result.exit_code == 0, result.output
    printed = rows(result.stdout)
    assert [r[2] for r in printed] == ["1", "2", "4", "8", "1", "2", "4", "5"]
    assert printed[0] == ["sgd", "8", "1", "0.545", "[0.445, 0.6628]"]
    assert printed[3] == ["sgd", "8", "8", "0.3898", "[0.3805, 0.4502]"]


def test_profiles_print_times_and_the_share_of_problems(server: Server) -> None:
    result = analyze("profiles", "1", "2", "3", "4", "--tolerance", "0.1")
    assert result.exit_code == 0, result.output
    assert dict(server.requests[0].url.params) == {"sweeps": "1,2,3,4", "metric": "val_loss", "tolerance": "0.1"}
    printed = rows(result.stdout)
    assert printed[0] == ["problem 1 (1)", "0.31", "5 ep, 11 s", "10 ep, 20 s"]
    assert printed[3] == ["problem 4 (4)", "0.34", "never", "never"]
    assert printed[4:6] == [["adam", "0.6667", "1", "1"], ["sgd", "0.3333", "0.6667", "1"]], "in epochs"
    assert "unsolved: ['4']" in result.stdout


def test_range_test_prints_the_suggestions(server: Server) -> None:
    result = analyze("range-test", "5")
    assert result.exit_code == 0, result.output
    assert rows(result.stdout) == [["steepest", "0.00032"], ["valley", "0.0021"], ["min_over_10", "0.0167"]]
    assert "90 steps, lr 1e-07 to 1.556, stopped: diverged" in result.stdout
    assert "lr_from: {job_id: 5, suggestion: valley}" in result.stderr


@pytest.mark.parametrize(("job", "why"), [("6", "it is failed"), ("7", "it is not an LR range test")])
def test_range_test_of_a_job_without_one_is_refused(server: Server, job: str, why: str) -> None:
    result = analyze("range-test", job)
    assert result.exit_code == cli.EXIT_REJECTED
    assert f"job {job} has no range test result" in result.stderr
    assert why in result.stderr


def test_trajectories_print_each_runs_end(server: Server) -> None:
    result = analyze("trajectories", "3")
    assert result.exit_code == 0, result.output
    printed = rows(result.stdout)
    assert [r[:5] for r in printed] == [
        ["7", "sgd lr=0.002", "0", "succeeded", "400"],
        ["8", "sgd lr=0.0005 momentum=0.9", "0", "succeeded", "400"],
        ["9", "sgd lr=0.008", "0", "diverged", "20"],
    ]
    assert printed[0][5:] == ["(-1.2, 1)", "(0.1849, 0.03157)", "0.6651", "1.266"]


def test_server_errors_are_a_message_and_an_exit_code(server: Server) -> None:
    missing = analyze("divergence", "9")
    assert missing.exit_code == cli.EXIT_REJECTED
    assert "sweep 9 not found" in missing.stderr
    detail = [{"field": "query.a", "msg": "'ff' matches no configuration of the sweep"}]
    server.routes["/v1/sweeps/3/compare"] = (422, {"error": "invalid_request", "detail": detail})
    invalid = analyze("compare", "3", "--a", "ff", "--b", "a1")
    assert invalid.exit_code == cli.EXIT_REJECTED
    assert "query.a: 'ff' matches no configuration" in invalid.stderr
    assert invalid.stdout == ""


def test_an_unreachable_server_is_exit_4(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = functools.partial(service.client.Client, transport=httpx.MockTransport(refuse), retries=1, backoff=0.001)
    monkeypatch.setattr(service.client, "Client", client)
    result = analyze("budget", "3")
    assert result.exit_code == cli.EXIT_UNAVAILABLE
    assert "unavailable" in result.stderr


def test_the_connection_options_are_the_other_commands(server: Server) -> None:
    for name in ("UrlOption", "KeyOption"):
        ours, theirs = getattr(cli_analysis, name).__metadata__[0], getattr(cli, name).__metadata__[0]
        assert (ours.param_decls, ours.envvar, ours.help) == (theirs.param_decls, theirs.envvar, theirs.help)


@pytest.mark.parametrize(
    "command",
    [
        ["-c", "import service.cli_analysis, service.cli; service.cli.app(['analyze', '--help'])"],
        ["-m", "service.cli", "analyze", "range-test", "--help"],
    ],
)
def test_the_analyze_app_loads_whichever_module_comes_first(command: list[str]) -> None:
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
