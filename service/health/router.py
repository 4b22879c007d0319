"""/healthz and /readyz, open without an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.health.service import readiness
from service.schemas import ErrorOut

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorOut}})
def readyz(request: Request) -> JSONResponse:
    """The database and the broker are reachable."""
    checks = readiness(request.app.state.session_factory, request.app.state.celery)
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready"} | checks)
    return JSONResponse({"error": "unavailable", "detail": checks}, status_code=503)
