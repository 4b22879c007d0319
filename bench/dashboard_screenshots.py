"""The README's dashboard screenshots: the sweep, job and compare pages of a realistic sweep.

Starts `optimlab up` with two workers in a temporary home, runs a 4 optimizers x 4 learning rates
x 3 seeds sweep of an MLP on digits (the largest learning rate diverges for some optimizers, as
in a real first sweep), and saves what headless Chromium shows at 1280 x 900:

    docs/dashboard-sweep.png    the sweep page (leaderboard, seed bands, lr sensitivity, verdicts)
    docs/dashboard-job.png      the best configuration's seed-0 job (spec, status, curve)
    docs/dashboard-compare.png  the best job of each optimizer, overlaid

    python bench/dashboard_screenshots.py [--out docs] [--epochs 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _harness import api_client, service_env, start, wait_workers_ready  # noqa: E402
from dashboard_perf import VIEWPORT, launch_chromium, wait_ready  # noqa: E402

from tests.servers import free_port  # noqa: E402

OPTIMIZERS = ["sgd", "adam", "rmsprop", "adagrad"]
LRS = [1.0, 0.1, 0.01, 0.001]


def sweep_body(epochs: int) -> dict[str, Any]:
    """48 jobs: 16 configurations x 3 seeds of a one-hidden-layer MLP (128 wide) on digits."""
    return {
        "name": "digits MLP: 4 optimizers x 4 learning rates",
        "base": {
            "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
            "dataset": {"name": "digits"},
            "loss": "cross_entropy",
            "optimizer": {"name": "sgd", "lr": 0.01},
            "epochs": epochs,
            "batch_size": 64,
            "device": "cpu",
        },
        "grid": {"optimizer.name": OPTIMIZERS, "optimizer.lr": LRS},
        "seeds": [0, 1, 2],
    }


def run_sweep(http: httpx.Client, epochs: int) -> int:
    """Create the sweep and wait until it is done; returns its id."""
    created = http.post("/v1/sweeps", json=sweep_body(epochs))
    created.raise_for_status()
    sweep_id = int(created.json()["id"])
    started = time.monotonic()
    while not (sweep := http.get(f"/v1/sweeps/{sweep_id}").json())["done"]:
        if time.monotonic() - started > 600:
            raise RuntimeError(f"sweep {sweep_id} not done after 600 s: {sweep['counts']}")
        time.sleep(0.5)
    print(f"sweep {sweep_id} done in {time.monotonic() - started:.1f} s: {sweep['counts']}")
    return sweep_id


def best_jobs(http: httpx.Client, sweep_id: int) -> list[int]:
    """Each optimizer's best configuration's seed-0 job, best optimizer first."""
    rows = http.get(f"/v1/sweeps/{sweep_id}/leaderboard").json()["rows"]
    jobs = http.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}).json()["items"]
    chosen: list[int] = []
    seen: set[str] = set()
    for row in rows:
        name = row["config"]["optimizer.name"]
        if name in seen:
            continue
        seen.add(name)
        lr = row["config"]["optimizer.lr"]
        chosen += [
            job["id"]
            for job in jobs
            if job["spec"]["optimizer"]["name"] == name
            and job["spec"]["optimizer"]["lr"] == lr
            and job["spec"]["seed"] == 0
        ]
    return chosen


def screenshot(browser: Any, url: str, path: Path) -> None:
    """Open ``url`` in a fresh 1280 x 900 context, wait for ready and save a full-page PNG."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        wait_ready(page)
        page.wait_for_timeout(300)  # let the charts' last frame paint
        page.screenshot(path=str(path), full_page=True)
        print(f"{path}: {url}" + (f" (script errors: {errors})" if errors else ""))
    finally:
        context.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-screens-")))
        port = free_port()
        env = service_env(OPTIMLAB_HOME=str(home / "home"))
        start(stack, ["up", "--port", str(port), "--workers", "2"], env, home / "up.log")
        http = api_client(stack, port)
        wait_workers_ready(home / "up.log", 2)
        sweep_id = run_sweep(http, args.epochs)
        jobs = best_jobs(http, sweep_id)
        base = f"http://127.0.0.1:{port}"
        playwright = stack.enter_context(sync_playwright())
        browser = launch_chromium(playwright)
        stack.callback(browser.close)
        screenshot(browser, f"{base}/sweeps/{sweep_id}", args.out / "dashboard-sweep.png")
        screenshot(browser, f"{base}/jobs/{jobs[0]}", args.out / "dashboard-job.png")
        screenshot(browser, f"{base}/compare?jobs={','.join(map(str, jobs))}", args.out / "dashboard-compare.png")


if __name__ == "__main__":
    main()
