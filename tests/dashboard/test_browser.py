"""The dashboard end to end, in headless Chromium against a real `optimlab up` with two workers:
a finished 60-job sweep's page, a running job's curve growing, both cancel buttons, the pages
with keys on, the catalog and compare pages, and the page of a 500-job x 100-epoch sweep (its
load timings printed, never asserted: this machine is shared and noisy).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from tests.conftest import digits_spec
from tests.dashboard.conftest import ADMIN_TOKEN, Dashboard, Service, catalog_names
from tests.integration.conftest import slow_spec, wait_for

pytestmark = pytest.mark.slow

OPTIMIZERS = ["sgd", "adam", "rmsprop", "adagrad"]
LRS = [0.03, 0.01, 0.003]
SEEDS = [0, 1, 2, 3, 4]


def sixty_job_sweep() -> dict[str, Any]:
    """12 configurations (4 optimizers x 3 learning rates) x 5 seeds of a small digits MLP, packed."""
    return {
        "name": "dashboard: 12 configurations x 5 seeds",
        "base": digits_spec({"name": "sgd", "lr": 0.01}, epochs=3),
        "grid": {"optimizer.name": OPTIMIZERS, "optimizer.lr": LRS},
        "seeds": SEEDS,
        "execution": "packed",
    }


@pytest.fixture(scope="module")
def finished_sweep(service: Service) -> dict[str, Any]:
    """The 60-job sweep, done (every job succeeded)."""
    started = time.monotonic()
    sweep = service.post("/v1/sweeps", sixty_job_sweep())
    assert sweep["n_jobs"] == 60
    done = service.wait_sweep_done(sweep["id"])
    print(f"\n60-job sweep done in {time.monotonic() - started:.1f} s: {done['counts']}")
    assert done["counts"]["succeeded"] == 60
    return done


def running_job(service: Service, epochs: int) -> dict[str, Any]:
    """A job of many short epochs (~0.05 s each here), once a worker runs it and an epoch is stored."""
    job = service.post("/v1/jobs", {"spec": slow_spec(epochs, n_samples=8192), "cache": False})
    service.api.wait_epochs(job["id"], 1, timeout=90)
    return job


def test_a_finished_60_job_sweep_shows_its_leaderboard_and_a_band_per_configuration(
    service: Service, finished_sweep: dict[str, Any], dashboard: Dashboard
) -> None:
    sweep_id = finished_sweep["id"]
    board = service.get(f"/v1/sweeps/{sweep_id}/leaderboard")
    hashes = {row["config_hash"] for row in board["rows"]}
    assert len(hashes) == 12

    listing = dashboard.open("/")
    assert listing.locator(f'table#sweeps tr[data-sweep-id="{sweep_id}"]').count() == 1

    page = dashboard.open(f"/sweeps/{sweep_id}")
    assert page.locator("body").get_attribute("data-page") == "sweep"
    rows = page.locator("table#leaderboard tr[data-config]")
    assert {rows.nth(i).get_attribute("data-config") for i in range(rows.count())} == hashes
    assert rows.count() == 12
    texts = [rows.nth(i).text_content() or "" for i in range(12)]
    assert all("±" in text for text in texts), texts  # mean ± CI
    assert all("5/5" in text for text in texts), texts  # n = 5 of 5 seeds
    assert dashboard.attribute("#curves", "data-bands") == "12"
    assert int(dashboard.attribute("#curves", "data-points") or 0) > 0
    page.wait_for_selector('#sweep-status[data-done="1"]')
    assert "60" in (page.locator("#sweep-status").text_content() or "")
    page.wait_for_selector("#compare[data-verdict]")  # the panels filled in, none failed
    page.wait_for_selector("#lr-sensitivity[data-diverged]")
    page.wait_for_selector("#budget svg, #budget canvas")
    for panel in ("#lr-sensitivity", "#compare", "#budget", "#trials"):
        assert page.locator(f"{panel} .loading, {panel} .load-failed").count() == 0, panel


def test_a_running_jobs_curve_grows_between_two_checks(service: Service, dashboard: Dashboard) -> None:
    job = running_job(service, epochs=2000)  # cancelled once checked
    try:
        page = dashboard.open(f"/jobs/{job['id']}")
        assert dashboard.attribute("#job-status", "data-status") == "running"
        assert "synthetic_regression" in (page.locator("pre#spec").text_content() or "")
        first = int(dashboard.attribute("#job-curve", "data-points") or 0)
        checked = time.monotonic()
        page.wait_for_function(
            "first => Number(document.querySelector('#job-curve').dataset.points) > first", arg=first
        )
        second = int(dashboard.attribute("#job-curve", "data-points") or 0)
        stored = service.api.job(job["id"])["summary"]["epochs_done"]
        print(
            f"\njob curve: {first} then {second} epochs drawn, {time.monotonic() - checked:.1f} s apart ({stored} stored)"
        )
        assert second > first
        assert second <= stored
    finally:
        service.api.http.post(f"/v1/jobs/{job['id']}/cancel")


def test_the_cancel_button_cancels_a_running_job(service: Service, dashboard: Dashboard) -> None:
    job = running_job(service, epochs=2000)
    page = dashboard.open(f"/jobs/{job['id']}")
    dashboard.cancel("button#cancel-job")
    service.api.wait_status(job["id"], "cancelled", timeout=60)
    page.wait_for_selector('#job-status[data-status="cancelled"]')


def test_the_cancel_button_cancels_a_sweep(service: Service, dashboard: Dashboard) -> None:
    sweep = service.post(
        "/v1/sweeps",
        {
            "name": "dashboard: to cancel",
            "base": slow_spec(2000, n_samples=8192),
            "grid": {"optimizer.lr": [0.01, 0.02, 0.03, 0.04]},
            "execution": "separate",
            "cache": False,
        },
    )
    wait_for(lambda: service.get(f"/v1/sweeps/{sweep['id']}")["counts"]["running"], 90, "a job of the sweep to run")
    page = dashboard.open(f"/sweeps/{sweep['id']}")
    dashboard.cancel("button#cancel-sweep")
    done = service.wait_sweep_done(sweep["id"], timeout=60)
    assert done["counts"]["cancelled"] == 4, done["counts"]
    page.wait_for_selector('#sweep-status[data-done="1"]')
    assert "cancelled" in (page.locator("#sweep-status").text_content() or "")


def test_with_keys_on_the_page_asks_for_a_key_and_never_puts_it_in_a_url(keyed: Service, dashboard: Dashboard) -> None:
    alice = keyed.post("/v1/keys", {"owner": "alice", "name": "alice's"}, token=ADMIN_TOKEN)["token"]
    bob = keyed.post("/v1/keys", {"owner": "bob", "name": "bob's"}, token=ADMIN_TOKEN)["token"]
    small = {"base": digits_spec({"name": "sgd", "lr": 0.01}), "grid": {"optimizer.lr": [0.1, 0.01]}}
    mine = keyed.post("/v1/sweeps", small | {"name": "alice's sweep"}, token=alice)
    theirs = keyed.post("/v1/sweeps", small | {"name": "bob's sweep"}, token=bob)
    dashboard.base_url = keyed.url

    page = dashboard.open("/", ready=False)
    page.wait_for_selector("#key-form", state="visible")
    page.fill("input#api-key", alice)
    page.click("button#key-save")
    page.wait_for_function("key => JSON.stringify(Object.assign({}, sessionStorage)).includes(key)", arg=alice)
    assert alice not in page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    dashboard.open("/", ready=False)  # the key outlives a navigation: kept in sessionStorage
    page.wait_for_selector(f'table#sweeps tr[data-sweep-id="{mine["id"]}"]')
    assert page.locator(f'table#sweeps tr[data-sweep-id="{theirs["id"]}"]').count() == 0
    assert page.locator("#key-form").is_hidden()

    dashboard.open(f"/sweeps/{mine['id']}")
    assert page.locator("table#leaderboard tr[data-config]").count() == 2
    dashboard.open(f"/sweeps/{theirs['id']}", ready=False)
    page.wait_for_function("() => (document.querySelector('#error')?.textContent || '').trim() !== ''")
    assert page.locator("table#leaderboard tr[data-config]").count() == 0

    urls = [request.url for request in dashboard.requests]
    assert not [url for url in urls if alice in url or bob in url]
    api_calls = [r for r in dashboard.requests if "/v1/" in r.url]
    assert any(r.headers.get("authorization") == f"Bearer {alice}" for r in api_calls), urls


def test_the_catalog_and_compare_pages_render(
    service: Service, finished_sweep: dict[str, Any], dashboard: Dashboard
) -> None:
    page = dashboard.open("/catalog")
    rows = page.locator("table#catalog tr[data-kind][data-name]")
    drawn = {rows.nth(i).get_attribute("data-name") for i in range(rows.count())}
    assert {"sgd", "adam", "mlp", "digits"} <= drawn
    assert drawn <= catalog_names(service.url)

    jobs = service.get("/v1/jobs", sweep_id=finished_sweep["id"], limit=2)["items"]
    ids = [job["id"] for job in jobs]
    page = dashboard.open(f"/compare?jobs={ids[0]},{ids[1]}")
    assert int(dashboard.attribute("#compare-curves", "data-series") or 0) >= 2
    shown = page.locator("table#compare-table tr[data-job-id]")
    assert sorted(int(shown.nth(i).get_attribute("data-job-id") or 0) for i in range(shown.count())) == sorted(ids)


def test_a_500_job_sweep_page_is_ready_with_every_configuration(big_sweep: tuple[str, int], browser: Any) -> None:
    """Correctness only; the timings of five loads are printed (bench/dashboard_perf.py is the benchmark)."""
    from bench.dashboard_perf import CONFIGURATIONS, measure

    base_url, sweep_id = big_sweep
    loads = measure(browser, base_url, sweep_id, loads=5)
    for load in loads:
        assert (load.rows, load.bands) == (CONFIGURATIONS, CONFIGURATIONS)
    ready = [load.ready_ms for load in loads]
    print(f"sweep page ready p50 {statistics.median(ready):.0f} ms over {len(ready)} loads (500 jobs x 100 epochs)")
