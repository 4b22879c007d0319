"""`optimlab up`: API, worker processes, SQLite and the filesystem broker, as a user starts it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import Api, Proc, assert_every_epoch_once, slow_spec, wait_for

pytestmark = pytest.mark.slow


def test_up_serves_and_trains_the_seed_spec(embedded: tuple[Api, Proc, float]) -> None:
    api, _, healthy_after = embedded
    print(f"/healthz answered {healthy_after:.2f} s after `optimlab up` started")
    assert api.http.get("/readyz").status_code == 200
    job = api.submit(slow_spec(30, n_samples=8192))
    assert job["status"] == "queued"
    current, seen_running_epochs = api.watch(job["id"])
    assert current["status"] == "succeeded", current
    assert any(0 < epoch < 30 for epoch in seen_running_epochs), "progress was visible while running"
    assert_every_epoch_once(api.metrics(job["id"]), 30)
    assert current["summary"]["epochs_done"] == 30
    assert current["device"] == "cpu"


def test_cancel_queued_and_running(embedded: tuple[Api, Proc, float]) -> None:
    api, _, _ = embedded
    running = api.submit(slow_spec(2000))
    api.wait_epochs(running["id"], 2)
    queued = api.submit(slow_spec(5))  # the one worker is busy: this waits in the queue
    assert api.http.post(f"/v1/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    assert api.http.post(f"/v1/jobs/{running['id']}/cancel").status_code == 200
    stopped = api.wait_status(running["id"], "cancelled", timeout=60)
    assert 2 <= stopped["summary"]["epochs_done"] < 2000
    assert_every_epoch_once(api.metrics(running["id"]), stopped["summary"]["epochs_done"])
    # The worker moves on; the cancelled job's message, when it arrives, runs nothing.
    after = api.submit(slow_spec(2, n_samples=512))
    api.wait_status(after["id"], "succeeded")
    never = api.job(queued["id"])
    assert (never["status"], never["attempt"], never["started_at"]) == ("cancelled", 0, None)
    assert api.metrics(queued["id"]) == []


def test_a_killed_worker_is_restarted_and_the_job_resumes(embedded: tuple[Api, Proc, float], tmp_path: Path) -> None:
    api, _, _ = embedded
    home = tmp_path / "home"
    job = api.submit(slow_spec(40))
    checkpoint = home / "checkpoints" / str(job["id"]) / "checkpoint.pt"
    wait_for(checkpoint.exists, 60, "the first checkpoint (OPTIMLAB_CHECKPOINT_EVERY_S, 1 s by default)")
    running = api.job(job["id"])
    assert running["status"] == "running"
    child_pid = int(running["worker"].rsplit(":", 1)[1])
    os.killpg(os.getpgid(child_pid), signal.SIGKILL)  # the worker and its pool child, mid-epoch
    done = api.wait_status(job["id"], "succeeded", "failed", timeout=120)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    assert done["summary"]["resumed_from_epoch"] >= 1, "it resumed from its checkpoint, not from epoch 1"
    assert_every_epoch_once(api.metrics(job["id"]), 40)
