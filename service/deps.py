"""Dependencies every router shares: the request's session, the app's settings and dispatcher,
and the API-key check. All of them come from ``app.state``, set up by ``service.app``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from service.dispatcher import Dispatcher
from service.errors import Unauthorized
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
IdempotencyKey = Annotated[str | None, Header(max_length=255)]


def require_key(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """With API keys configured, the request must carry ``Authorization: Bearer <one of them>``."""
    if not settings.api_keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not any(secrets.compare_digest(token.strip(), k) for k in settings.api_keys):
        raise Unauthorized("Send 'Authorization: Bearer <key>' with one of the server's OPTIMLAB_API_KEYS")
