"""The dashboard without a browser: every page is a shell with its scripts, static files are
versioned and cached for a year, the vendored chart library ships with its license, shells and
scripts need no key while /v1 does, and nothing is loaded from another host (it works offline).
The browser itself is tests/dashboard/test_browser.py's."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.dashboard.router import STATIC_DIR, UPLOT, asset_version
from service.db.migrate import upgrade
from tests.conftest import service_settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "service" / "dashboard"
PAGES = [
    ("/", "sweeps", "sweeps.js"),
    ("/sweeps/7", "sweep", "sweep.js"),
    ("/jobs/9", "job", "job.js"),
    ("/compare?jobs=1,2", "compare", "compare.js"),
    ("/compare?sweep=3&configs=abcd,ef01", "compare", "compare.js"),
    ("/catalog", "catalog", "catalog.js"),
]
TOKEN = "static-admin-token-0123456789"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name createElementNS needs, never requested


def _client(tmp_path: Path, **overrides: object) -> TestClient:
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    upgrade(url)
    return TestClient(create_app(service_settings(tmp_path, url, **overrides)))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path) as client:
        yield client


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, auth="keys", api_keys=[TOKEN]) as client:
        yield client


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


@pytest.mark.parametrize(("path", "page", "script"), PAGES)
def test_every_page_is_a_shell_with_its_scripts(client: TestClient, path: str, page: str, script: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert f'data-page="{page}"' in html
    version = asset_version()
    for name in ("js/common.js", "js/configs.js", "js/charts.js", f"js/{script}", f"{UPLOT}/uPlot.iife.min.js"):
        assert f'<script defer src="/static/{name}?v={version}"></script>' in html
    for dom_id in ('id="key-form"', 'id="api-key"', 'id="key-save"', 'id="error"'):
        assert dom_id in html
    assert re.search(r'<form id="key-form"[^>]* hidden>', html), "the key form shows only after a 401"
    # No inline script: the Content-Security-Policy allows this server's files only.
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))


def test_a_page_names_its_object_for_its_script(client: TestClient) -> None:
    assert 'data-sweep-id="7"' in client.get("/sweeps/7").text
    assert 'data-job-id="9"' in client.get("/jobs/9").text
    sweep = client.get("/sweeps/7").text
    for dom_id in ("sweep-status", "cancel-sweep", "leaderboard", "curves", "lr-sensitivity", "compare", "trials"):
        assert f'id="{dom_id}"' in sweep
    assert 'id="budget"' in sweep
    for dom_id in ("job-status", "cancel-job", "spec", "job-curve"):
        assert f'id="{dom_id}"' in client.get("/jobs/9").text


@pytest.mark.parametrize(
    "path", ["/sweeps/0", "/sweeps/abc", "/jobs/-1", "/jobs/abc", "/jobs/99999999999999999999", "/jobs/2147483648"]
)
def test_a_path_that_names_no_id_is_an_html_not_found_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="not-found"' in response.text
    assert "There is no" in response.text
    assert "{" not in response.text.split("<main>", 1)[1]  # no JSON body


def test_the_not_found_page_escapes_what_was_asked(client: TestClient) -> None:
    html = client.get("/jobs/%3Cimg%20src=x%20onerror=alert(1)%3E").text
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_static_files_are_versioned_and_cached_for_a_year(client: TestClient) -> None:
    assets = {url for path, _, _ in PAGES for url in _assets(client.get(path).text)}
    assert len(assets) >= 10
    for url in assets:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable", url
        kind = "javascript" if url.split("?")[0].endswith(".js") else "css"
        assert kind in response.headers["content-type"], url
    # Without the current version a URL may name an older file: the browser revalidates it.
    unversioned = client.get("/static/js/common.js")
    assert unversioned.status_code == 200
    assert unversioned.headers["cache-control"] == "no-cache"
    assert client.get("/static/js/common.js?v=0123456789ab").headers["cache-control"] == "no-cache"
    assert client.get("/static/js/nothing.js").status_code == 404


def test_uplot_is_vendored_with_its_version_and_license() -> None:
    folder = STATIC_DIR / UPLOT
    script = (folder / "uPlot.iife.min.js").read_text()
    assert script.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert (folder / "uPlot.min.css").read_text().startswith(".uplot")
    license_text = (folder / "LICENSE").read_text()
    assert "The MIT License" in license_text
    assert "Leon Sorokin" in license_text
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE", "1.6.32", "MIT"):
        assert name in readme
    assert "https://registry.npmjs.org/uplot/-/uplot-1.6.32.tgz" in readme


def test_pages_and_static_files_need_no_key_while_v1_does(keyed: TestClient) -> None:
    for path, page, _ in PAGES:
        response = keyed.get(path)
        assert response.status_code == 200, path
        assert f'data-page="{page}"' in response.text
        for url in _assets(response.text):
            assert keyed.get(url).status_code == 200, url
    for path in ("/v1/sweeps", "/v1/sweeps/7", "/v1/jobs/9", "/v1/catalog"):
        assert keyed.get(path).status_code == 401, path
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert keyed.get("/v1/sweeps", headers=headers).status_code == 200


def _own_files() -> list[Path]:
    """Templates and static files, the vendored ones excepted."""
    files = [*DASHBOARD.joinpath("templates").rglob("*"), *STATIC_DIR.rglob("*")]
    vendor = STATIC_DIR / "vendor"
    return [f for f in files if f.is_file() and vendor not in f.parents]


def test_nothing_is_loaded_from_another_host() -> None:
    """Offline: no template or script of ours names an http(s) URL (the vendored README cites
    where its files came from; uPlot's own source only names its project in a comment)."""
    files = _own_files()
    assert len(files) >= 10
    for path in files:
        urls = set(re.findall(r"https?://[^\s\"'`)<>]+", path.read_text())) - {SVG_NAMESPACE}
        assert not urls, f"{path.relative_to(ROOT)} names {urls}"
    uplot = (STATIC_DIR / UPLOT / "uPlot.iife.min.js").read_text()
    assert set(re.findall(r"https?://[^\s\"'`)<>*]+", uplot)) <= {"https://github.com/leeoniya/uPlot", SVG_NAMESPACE}


def test_the_wheel_ships_every_template_and_static_file() -> None:
    """pyproject's package-data globs cover each file an installed dashboard serves."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service.dashboard"]
    shipped = {path for pattern in patterns for path in DASHBOARD.glob(pattern) if path.is_file()}
    wanted = {p for p in [*DASHBOARD.joinpath("templates").rglob("*"), *STATIC_DIR.rglob("*")] if p.is_file()}
    assert wanted <= shipped, sorted(str(p.relative_to(DASHBOARD)) for p in wanted - shipped)
