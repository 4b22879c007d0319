"""/v1/keys: admins create, list and revoke API keys. A key's token is in the creation's answer
only; the server keeps its hash."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.auth import service as auth_service
from service.auth.schemas import KeyCreate, KeyCreated, KeyOut, KeyPage
from service.deps import SessionDep, require_admin
from service.schemas import ErrorOut, Id, error_responses

router = APIRouter(
    prefix="/keys",
    tags=["keys"],
    dependencies=[Depends(require_admin)],
    responses={403: {"model": ErrorOut, "description": "Not an admin key, or auth is off"}},
)


@router.post("", status_code=201)
def create_key(body: KeyCreate, session: SessionDep) -> KeyCreated:
    """Create a key for `owner`; the answer holds its token, shown this once."""
    key, token = auth_service.create_key(session, body)
    return KeyCreated(**KeyOut.of(key).model_dump(), token=token)


@router.get("")
def list_keys(session: SessionDep) -> KeyPage:
    """Every key, revoked ones included: owner, name, prefix, admin, dates (never a token or hash)."""
    return KeyPage(items=[KeyOut.of(key) for key in auth_service.list_keys(session)])


@router.post("/{key_id}/revoke", responses=error_responses(404))
def revoke_key(key_id: Id, session: SessionDep) -> KeyOut:
    """Revoke a key: its next request is a 401. Revoking a revoked key changes nothing."""
    return KeyOut.of(auth_service.revoke_key(session, key_id))
