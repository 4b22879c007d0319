"""Who a request acts as, and the one condition that limits a query to what it may see."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import InstrumentedAttribute


@dataclass(frozen=True)
class Principal:
    """The owner a request's key belongs to, and whether that key is an admin's."""

    owner: str
    admin: bool = False


ANONYMOUS = Principal(owner="", admin=True)
"""Every request with OPTIMLAB_AUTH=none: it owns what it creates as '' and sees everything."""

STATIC_ADMIN = Principal(owner="admin", admin=True)
"""A request with one of OPTIMLAB_API_KEYS (the environment's bootstrap tokens)."""


def visible_to(principal: Principal, owner: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """The rows (by their ``owner`` column) ``principal`` may see: its own, or all for an admin.

    Every read and change of jobs and sweeps adds this condition, so another owner's object is
    simply not found (a 404 that does not reveal it exists)."""
    return true() if principal.admin else owner == principal.owner
