"""How soon a 500-job x 100-epoch sweep's dashboard page is ready in headless Chromium.

The sweep is bench/sweep_queries.py's (50 configurations x 10 seeds, 100 epochs each: 50,000
epoch rows), written through the workers' own job operations into a fresh SQLite database that
an `optimlab api` serves. Each load opens the sweep page in a fresh browser context (an empty
HTTP cache and sessionStorage: a first visit) and reads the page's `optimlab-ready` mark, which
it sets once its first data is drawn and its handlers attached, along with the navigation
timing. Issue 16's target: ready within 1.5 s. Each load is checked too: ready, 50 leaderboard
rows and 50 bands. The last line is the figure:

    sweep page ready p50 X ms (500 jobs x 100 epochs)

    python bench/dashboard_perf.py [--loads 5]

The browser is Debian's chromium driven by Playwright (never a browser Playwright downloads);
the dashboard's browser tests (tests/dashboard/) and bench/dashboard_screenshots.py launch it
with ``launch_chromium`` and build this sweep with ``build_sweep``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # _harness and sweep_queries, also when imported by the tests
sys.path.insert(0, str(ROOT))

from _harness import api_client, migrated_database, service_env, start  # noqa: E402
from sweep_queries import EPOCHS, JOBS, populate  # noqa: E402

from tests.servers import free_port  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, ViewportSize

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium package (.ci/servers.sh installs it under CI=true)."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
CONFIGURATIONS = 50
"""sweep_queries' grid: 25 learning rates x 2 momenta (each over 10 seeds)."""

TIMINGS_JS = """() => {
    const ready = performance.getEntriesByName("optimlab-ready")[0];
    const nav = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    return {
        ready: ready ? ready.startTime : null,
        dom_content_loaded: nav.domContentLoadedEventEnd,
        load: nav.loadEventEnd,
        requests: resources.length,
        transferred: resources.reduce((sum, r) => sum + (r.transferSize || 0), 0),
    };
}"""
"""The page's own clock, from navigation start: the ready mark, DOMContentLoaded, the load event,
and what its scripts fetched (requests and bytes) by the time of reading."""


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Debian Chromium, with a fresh temporary profile (Playwright's ``launch`` makes one
    per browser and deletes it at close), nothing fetched in the background."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_ready(page: Page, timeout_ms: float = 60_000) -> None:
    """Wait for the page's ``data-ready`` (its first data drawn, handlers attached)."""
    page.wait_for_function("() => document.body && document.body.dataset.ready === '1'", timeout=timeout_ms)


def build_sweep(stack: ExitStack, home: Path) -> tuple[str, int]:
    """An `optimlab api` (no workers) on a fresh SQLite database in ``home`` holding one finished
    500-job x 100-epoch sweep; returns (its base URL, the sweep's id). Stopped with ``stack``."""
    database_url = migrated_database(stack, "sqlite", home)
    env = service_env(OPTIMLAB_DATABASE_URL=database_url, OPTIMLAB_HOME=str(home), OPTIMLAB_MAX_SWEEP_JOBS="1000")
    port = free_port()
    start(stack, ["api", "--port", str(port), "--log-level", "warning"], env, home / "api.log")
    http = api_client(stack, port)
    sweep_id = populate(http, database_url, sweeps=1)
    return f"http://127.0.0.1:{port}", sweep_id


@dataclass
class Load:
    """One load of the sweep page: the page's timings (ms) and what it drew."""

    ready_ms: float
    dom_content_loaded_ms: float
    load_ms: float
    requests: int
    transferred: int
    rows: int
    bands: int

    def line(self) -> str:
        return (
            f"ready {self.ready_ms:7.1f} ms, DOMContentLoaded {self.dom_content_loaded_ms:6.1f} ms, "
            f"load {self.load_ms:6.1f} ms, {self.requests} requests, {self.transferred / 1e6:.2f} MB; "
            f"{self.rows} leaderboard rows, {self.bands} bands"
        )


def load_sweep_page(browser: Browser, url: str) -> Load:
    """Open ``url`` in a fresh context, wait for ready, and read the timings and what was drawn."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(url)
        wait_ready(page)
        timings: dict[str, Any] = page.evaluate(TIMINGS_JS)
        if timings["ready"] is None:
            raise RuntimeError(f"{url}: data-ready is set but there is no optimlab-ready performance mark")
        return Load(
            ready_ms=float(timings["ready"]),
            dom_content_loaded_ms=float(timings["dom_content_loaded"]),
            load_ms=float(timings["load"]),
            requests=int(timings["requests"]),
            transferred=int(timings["transferred"]),
            rows=page.locator("table#leaderboard tr[data-config]").count(),
            bands=int(page.locator("#curves").get_attribute("data-bands") or -1),
        )
    finally:
        context.close()


def measure(browser: Browser, base_url: str, sweep_id: int, loads: int) -> list[Load]:
    """``loads`` loads of the sweep page, each printed as it comes."""
    results = []
    for index in range(loads):
        result = load_sweep_page(browser, f"{base_url}/sweeps/{sweep_id}")
        print(f"  load {index + 1}: {result.line()}", flush=True)
        results.append(result)
    return results


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-dashboard-")))
        started = time.perf_counter()
        base_url, sweep_id = build_sweep(stack, home)
        print(f"sweep {sweep_id}: {JOBS} jobs x {EPOCHS} epochs written in {time.perf_counter() - started:.1f} s")
        playwright = stack.enter_context(sync_playwright())
        browser = launch_chromium(playwright)
        stack.callback(browser.close)
        results = measure(browser, base_url, sweep_id, args.loads)
    wrong = [r for r in results if (r.rows, r.bands) != (CONFIGURATIONS, CONFIGURATIONS)]
    if wrong:
        raise SystemExit(f"the page drew {wrong[0].rows} rows and {wrong[0].bands} bands, not {CONFIGURATIONS} each")
    ready = [r.ready_ms for r in results]
    print(f"ready of each load (ms): {', '.join(f'{v:.0f}' for v in ready)}")
    print(f"sweep page ready p50 {statistics.median(ready):.0f} ms ({JOBS} jobs x {EPOCHS} epochs)")


if __name__ == "__main__":
    main()
