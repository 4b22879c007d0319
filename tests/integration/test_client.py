"""The Python client, the CLI and the seed-article example against a real `optimlab up`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.client import Client, Conflict, InvalidRequest, NotFound, Unavailable
from tests.integration.conftest import ROOT, Api, Proc, optimlab, slow_spec
from tests.servers import free_port

pytestmark = pytest.mark.slow


def test_client_sweep_wait_dataframes_and_plot(embedded: tuple[Api, Proc, float], tmp_path: Path) -> None:
    api, _, _ = embedded
    with Client(str(api.http.base_url)) as client:
        base = slow_spec(5, n_samples=512)
        sweep = client.sweep(base, grid={"optimizer.lr": [0.05, 0.01]}, seeds=[0, 1, 2], name="client test")
        assert sweep["n_jobs"] == 6
        done = client.wait(sweep, progress=True, poll=0.2, timeout=120)
        assert done["done"] is True
        assert done["counts"]["succeeded"] == 6

        board = client.leaderboard(sweep)
        assert board.shape[0] == 2
        assert {"rank", "configuration", "optimizer.lr", "n", "mean", "std", "ci95_low", "ci95_high"} <= set(board)
        assert list(board["n"]) == [3, 3]
        assert board["mean"].is_monotonic_increasing

        curves = client.sweep_metrics(sweep, columns=["train_loss", "val_loss", "lr"])
        assert curves.shape == (6 * 5, 8)
        assert set(curves["seed"]) == {0, 1, 2}
        assert curves.groupby("job_id").size().tolist() == [5] * 6

        job_id = int(curves["job_id"].iloc[0])
        assert client.metrics(job_id).shape[0] == 5
        png = client.plot_curves(sweep, tmp_path / "curves.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000

        job = client.submit(base | {"epochs": 2}, tags=["one"])
        finished = client.wait(job, progress=False, poll=0.1, timeout=60)
        assert finished["status"] == "succeeded"
        assert [j["id"] for j in client.jobs(tag="one")] == [job["id"]]
        assert "sgd" in {o["name"] for o in client.catalog()["optimizers"]}


def test_client_errors_carry_the_servers_detail(embedded: tuple[Api, Proc, float]) -> None:
    api, _, _ = embedded
    with Client(str(api.http.base_url)) as client:
        with pytest.raises(InvalidRequest) as invalid:
            client.submit(slow_spec(2) | {"optimizer": {"name": "sgd", "lr": -1}})
        assert invalid.value.status_code == 422
        assert "spec.optimizer.lr" in str(invalid.value)
        with pytest.raises(NotFound):
            client.job(10_000)
        job = client.submit(slow_spec(2, n_samples=256))
        client.wait(job, progress=False, poll=0.1, timeout=60)
        with pytest.raises(Conflict):
            client.cancel(job)


def test_client_retries_then_reports_an_unreachable_server() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as client, pytest.raises(Unavailable):
        client.catalog()


def _cli(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPTIMLAB_URL": url}
    return subprocess.run(optimlab(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_commands_and_exit_codes(embedded: tuple[Api, Proc, float], tmp_path: Path) -> None:
    api, _, _ = embedded
    url = str(api.http.base_url)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(slow_spec(3, n_samples=512)))
    submitted = _cli("submit", str(spec_file), "--wait", "--tag", "cli", url=url, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip().splitlines()[-1])

    listed = _cli("jobs", "ls", "--tag", "cli", url=url, cwd=tmp_path)
    assert listed.returncode == 0
    assert "succeeded" in listed.stdout
    shown = _cli("jobs", "show", str(job_id), url=url, cwd=tmp_path)
    assert '"status": "succeeded"' in shown.stdout
    csv_out = _cli("metrics", str(job_id), "--csv", url=url, cwd=tmp_path)
    assert csv_out.stdout.splitlines()[0].startswith("epoch,")
    assert len(csv_out.stdout.splitlines()) == 4

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump({"base": slow_spec(3, n_samples=512), "grid": {"optimizer.lr": [0.1, 0.01]}, "seeds": [0, 1]})
    )
    swept = _cli("sweep", str(sweep_file), "--wait", url=url, cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    assert "lr=0.1" in swept.stdout
    assert "lr=0.01" in swept.stdout

    assert _cli("cancel", str(job_id), url=url, cwd=tmp_path).returncode == 1  # finished: 409
    assert _cli("jobs", "show", "99999", url=url, cwd=tmp_path).returncode == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(slow_spec(3) | {"optimizer": {"name": "sgdd"}}))
    rejected = _cli("submit", str(bad), url=url, cwd=tmp_path)
    assert rejected.returncode == 1
    assert "spec.optimizer" in rejected.stderr
    unreachable = _cli("jobs", "ls", url=f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert unreachable.returncode == 4


def test_the_seed_article_example(embedded: tuple[Api, Proc, float], tmp_path: Path) -> None:
    """As a user runs it: the example prints a leaderboard of 6 configurations x 3 seeds per
    problem and writes plots with the curves."""
    api, _, _ = embedded
    env: dict[str, Any] = {**os.environ, "OPTIMLAB_URL": str(api.http.base_url), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "optimizer_comparison.py"), "--out", str(tmp_path), "--epochs", "12"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for problem in ("linear", "digits"):
        assert f"{problem}: sweep" in result.stdout
        png = tmp_path / f"optimizer_comparison_{problem}.png"
        assert png.stat().st_size > 20_000
    table_rows = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(table_rows) == 12, result.stdout  # 6 configurations per problem
    assert all(" 3 " in row for row in table_rows), "each configuration over 3 seeds"
