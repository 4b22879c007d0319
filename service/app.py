"""The FastAPI application: its lifespan (database engine, Celery producer, dispatcher), the one
mapping of errors to HTTP, and the domain routers under /v1. Imports no torch: specs are
validated with the engine's torch-free schema, and only the dispatcher talks to the broker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from optim_engine.spec import error_details
from service import broker
from service.catalog.router import router as catalog_router
from service.db.session import make_engine, make_session_factory
from service.deps import require_key
from service.dispatcher import Dispatcher
from service.errors import OptimlabError, field_error
from service.health.router import router as health_router
from service.jobs.router import router as jobs_router
from service.schemas import ERROR_RESPONSES
from service.settings import Settings, get_settings
from service.sweeps.router import router as sweeps_router

log = logging.getLogger("optimlab.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database engine, Celery producer and dispatcher live as long as it does."""
    app = FastAPI(
        title="optimlab",
        version="0.1.0",
        description="Submit PyTorch training jobs and query every epoch's metrics.",
        lifespan=_lifespan,
    )
    app.state.settings = settings or get_settings()
    _install_error_handlers(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)
    for router in (jobs_router, sweeps_router, catalog_router):
        v1.include_router(router)
    app.include_router(health_router)
    app.include_router(v1)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_engine(settings.resolved_database_url())
    app.state.session_factory = make_session_factory(engine)
    app.state.celery = broker.make_celery(settings)
    app.state.dispatcher = Dispatcher(app.state.session_factory, app.state.celery, settings)
    app.state.dispatcher.start()
    try:
        yield
    finally:
        app.state.dispatcher.stop()
        engine.dispose()


def _validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as 422 detail: ``{loc, field, msg, type}`` each (see ``field_error``)."""
    return [field_error(error["loc"], error["msg"], error["type"]) for error in error_details(errors)]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OptimlabError)
    async def _domain(_request: Request, exc: OptimlabError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": _validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http_error", "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

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
