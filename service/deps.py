"""Dependencies every router shares: the request's session, the app's settings and dispatcher,
and the principal its API key authenticates as. All of them come from ``app.state``, set up by
``service.app``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.auth import service as auth_service
from service.auth.principal import Principal
from service.dispatcher import Dispatcher
from service.schemas import Text
from service.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: commit on success, roll back on error."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
IdempotencyKey = Annotated[Text | None, Header(max_length=255)]


# Declares the bearer scheme in OpenAPI; a missing or non-Bearer header is our 401, not its 403.
bearer = HTTPBearer(
    auto_error=False,
    description="An API key's token (with OPTIMLAB_AUTH=keys): `optimlab keys create`, or POST /v1/keys.",
)


def get_principal(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Who the request acts as: its bearer key's owner (``Unauthorized`` without a valid key), or
    the anonymous admin when auth is off. Every /v1 route depends on it."""
    return auth_service.authenticate(session, settings, credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep, settings: SettingsDep) -> Principal:
    """Key management: an admin key, and auth on (with auth off anyone could mint a key that stays
    valid once auth is turned on; `optimlab keys` on the server works either way)."""
    if settings.auth != "keys":
        raise auth_service.Forbidden("Managing keys over HTTP needs OPTIMLAB_AUTH=keys; use `optimlab keys`")
    if not principal.admin:
        raise auth_service.Forbidden("Managing keys needs an admin key")
    return principal
