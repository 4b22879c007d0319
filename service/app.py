"""The FastAPI application: its lifespan (database engine, Celery producer, dispatcher), the one
mapping of errors to HTTP, and the domain routers under /v1. Imports no torch: specs are
validated with the engine's torch-free schema, and only the dispatcher talks to the broker."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from optim_engine.spec.errors import UNKNOWN
from service import broker, events, metrics
from service.analysis.router import router as analysis_router
from service.auth.router import router as keys_router
from service.auth.service import check_configuration
from service.catalog.router import router as catalog_router
from service.dashboard.router import router as dashboard_router
from service.dashboard.router import static_files as dashboard_static
from service.db.session import make_engine, make_session_factory
from service.deps import get_principal
from service.dispatcher import Dispatcher
from service.errors import OptimlabError, validation_detail
from service.health.router import router as health_router
from service.jobs.router import router as jobs_router
from service.limits import BodyLimits, invalid_json_detail
from service.schemas import APP_ERROR_RESPONSES, ERROR_RESPONSES
from service.settings import Settings, get_settings
from service.sweeps.router import router as sweeps_router

log = logging.getLogger("optimlab.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database engine, Celery producer and dispatcher live as long as it does.
    An auth configuration that would open the API by mistake raises ``ConfigurationError`` here,
    before anything serves."""
    settings = settings or get_settings()
    check_configuration(settings)
    app = FastAPI(
        title="optimlab",
        version="0.1.0",
        description="Submit PyTorch training jobs and query every epoch's metrics.",
        lifespan=_lifespan,
        responses=APP_ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimits, max_body_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    metrics.install(app)  # after BodyLimits: its latency middleware is outermost
    _install_error_handlers(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(get_principal)], responses=ERROR_RESPONSES)
    for router in (jobs_router, sweeps_router, analysis_router, catalog_router, keys_router):
        v1.include_router(router)
    app.include_router(health_router)
    app.include_router(v1)
    # The dashboard's shells and scripts hold no data: served without a key (their /v1 requests carry it).
    app.include_router(dashboard_router)
    app.mount("/static", dashboard_static(), name="static")
    if settings.auth != "keys":
        app.openapi = _without_security(app)  # type: ignore[method-assign]
    return app


def _without_security(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document of an app with auth off: no operation needs a key, so none declares
    one (a declared bearer scheme would tell clients, and schemathesis, to expect 401s)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.pop("security", None)
            document.get("components", {}).pop("securitySchemes", None)
            return document
        return app.openapi_schema

    return openapi


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_engine(settings.resolved_database_url())
    app.state.session_factory = make_session_factory(engine)
    # Reads that never write (the long-poll's checks) do not queue behind writers on SQLite.
    reader = (
        make_engine(settings.resolved_database_url(), read_only=True) if engine.dialect.name == "sqlite" else engine
    )
    app.state.read_session_factory = make_session_factory(reader)
    app.state.celery = broker.make_celery(settings)
    app.state.dispatcher = Dispatcher(app.state.session_factory, app.state.celery, settings)
    app.state.dispatcher.start()
    app.state.events = events.Hub()  # workers' job events wake the long-polls (SQLite: one host)
    await app.state.events.start(settings.resolved_database_url())
    # The leaderboard's intervals (a sweep's `best`) and the analyses need scipy.stats (~0.5 s to
    # import): in the background now, not in the first request that finds a finished job.
    threading.Thread(target=importlib.import_module, args=("scipy.stats",), name="warm-scipy", daemon=True).start()
    try:
        yield
    finally:
        app.state.dispatcher.stop()
        app.state.events.close()
        engine.dispose()
        reader.dispose()


def _body_type(request: Request) -> Any:
    """The body model of the route that answered (its errors' JSON paths are read against it)."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    return body_field.field_info.annotation if body_field is not None else UNKNOWN


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (GET and POST /v1/jobs are two routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OptimlabError)
    async def _domain(_request: Request, exc: OptimlabError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if malformed := next((e for e in errors if e.get("type") == "json_invalid"), None):
            return JSONResponse({"error": "invalid_json", "detail": invalid_json_detail(malformed)}, status_code=400)
        detail = validation_detail(errors, _body_type(request))
        return JSONResponse({"error": "invalid_request", "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names the first route's methods only
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return JSONResponse({"error": "http_error", "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            log.warning("database unavailable: %s", exc.orig)
            detail = "The database is unreachable; nothing was changed. Retry later."
            return JSONResponse({"error": "database_unavailable", "detail": detail}, status_code=503)
        log.exception("database error")
        return JSONResponse({"error": "internal", "detail": "A database error occurred"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": "internal", "detail": type(exc).__name__}, status_code=500)
