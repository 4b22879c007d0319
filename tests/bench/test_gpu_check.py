"""bench/gpu_check.sh: the dry run passes on the CPU, and its summaries say FAIL where they must.

GPU hosts are lent rarely and briefly, so the check has to work the first time it meets one:
this runs the same script, every step, with ``device: cpu`` and tiny sizes (``--cpu``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_steps import pytest_figures, step_ok, summarize

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["deps", "cuda-tests", "impl", "e2e", "packed", "packed-wide", "overhead", "engine-tests"]


@pytest.mark.slow
def test_the_dry_run_passes_every_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMLAB_")}
    env |= {"PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    lines = done.stdout.splitlines()
    summaries = {line.split()[1]: line for line in lines if line.startswith(("ok ", "FAIL "))}
    assert list(summaries) == STEPS, done.stdout + done.stderr
    assert all(line.startswith("ok ") for line in summaries.values()), done.stdout
    assert done.returncode == 0, done.stdout
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == "cpu"
    assert summary["ok"] is True
    assert list(summary["steps"]) == STEPS
    figures = {name: step["figures"] for name, step in summary["steps"].items()}
    assert figures["impl"]["adam"]["ran"] == "fused"
    assert figures["engine-tests"]["passed"] > 50
    assert figures["packed"]["rows"]["4"]["mismatched"] == 0
    assert figures["e2e"]["sweep"]["packs"] == 1
    # Everything the step printed is in the one log that comes back, optimlab up's output too.
    log = (tmp_path / "gpu_check.log").read_text()
    assert "=== e2e: optimlab up's own output" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]


def test_on_a_gpu_skipped_cuda_tests_are_a_failure() -> None:
    assert step_ok("cuda-tests", 0, {"skipped": 6}, "cpu")
    assert not step_ok("cuda-tests", 0, {"skipped": 6}, "cuda")
    assert not step_ok("cuda-tests", 0, {"passed": 20, "skipped": 1}, "cuda")
    assert step_ok("cuda-tests", 0, {"passed": 26}, "cuda")
    assert not step_ok("cuda-tests", 1, {"passed": 25, "failed": 1}, "cuda")
    assert not step_ok("engine-tests", 0, {"passed": 90, "error": 1}, "cuda")  # whatever the exit status


def test_packed_figures_must_agree_and_the_probes_must_hold() -> None:
    assert step_ok("packed", 0, {"agree": True}, "cuda")
    assert not step_ok("packed", 0, {"agree": False}, "cuda")
    assert not step_ok("packed", 0, {}, "cuda")  # no figures: not a pass
    assert not step_ok("impl", 0, {"ok": False}, "cuda")


def test_a_timed_out_step_prints_one_fail_line_and_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "engine-tests.log"
    log.write_text("....\n4 passed, 2 deselected in 3.10s\n")
    assert pytest_figures(log) == {"passed": 4, "deselected": 2}
    summary = tmp_path / "gpu_check.json"
    for name, rc in (("engine-tests", 0), ("packed", 124)):
        args = argparse.Namespace(
            name=name, rc=rc, started=10.0, ended=12.5, step_json=str(tmp_path / f"{name}.json"),
            log=str(tmp_path / f"{name}.log"), summary_json=str(summary), device="cuda",
        )  # fmt: skip
        summarize(args)
    first, second = capsys.readouterr().out.splitlines()
    assert first.split()[:3] == ["ok", "engine-tests", "2.5s"]
    assert "4 passed, 2 deselected" in first
    assert second.startswith("FAIL packed")
    assert "timed out" in second
    recorded = json.loads(summary.read_text())
    assert recorded["ok"] is False
    assert recorded["steps"]["packed"] == {"ok": False, "rc": 124, "wall_s": 2.5, "figures": {}}
