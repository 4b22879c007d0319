"""/v1/catalog: what a spec may name (models, datasets, losses, optimizers, schedulers)."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from optim_engine import catalog as engine_catalog

router = APIRouter(prefix="/catalog", tags=["catalog"])


@router.get("")
def get_catalog() -> dict[str, list[dict[str, Any]]]:
    """Models, datasets, losses, optimizers and schedulers, each with its params' JSON schema."""
    return _catalog()


@cache
def _catalog() -> dict[str, list[dict[str, Any]]]:
    return engine_catalog()
