"""A configuration's one canonical label, shared by the client (frames, plots, exports), the
analysis routes (arms) and, ported line for line to ``dashboard/static/js/configs.js``, the dashboard.

Pure: no imports beyond the standard library, so the CLI, the API and the tests load it freely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def grouped(flat: Mapping[str, Any], spell: Callable[[str, str, Any, bool], str]) -> list[list[str]]:
    """A configuration's words grouped by the spec's top-level key, each group's name first:
    ``spell(top, leaf, value, is_name)`` writes one path's word. The one walk behind ``label``
    and the CLI's ``short_label``."""
    groups: dict[str, list[str]] = {}
    for path, value in flat.items():
        top, _, rest = path.partition(".")
        words = groups.setdefault(top, [])
        leaf = rest.rsplit(".", 1)[-1] if rest else top
        is_name = value is not None and leaf == "name" and bool(rest)
        word = spell(top, leaf, value, is_name)
        if is_name:
            words.insert(0, word)
        else:
            words.append(word)
    return list(groups.values())


def _spell(top: str, leaf: str, value: Any, is_name: bool) -> str:
    if value is None:
        return f"{top}=none"
    return str(value) if is_name else f"{leaf}={value}"


def label(flat: Mapping[str, Any]) -> str:
    """A short, stable name for a configuration, grouped by the spec's top-level key:
    ``sgd lr=0.01 momentum=0.9 | step_lr step_size=10 gamma=0.1``, ``lr=0.1``, ``scheduler=none``."""
    if not flat:
        return "base"
    return " | ".join(" ".join(words) for words in grouped(flat, _spell))


def config_label(config: Mapping[str, Any], optimizer: str | None = None) -> str:
    """``label(flatten(config))``, named by ``optimizer`` when the configuration does not vary
    ``optimizer.name`` (``adam lr=0.001``): how an analysis arm and the dashboard name a run."""
    flat = flatten(config)
    if optimizer is not None and "optimizer.name" not in flat:
        flat = {"optimizer.name": optimizer, **flat}
    return label(flat)
