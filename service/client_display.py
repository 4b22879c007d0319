"""What the client shows: a configuration as dotted paths and as a short label (leaderboards,
curves, the progress text), and the progress bar of ``Client.wait`` (rich is imported only when
a bar is shown)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "diverged", "cancelled", "pruned"})


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


def progress_of(state: Mapping[str, Any], is_sweep: bool) -> tuple[int, int, str]:
    """(done, total, text) of a job (epochs) or a sweep (finished jobs, and its best so far)."""
    if is_sweep:
        counts = state["counts"]
        finished = sum(counts.get(s, 0) for s in TERMINAL)
        best = state.get("best")
        text = f"sweep {state['id']}"
        if state.get("cached"):  # served from the result cache: done without training
            text += f" · {state['cached']} cached"
        if best and best.get("mean") is not None:
            text += f" · best {best['mean']:.4g} ({label(flatten(best['config']))})"
        return finished, int(state["n_jobs"]), text
    summary = state["summary"]
    return int(summary["epochs_done"]), int(summary["epochs_total"]), f"job {state['id']} {state['status']}"


class Progress:
    """A rich progress bar, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            from rich import progress

            self._bar = progress.Progress(
                progress.TextColumn("{task.description}"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TimeElapsedColumn(),
            )
            self._bar.start()

    def update(self, done: int, total: int, text: str) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task(text, total=total)
        self._bar.update(self._task, completed=done, total=total, description=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
