"""The example plugin package, pip-installed, through `optimlab up`: its model and dataset are in
the catalog, a job and a sweep of them train on a real worker, and a file that goes missing is a
422 at submission or a failed job with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Api, Proc, assert_every_epoch_once, optimlab, service_env, wait_for
from tests.optim_engine.test_model_plugins import EXAMPLE, digits_npz
from tests.servers import free_port

pytestmark = pytest.mark.slow

RESNET = {"name": "small_resnet", "params": {"width": 8, "blocks": 1}}


def _spec(path: str, epochs: int) -> dict[str, Any]:
    return {
        "model": RESNET,
        "dataset": {"name": "my_npz", "params": {"path": path}},
        "loss": "cross_entropy",
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": epochs,
        "batch_size": 64,
        "device": "cpu",
    }


def _install(tmp_path: Path) -> Path:
    """``pip install --target`` of the example package, from a copy so the build leaves nothing
    in the source tree; no build isolation, so no index is needed."""
    source, site = tmp_path / "plugin-src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(site), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return site


@pytest.fixture
def up_with_plugin(tmp_path: Path, logs: Path) -> Iterator[tuple[Api, Path]]:
    """`optimlab up` (one worker) that sees the installed plugin; yields (api, data root)."""
    site, data = _install(tmp_path), tmp_path / "data"
    digits_npz(data / "digits.npz")
    port = free_port()
    env = service_env(OPTIMLAB_HOME=str(tmp_path / "home"), OPTIMLAB_DATA_DIR=str(data))
    env["PYTHONPATH"] = f"{site}:{Path.cwd()}"
    proc = Proc(optimlab("up", "--port", str(port), "--workers", "1"), env, logs / "up.log", cwd=tmp_path)
    api = Api(f"http://127.0.0.1:{port}")
    wait_for(api.up, 60, "optimlab up to answer /healthz")
    yield api, data
    proc.stop()


def _sweep_done(api: Api, sweep_id: int) -> dict[str, Any] | None:
    sweep = api.http.get(f"/v1/sweeps/{sweep_id}").json()
    return sweep if sweep["done"] else None


def test_the_installed_example_plugin_trains_a_job_and_a_sweep(up_with_plugin: tuple[Api, Path]) -> None:
    api, data = up_with_plugin
    started = time.monotonic()
    catalog = api.http.get("/v1/catalog").json()
    model = next(e for e in catalog["models"] if e["name"] == "small_resnet")
    dataset = next(e for e in catalog["datasets"] if e["name"] == "my_npz")
    assert model["available"]
    assert set(model["params_schema"]["properties"]) == {"width", "blocks"}
    assert "path" in dataset["params_schema"]["required"]

    job = api.submit(_spec("digits.npz", 3), cache=False)
    done, _ = api.watch(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    rows = api.metrics(job["id"])
    assert_every_epoch_once(rows, 3)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_accuracy"] is not None

    body = {"base": _spec("digits.npz", 2), "grid": {"optimizer.lr": [0.01, 0.003]}, "seeds": [0, 1], "cache": False}
    created = api.http.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    # Queued behind the sweep on the one worker, its file gone before the worker gets to it.
    (data / "later.npz").write_bytes((data / "digits.npz").read_bytes())
    doomed = api.submit(_spec("later.npz", 1), cache=False)
    (data / "later.npz").unlink()

    sweep = wait_for(lambda: _sweep_done(api, created.json()["id"]), 60, "the sweep to finish")
    assert sweep["counts"]["succeeded"] == 4, sweep
    jobs = api.http.get("/v1/jobs", params={"sweep_id": sweep["id"], "limit": 10}).json()["items"]
    assert [job["pack_id"] for job in jobs] == [None] * 4, "a plugin model runs its trials separately"
    for job in jobs:
        assert_every_epoch_once(api.metrics(job["id"]), 2)

    failed = api.wait_status(doomed["id"], "failed", "succeeded", timeout=30)
    assert failed["status"] == "failed", failed
    assert "later.npz" in failed["error"]
    refused = api.http.post("/v1/jobs", json={"spec": _spec("missing.npz", 1)})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "spec", "dataset", "params", "path"]
    print(f"plugin job, sweep and failures took {time.monotonic() - started:.1f} s after /healthz")
