"""The dashboard's browser tests: headless Debian Chromium driven by Playwright against a real
`optimlab up` with two workers.

Without Playwright or /usr/bin/chromium the tests are skipped, except under CI=true, where a
missing one fails the run (.ci/install.sh installs Playwright's Python API with the dev extra,
.ci/servers.sh Debian's chromium; Playwright never downloads a browser of its own).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.conftest import Api, Proc, optimlab, service_env, stop_all, wait_for
from tests.servers import _missing, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

ADMIN_TOKEN = "dashboard-admin-token-0123456789"


def _chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Playwright's Python API (the dev extra)")
    from bench.dashboard_perf import CHROMIUM

    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"Chromium ({CHROMIUM}, Debian's chromium package)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (each test gets a fresh context from ``dashboard``)."""
    _chromium()
    from playwright.sync_api import sync_playwright

    from bench.dashboard_perf import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@dataclass
class Service:
    """A running `optimlab up`: its API client, base URL, environment and log folder."""

    api: Api
    url: str
    env: dict[str, str]
    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.api.http.post(path, json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_sweep_done(self, sweep_id: int, timeout: float = 120) -> dict[str, Any]:
        return wait_for(
            lambda: sweep if (sweep := self.get(f"/v1/sweeps/{sweep_id}"))["done"] else None,
            timeout,
            f"sweep {sweep_id} to be done",
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`optimlab up --workers 2` on a free port, shared by the module's tests."""
    _chromium()  # no service to start for tests that will be skipped
    root = tmp_path_factory.mktemp("dashboard")
    logs = root / "logs"
    logs.mkdir()
    port = free_port()
    env = service_env(OPTIMLAB_HOME=str(root / "home"))
    started = time.monotonic()
    up = Proc(optimlab("up", "--port", str(port), "--workers", "2"), env, logs / "up.log", cwd=root)
    running = Service(Api(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}", env, logs, [up])
    try:
        wait_for(running.api.up, 60, "optimlab up to answer /healthz")
        wait_for(lambda: up.output().count(" ready.") >= 2, 90, "both workers to be ready")
        print(f"\noptimlab up with two workers ready in {time.monotonic() - started:.1f} s")
        yield running
    finally:
        stop_all(running.procs)


@pytest.fixture(scope="module")
def keyed(service: Service) -> Iterator[Service]:
    """An `optimlab api` with OPTIMLAB_AUTH=keys and a static admin token, on ``service``'s
    database and broker (its jobs run on the same workers)."""
    port = free_port()
    env = service.env | {"OPTIMLAB_AUTH": "keys", "OPTIMLAB_API_KEYS": ADMIN_TOKEN}
    proc = Proc(optimlab("api", "--port", str(port)), env, service.logs / "api-keys.log")
    keyed = Service(Api(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}", env, service.logs, [proc])
    try:
        wait_for(keyed.api.up, 60, "the keyed API to answer /healthz")
        yield keyed
    finally:
        stop_all([proc])


@pytest.fixture(scope="module")
def big_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(base URL, sweep id) of bench/dashboard_perf.py's finished 500-job x 100-epoch sweep,
    written straight into the database an `optimlab api` of its own serves."""
    from bench.dashboard_perf import build_sweep

    with ExitStack() as stack:
        started = time.monotonic()
        built = build_sweep(stack, tmp_path_factory.mktemp("big-sweep"))
        print(f"\n500 jobs x 100 epochs written in {time.monotonic() - started:.1f} s")
        yield built


@dataclass
class Dashboard:
    """A fresh browser context and page on a service: what the page requested, and any script
    error it raised (``open`` fails on one)."""

    page: Page
    base_url: str
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str, *, ready: bool = True) -> Page:
        """Go to ``path``; with ``ready``, wait for the page's data-ready and its ready mark."""
        from bench.dashboard_perf import wait_ready

        self.page.goto(self.base_url + path)
        if ready:
            wait_ready(self.page)
            assert self.page.evaluate("performance.getEntriesByName('optimlab-ready').length") >= 1
        assert not self.errors, f"script errors on {path}: {self.errors}"
        return self.page

    def attribute(self, selector: str, name: str) -> str | None:
        return self.page.locator(selector).get_attribute(name)

    def cancel(self, selector: str) -> None:
        """Click a cancel button (the pages ask no confirmation)."""
        self.page.locator(selector).click()


@pytest.fixture
def dashboard(browser: Browser, service: Service) -> Iterator[Dashboard]:
    """A fresh context (empty sessionStorage and cache) on ``service``, 1280 x 900."""
    from bench.dashboard_perf import VIEWPORT

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    page = context.new_page()
    opened = Dashboard(page, service.url)
    page.on("request", lambda request: opened.requests.append(request))
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the tail of each service log."""
    report = yield
    running = getattr(item, "funcargs", {}).get("service")
    if report.failed and isinstance(running, Service):
        for log in sorted(running.logs.glob("*.log")):
            report.sections.append((f"log {log.name}", log.read_text(errors="replace")[-6000:]))
    return report


def catalog_names(url: str) -> set[str]:
    """Every name the catalog lists (optimizers, schedulers, models, ...)."""
    catalog = httpx.get(f"{url}/v1/catalog", timeout=30).json()
    return {entry["name"] for entries in catalog.values() for entry in entries}
