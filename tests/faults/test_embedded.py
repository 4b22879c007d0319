"""`optimlab up` (SQLite, the filesystem broker, its own worker) SIGKILLed mid-sweep and started
again on the same home: every job finishes once."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import assert_invariants, post_sweep
from tests.integration.conftest import Api, Proc, optimlab, service_env, slow_spec, stop_all, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_optimlab_up_sigkilled_mid_sweep_and_restarted_loses_no_job(tmp_path: Path, logs: Path) -> None:
    """The killed `up` takes its API and dispatcher with it; its worker, told by the kernel that
    its parent died (SIGTERM), finishes the job it runs and exits. The restarted `up` (same
    home, same port) serves the same database and its new worker runs the rest."""
    home, port = tmp_path / "home", free_port()
    env = service_env(OPTIMLAB_HOME=str(home))
    command = optimlab("up", "--port", str(port), "--workers", "1")
    ups = [Proc(command, env, logs / "up.log", cwd=tmp_path)]
    orphans: list[int] = []
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(api.up, 60, "optimlab up")
        grid = {"optimizer.lr": [0.01, 0.02]}
        post_sweep(api, {"base": slow_spec(10), "grid": grid, "seeds": [0, 1, 2], "execution": "separate"})
        post_sweep(api, {"base": slow_spec(10), "grid": grid, "seeds": [3, 4], "execution": "packed"})

        def mid_sweep() -> list[dict[str, Any]] | None:
            jobs = api.http.get("/v1/jobs", params={"limit": 100}).json()["items"]
            running = [j for j in jobs if j["status"] == "running" and j["summary"]["epochs_done"] >= 2]
            return running if running and any(j["status"] == "succeeded" for j in jobs) else None

        wait_for(mid_sweep, 120, "a job done and one training")
        orphans = children(ups[0].popen.pid)
        os.killpg(ups[0].popen.pid, signal.SIGKILL)  # its worker lives on: it is in a session of its own
        ups.append(Proc(command, env, logs / "up-2.log", cwd=tmp_path))
        wait_for(api.up, 60, "the restarted optimlab up")
        done = assert_invariants(f"sqlite:///{home / 'optimlab.db'}", ups)
        assert len(done) == 10
    finally:
        stop_all(ups)
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
