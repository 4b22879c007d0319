"""The rules of keys: tokens made high-entropy and stored only as their sha256, the principal a
token authenticates as, key creation and revocation, and the start-up checks that refuse an
auth configuration that would open the API by mistake."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets

from sqlalchemy.orm import Session

from service.auth import repository
from service.auth.principal import ANONYMOUS, STATIC_ADMIN, Principal
from service.auth.schemas import KeyCreate
from service.db.models import ApiKey
from service.errors import OptimlabError, Unauthorized
from service.settings import Settings

log = logging.getLogger("optimlab.auth")

TOKEN_PREFIX = "olk_"  # noqa: S105 (a marker that says what the string is, not a secret)
DISPLAY_PREFIX = 12  # "olk_" and 8 characters of the secret: enough to tell keys apart, useless to guess
MIN_STATIC_KEY = 16
UNAUTHORIZED = "Send 'Authorization: Bearer <token>' with a valid, non-revoked API key of this server"


class KeyNotFound(OptimlabError):
    code = "key_not_found"
    status_code = 404

    def __init__(self, key_id: int) -> None:
        super().__init__(f"No API key with id {key_id}")


class Forbidden(OptimlabError):
    code = "forbidden"
    status_code = 403


class ConfigurationError(ValueError):
    """An auth setting the service refuses to start with; the message names the setting."""


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe, recognisable by its ``olk_`` prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored of a token. Tokens are random, so a plain sha256 (no salt, no stretching)
    cannot be reversed and lets a request's key be found with one indexed lookup."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, body: KeyCreate) -> tuple[ApiKey, str]:
    """Store a new key for ``body.owner`` and commit; returns the key and its token, which is
    never stored nor logged: the caller shows it once."""
    token = new_token()
    key = repository.create_key(
        session,
        owner=body.owner,
        name=body.name,
        admin=body.admin,
        prefix=token[:DISPLAY_PREFIX],
        token_hash=token_hash(token),
    )
    session.commit()
    log.info("API key %d created for owner %r (admin: %s)", key.id, key.owner, key.admin)
    return key, token


def list_keys(session: Session) -> list[ApiKey]:
    return repository.list_keys(session)


def revoke_key(session: Session, key_id: int) -> ApiKey:
    """Revoke a key (its next request is a 401) and commit; revoking it again changes nothing."""
    key = repository.get_key(session, key_id)
    if key is None:
        raise KeyNotFound(key_id)
    repository.revoke(session, key)
    session.commit()
    log.info("API key %d of owner %r revoked", key.id, key.owner)
    return key


def authenticate(session: Session, settings: Settings, token: str | None) -> Principal:
    """The principal a request's bearer ``token`` acts as; ``Unauthorized`` without a valid one.

    With OPTIMLAB_AUTH=none every request is ``ANONYMOUS``. Otherwise the token is one of the
    environment's static admin tokens, or a non-revoked key of the database."""
    if settings.auth == "none":
        return ANONYMOUS
    if not token:
        raise Unauthorized(UNAUTHORIZED)
    # Bytes: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
    if any(secrets.compare_digest(token.encode(), static.encode()) for static in settings.api_keys):
        return STATIC_ADMIN
    key = repository.active_key(session, token_hash(token))
    if key is None:
        raise Unauthorized(UNAUTHORIZED)
    return Principal(owner=key.owner, admin=key.admin)


def check_configuration(settings: Settings, host: str | None = None) -> None:
    """Refuse to start (``ConfigurationError`` naming the setting) on an auth configuration that
    would open the API unintentionally: static keys while auth is off (they would be ignored),
    an empty or short static key (``OPTIMLAB_API_KEYS=","`` once turned auth off), or serving
    a non-loopback ``host`` with auth off."""
    if settings.api_keys and settings.auth != "keys":
        raise ConfigurationError(
            "OPTIMLAB_API_KEYS is set but OPTIMLAB_AUTH is 'none', so the keys would be ignored and the API "
            "open to anyone: set OPTIMLAB_AUTH=keys, or unset OPTIMLAB_API_KEYS"
        )
    short = [position for position, key in enumerate(settings.api_keys, start=1) if len(key) < MIN_STATIC_KEY]
    if short:
        raise ConfigurationError(
            f"OPTIMLAB_API_KEYS: entries {short} (counting from 1) are empty or shorter than {MIN_STATIC_KEY} "
            "characters; give comma-separated tokens of at least that length, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if host is not None and settings.auth == "none" and not is_loopback(host):
        raise ConfigurationError(
            f"--host {host}: with OPTIMLAB_AUTH=none the API has no keys and serves only a loopback interface "
            "(127.0.0.1, ::1, localhost); set OPTIMLAB_AUTH=keys and create a key (`optimlab keys create`) to "
            f"serve on {host}"
        )


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (a hostname other than localhost is not
    resolved: it may name any interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
