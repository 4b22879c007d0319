"""SQL for API keys: insert, find an active key by its token's hash, list, revoke."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ApiKey
from service.db.session import utcnow


def create_key(session: Session, *, owner: str, name: str | None, admin: bool, prefix: str, token_hash: str) -> ApiKey:
    key = ApiKey(owner=owner, name=name, admin=admin, prefix=prefix, hash=token_hash, created_at=utcnow())
    session.add(key)
    session.flush()
    return key


def active_key(session: Session, token_hash: str) -> ApiKey | None:
    """The non-revoked key whose token hashes to ``token_hash`` (a unique index lookup)."""
    return session.scalars(select(ApiKey).where(ApiKey.hash == token_hash, ApiKey.revoked_at.is_(None))).one_or_none()


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def get_key(session: Session, key_id: int) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def revoke(session: Session, key: ApiKey) -> ApiKey:
    """Revoke ``key`` now; an already revoked key keeps its first revocation time."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key
