"""Specs as strict JSON: non-finite floats (Prodigy's default ``growth_rate`` is inf) become the
strings "Infinity", "-Infinity" and "NaN" in the database and in API bodies, both ways.

PostgreSQL's JSONB and strict JSON parsers reject bare ``Infinity``; writing it as null would
silently change the spec.
"""

from __future__ import annotations

import math
from typing import Any

from optim_engine.spec import JobSpec

NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def encode(value: Any) -> Any:
    """Replace non-finite floats with their JSON-safe names, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    return value


def decode(value: Any) -> Any:
    """The inverse of ``encode``: the names become floats again."""
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    if isinstance(value, dict):
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def stored_spec(spec: JobSpec) -> dict[str, Any]:
    """The complete spec, every default resolved, as it goes into the database."""
    return dict(encode(spec.model_dump(mode="json")))


def load_spec(data: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate(decode(data))
