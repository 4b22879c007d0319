"""Clean shutdowns with a job running: Ctrl-C of `optimlab up`, SIGTERM of a deployed worker. The
job is checkpointed at its last whole epoch and handed back (queued, unsent), and the next start
(or another worker) resumes it from there at once, not after the stale-heartbeat limit."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.faults.conftest import assert_invariants
from tests.integration.conftest import Api, Deployment, Proc, optimlab, service_env, slow_spec, stop_all, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow

EPOCHS = 30
SPEC = slow_spec(EPOCHS, n_samples=65536)  # ~0.3-0.6 s an epoch here: a stop lands mid-epoch
HANDED_BACK = re.compile(r"handed back job (\d+) at epoch (\d+)/(\d+); it resumes on the next start")


def checkpoint_epoch(home: Path, job_id: int) -> int:
    path = home / "checkpoints" / str(job_id) / "checkpoint.pt"
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def job_row(database: Path, job_id: int) -> dict[str, Any]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return dict(row)


def test_ctrl_c_of_optimlab_up_hands_the_job_back_and_the_next_start_resumes_it(tmp_path: Path, logs: Path) -> None:
    """SIGINT to `up`'s process group (a terminal's Ctrl-C; its workers run in sessions of their
    own): `up` exits within the issue's 3 s (asserted with slack for a shared machine), naming
    the job; the job is queued, unsent, with a checkpoint of the epoch its rows end at. The
    restarted `up` runs it again within seconds and it ends with epochs 1..N once."""
    home, port = tmp_path / "home", free_port()
    env = service_env(OPTIMLAB_HOME=str(home), OPTIMLAB_STALE_AFTER_S="60")  # no stale recovery
    command = optimlab("up", "--port", str(port), "--workers", "1")
    ups = [Proc(command, env, logs / "up.log", cwd=tmp_path)]
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(api.up, 60, "optimlab up")
        job_id = api.submit(SPEC)["id"]
        api.wait_epochs(job_id, 3, timeout=60)
        ups[0].kill(signal.SIGINT)
        asked = time.monotonic()
        ups[0].popen.wait(30)
        exited = time.monotonic() - asked
        print(f"optimlab up exited {exited:.2f} s after Ctrl-C with a job running")  # -s shows it
        assert ups[0].popen.returncode == 0
        assert exited < 6.0
        (said,) = [m.groups() for m in HANDED_BACK.finditer(ups[0].output())]
        assert (int(said[0]), int(said[2])) == (job_id, EPOCHS)
        at = int(said[1])
        released = job_row(home / "optimlab.db", job_id)
        assert (released["status"], released["enqueued_at"], released["worker"]) == ("queued", None, None)
        assert released["epochs_done"] == at >= 3
        assert checkpoint_epoch(home, job_id) == at, "checkpointed where it stopped, not at an older cadence"

        ups.append(Proc(command, env, logs / "up-2.log", cwd=tmp_path))
        wait_for(api.up, 60, "the restarted optimlab up")
        serving = time.monotonic()
        wait_for(lambda: api.job(job_id)["attempt"] == 2 and api.job(job_id)["status"] == "running", 30, "a claim")
        claimed = time.monotonic() - serving
        api.wait_epochs(job_id, at + 1, timeout=30)
        trained = time.monotonic() - serving
        print(f"after the restart: job running again {claimed:.2f} s, a new epoch {trained:.2f} s after serving")
        assert claimed < 15.0  # the 5 s, with slack: no stale-heartbeat wait (60 s here)
        (done,) = assert_invariants(f"sqlite:///{home / 'optimlab.db'}", ups, timeout=90)
        assert done["attempt"] == 2
        assert api.job(job_id)["summary"]["resumed_from_epoch"] == at
    finally:
        stop_all(ups)


def test_a_second_ctrl_c_kills_the_worker_at_once(tmp_path: Path, logs: Path) -> None:
    """A first Ctrl-C while the worker waits for the end of a long epoch (within the grace of a
    60 s stop bound), then a second: `up` kills the worker instead of waiting, says the job was
    left running (the stale-heartbeat path requeues it after the next start) and exits 130."""
    home, port = tmp_path / "home", free_port()
    env = service_env(OPTIMLAB_HOME=str(home), OPTIMLAB_STOP_WITHIN_S="60", OPTIMLAB_STALE_AFTER_S="120")
    command = optimlab("up", "--port", str(port), "--workers", "1")
    ups = [Proc(command, env, logs / "up.log", cwd=tmp_path)]
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(api.up, 60, "optimlab up")
        job_id = api.submit(slow_spec(EPOCHS, n_samples=1_048_576))["id"]  # epochs of several seconds
        api.wait_epochs(job_id, 1, timeout=60)  # in its second epoch: the first Ctrl-C waits for its end
        ups[0].kill(signal.SIGINT)
        time.sleep(0.5)
        ups[0].kill(signal.SIGINT)
        asked = time.monotonic()
        ups[0].popen.wait(30)
        exited = time.monotonic() - asked
        print(f"optimlab up exited {exited:.2f} s after the second Ctrl-C")
        assert ups[0].popen.returncode == 130
        assert exited < 6.0
        assert f"job(s) {job_id} left running by killed workers" in ups[0].output()
        assert job_row(home / "optimlab.db", job_id)["status"] == "running"
    finally:
        stop_all(ups)


def test_sigterm_of_a_deployed_worker_hands_its_job_back_to_another(deployment: Deployment) -> None:
    """SIGTERM to a prefork worker's main process, as `docker stop` and Kubernetes send it: the
    worker exits promptly with code 0, the job goes back to the queue with a checkpoint of its
    last epoch, and the other worker resumes it from there (no stale-heartbeat wait)."""
    api, home = deployment.api, Path(deployment.env["OPTIMLAB_HOME"])
    job_id = api.submit(SPEC)["id"]
    running = api.wait_epochs(job_id, 3, timeout=60)
    victim = deployment.worker_of(running)
    victim.signals.append((time.time(), signal.SIGTERM))
    os.kill(victim.popen.pid, signal.SIGTERM)  # the main process only, as a container runtime does
    asked = time.monotonic()
    try:
        victim.popen.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit within 30 s of SIGTERM")
    exited = time.monotonic() - asked
    (at,) = [
        int(m.group(1)) for m in re.finditer(rf"job {job_id}: handing back at epoch (\d+)/{EPOCHS}", victim.output())
    ]
    print(f"deployed worker exited {exited:.2f} s after SIGTERM with a job running, handed back at epoch {at}")
    assert victim.popen.returncode == 0
    assert exited < 10.0  # OPTIMLAB_STOP_WITHIN_S (5 s) with slack
    assert "handed back to the queue" in victim.output()
    deployment.workers.remove(victim)
    deployment.gone.append(victim)
    (done,) = assert_invariants(deployment.database_url, deployment.every_worker(), timeout=90)
    assert done["attempt"] == 2
    finished = api.job(job_id)
    assert finished["worker"] != running["worker"]
    assert finished["summary"]["resumed_from_epoch"] == at >= 3, "resumed where the hand-back stopped"
    assert not (home / "checkpoints" / str(job_id)).exists(), "the finished job's checkpoint is deleted"
