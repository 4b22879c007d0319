"""What the client shows: a configuration as dotted paths and as a label (leaderboards, curves),
a terse label and one number format for tables that fit a terminal (the CLI), the server's error
details as lines, the progress bar of ``Client.wait`` (rich is imported only when a bar is shown,
and it draws on stderr, so stdout stays the caller's), and the plots module loaded when used."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from service.labels import flatten as flatten  # re-exported: their home is service.labels
from service.labels import grouped
from service.labels import label as label

TERMINAL = frozenset({"succeeded", "failed", "diverged", "cancelled", "pruned"})

ABBREVIATIONS = {"momentum": "m", "weight_decay": "wd", "dampening": "damp", "batch_size": "bs"}
"""Leaf names a terse label shortens: the knobs a grid varies most."""


def number(value: Any) -> str:
    """The CLI's one number format: 4 significant digits (``0.3898``, ``7.364e-05``, ``1.235e+04``),
    integers and text as they are, ``-`` for a missing value. One format of bounded width (at
    most 10 characters) is what lets a table of them fit 100 columns without cutting a number."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)  # nan, inf, -inf as Python spells them
    return str(value)


def short_label(flat: Mapping[str, Any]) -> str:
    """A configuration in a few words, for a table cell: ``sgd lr=0.1 m=0.9 cosine``. Each top-level
    key's words together, its name first and bare (a scheduler's without ``_lr`` and
    ``_annealing``), common knobs abbreviated (``ABBREVIATIONS``); ``label`` spells it out."""
    if not flat:
        return "base"
    return " ".join(word for words in grouped(flat, _short_word) for word in words)


def _short_word(top: str, leaf: str, value: Any, is_name: bool) -> str:
    if value is None:
        return f"{'sched' if top == 'scheduler' else top}=none"
    if is_name:  # a chain of schedulers: each name short
        return "→".join(name.removesuffix("_lr").replace("_annealing", "") for name in str(value).split("→"))
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{ABBREVIATIONS.get(leaf, leaf)}={shown}"


def short_labels(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short labels of configurations shown together (a leaderboard, a list of jobs): a setting
    that every configuration having it shares is left out (``cosine T_max=3`` reads ``cosine``
    when every cosine run has T_max=3), as long as the labels stay as distinct as they were.
    Names and ``none`` choices always stay: they say what was picked; one configuration alone
    keeps its whole label."""
    flats = [flatten(config) for config in configs]
    if len(flats) < 2:
        return [short_label(flat) for flat in flats]
    target = len({short_label(flat) for flat in flats})
    dropped: set[str] = set()
    for path in dict.fromkeys(path for flat in flats for path in flat):
        values = {json.dumps(flat[path], sort_keys=True, default=str) for flat in flats if path in flat}
        if path.rsplit(".", 1)[-1] == "name" or values == {"null"} or len(values) > 1:
            continue
        if len({short_label(_without(flat, dropped | {path})) for flat in flats}) == target:
            dropped.add(path)
    return [short_label(_without(flat, dropped)) for flat in flats]


def _without(flat: Mapping[str, Any], paths: set[str]) -> dict[str, Any]:
    return {path: value for path, value in flat.items() if path not in paths}


def detail_lines(detail: Any, width: int | None = None) -> list[str]:
    """The server's error detail as lines: a validation error's each ``field: msg`` (the field a
    JSON path such as ``spec.optimizer.lr``), anything else as its text. The same problem in many
    sweep combinations is one line: how many have it and one of them, cut to ``width``."""
    if not isinstance(detail, list):
        return [str(detail)]
    groups: dict[str, list[Any]] = {}  # the line -> the combinations that have it
    for entry in detail:
        if not isinstance(entry, dict):
            groups.setdefault(str(entry), [])
            continue
        field, msg, combination = entry.get("field") or "body", str(entry.get("msg")), entry.get("combination")
        if combination is not None:  # the server spells the combination out in each msg
            msg = msg.removeprefix(f"combination {json.dumps(combination, sort_keys=True)}: {field}: ")
        groups.setdefault(f"{field}: {msg}", []).append(combination)
    return [_with_example(line, [c for c in found if c is not None], width) for line, found in groups.items()]


def _with_example(line: str, combinations: list[Any], width: int | None) -> str:
    """``line`` and, for a sweep's problem, how many combinations have it and the first of them,
    the example cut (never the problem) to fit ``width``."""
    if not combinations:
        return line
    count = f"{len(combinations)} combination{'s' if len(combinations) > 1 else ''}"
    example = json.dumps(combinations[0], sort_keys=True)
    room = None if width is None else width - len(line) - len(f" (in {count}, e.g. )")
    if room is not None and room < len(example):
        if room < 12:  # too little to show anything useful of it
            return f"{line} (in {count})"
        example = example[: room - 1] + "…"
    return f"{line} (in {count}, e.g. {example})"


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, executed on its first attribute access (importlib's ``LazyLoader``): the
    client's plots import numpy (and matplotlib), ~80 ms that no other call needs, and the CLI
    starts with the client."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
            text += f" · best {number(best['mean'])} ({short_label(flatten(best['config']))})"
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
            from rich.console import Console

            self._bar = progress.Progress(
                progress.TextColumn("{task.description}"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TimeElapsedColumn(),
                console=Console(stderr=True),  # stdout is for results: `id=$(optimlab submit --wait ...)`
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
