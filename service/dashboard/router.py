"""The dashboard's pages (``/``, ``/sweeps/{id}``, ``/jobs/{id}``, ``/compare``, ``/catalog``) and
its static files (``/static``).

A page is a shell: its layout and the ids its script fills, plus the ids it was asked for as
``data-`` attributes; the script fetches everything else from /v1 with the browser's key. So the
shells and static files are served without a key, and leak nothing: a wrong id is a page whose
requests answer 404, and a path whose id is no id at all (``/jobs/abc``, ``/sweeps/0``) is an
HTML page that says so, with status 404. Static URLs carry ``?v=`` the hash of the static files, and only a request
naming the current hash is cached for a year: an upgrade changes every URL, and a URL without it
revalidates.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import Response
from starlette.types import Scope

from service.schemas import MAX_ID

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
UPLOT = "vendor/uplot-1.6.32"
LONG_CACHE = "public, max-age=31536000, immutable"
SECURITY_HEADERS = {
    # Scripts and styles from this server only (no inline script: a page's ids travel as data-
    # attributes); uPlot sets element styles through the DOM, which style-src does not govern.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


@cache
def asset_version() -> str:
    """A short hash of every static file's path and bytes: the ``?v=`` of this build's URLs."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def static_url(path: str) -> str:
    """The versioned URL of a static file (``css/dashboard.css``)."""
    return f"/static/{path}?v={asset_version()}"


templates.env.globals.update(static=static_url, uplot=UPLOT, max_id=MAX_ID)


class DashboardStatic(StaticFiles):
    """Static files, cached for a year when the URL names the current version (see the module)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            versioned = f"v={asset_version()}" in scope.get("query_string", b"").decode("latin-1").split("&")
            response.headers["Cache-Control"] = LONG_CACHE if versioned else "no-cache"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def static_files() -> DashboardStatic:
    """The app mounts this at ``/static``."""
    return DashboardStatic(directory=STATIC_DIR)


def _page(request: Request, template: str, page: str, status_code: int = 200, **ids: Any) -> HTMLResponse:
    context = {"page": page, "ids": ids}
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _object_page(request: Request, template: str, page: str, kind: str, raw: str) -> HTMLResponse:
    """An object's page, or (for a path that names no id: ``abc``, ``-1``, ``0``, beyond
    ``MAX_ID``) the not-found page with status 404, as HTML rather than /v1's JSON 422."""
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_ID)) and 1 <= int(raw) <= MAX_ID:
        return _page(request, template, page, **{f"{kind}_id": int(raw)})
    return _page(request, "not_found.html", "not-found", status_code=404, kind=kind, asked=raw)


@router.get("/", response_class=HTMLResponse)
def sweeps_page(request: Request) -> HTMLResponse:
    """Every sweep the key may see, with its counts and best configuration so far."""
    return _page(request, "sweeps.html", "sweeps")


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: str) -> HTMLResponse:
    """One sweep: leaderboard, curves per configuration, lr sensitivity, verdicts."""
    return _object_page(request, "sweep.html", "sweep", "sweep", sweep_id)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    """One job: status, spec, attempts, and its curves growing while it runs."""
    return _object_page(request, "job.html", "job", "job", job_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    """Jobs (``?jobs=1,2``) or a sweep's configurations (``?sweep=ID&configs=H1,H2``) overlaid;
    the script reads the query itself."""
    return _page(request, "compare.html", "compare")


@router.get("/catalog", response_class=HTMLResponse)
def catalog_page(request: Request) -> HTMLResponse:
    """What a spec may name, with each entry's flags and parameter schema."""
    return _page(request, "catalog.html", "catalog")
