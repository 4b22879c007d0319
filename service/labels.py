"""A configuration's one canonical label, shared by the client (frames, plots, exports), the
analysis routes (arms) and, ported line for line to ``static/js/common.js``, the dashboard.

Pure: no imports beyond the standard library, so the CLI, the API and the tests load it freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"name": "sgd", "lr": 0.1}} → {"optimizer.name": "sgd", "optimizer.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{path}.")
        else:
            flat[path] = value
    return flat


def label(flat: Mapping[str, Any]) -> str:
    """A short, stable name for a configuration, grouped by the spec's top-level key:
    ``sgd lr=0.01 momentum=0.9 | step_lr step_size=10 gamma=0.1``, ``lr=0.1``, ``scheduler=none``."""
    if not flat:
        return "base"
    groups: dict[str, list[str]] = {}
    for path, value in flat.items():
        top, _, rest = path.partition(".")
        parts = groups.setdefault(top, [])
        leaf = rest.rsplit(".", 1)[-1] if rest else top
        if value is None:
            parts.append(f"{top}=none")
        elif leaf == "name" and rest:
            parts.insert(0, str(value))
        else:
            parts.append(f"{leaf}={value}")
    return " | ".join(" ".join(parts) for parts in groups.values())


def config_label(config: Mapping[str, Any], optimizer: str | None = None) -> str:
    """``label(flatten(config))``, named by ``optimizer`` when the configuration does not vary
    ``optimizer.name`` (``adam lr=0.001``): how an analysis arm and the dashboard name a run."""
    flat = flatten(config)
    if optimizer is not None and "optimizer.name" not in flat:
        flat = {"optimizer.name": optimizer, **flat}
    return label(flat)
