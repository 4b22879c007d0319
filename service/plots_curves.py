"""A sweep's training curves: one colour per optimizer, one line style per schedule.

Sweeps vary an optimizer and a schedule together, and the eye should find "adam" in every panel
and under every schedule: so an optimizer keeps one hue (its settings, such as the learning rate,
are shades of that hue, darker for later ones) and a schedule keeps one line style. Curves that
coincide (two seeds' worth of identical runs, a schedule that never fires) would hide each other;
each curve therefore carries its own marker at offset epochs, so both stay visible. Accuracy is
drawn beside the loss whenever the runs report it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from service.plots import PathLike, _canvas, _legend, _save

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HUES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd", "BuGn", "GnBu")
BASE = (
    "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
    "tab:gray", "tab:olive", "tab:pink", "tab:cyan", "tab:brown",
)  # fmt: skip
STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
SCHEDULE_KEYS = ("scheduler", "schedule", "warmup")


def style_keys(flat: Mapping[str, Any], configuration: str) -> tuple[str, str, str]:
    """(optimizer, its settings, schedule) of a configuration, from its flattened keys.

    The optimizer is ``optimizer.name`` when the sweep varies it, else the whole non-schedule part
    (one hue per configuration, as when only the learning rate varies)."""
    schedule = " ".join(f"{k}={v}" for k, v in flat.items() if k.split(".", 1)[0] in SCHEDULE_KEYS)
    rest = {k: v for k, v in flat.items() if k.split(".", 1)[0] not in SCHEDULE_KEYS}
    name = rest.pop("optimizer.name", None)
    settings = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in rest.items())
    if name is None:
        return settings or configuration, "", schedule
    return str(name), settings, schedule


def _colours(keys: list[tuple[str, str, str]]) -> dict[tuple[str, str], Any]:
    """One hue per optimizer; its settings as shades of that hue (the base colour when alone)."""
    from matplotlib import colormaps

    optimizers = sorted({k[0] for k in keys})
    colours: dict[tuple[str, str], Any] = {}
    many_hues = len(optimizers) > len(HUES)
    for i, optimizer in enumerate(optimizers):
        settings = sorted({k[1] for k in keys if k[0] == optimizer}, key=_natural)
        if len(settings) == 1 or many_hues:
            for s in settings:
                colours[optimizer, s] = (
                    BASE[i % len(BASE)] if not many_hues else colormaps["turbo"](i / len(optimizers))
                )
            continue
        cmap = colormaps[HUES[i % len(HUES)]]
        for j, s in enumerate(settings):
            colours[optimizer, s] = cmap(0.4 + 0.55 * j / (len(settings) - 1))
    return colours


def _natural(text: str) -> tuple[Any, ...]:
    """Order ``lr=0.01`` before ``lr=0.1`` before ``lr=1``: numbers compare as numbers."""
    parts: list[Any] = []
    for token in text.replace("=", " ").split():
        try:
            parts.append((0, float(token), ""))
        except ValueError:
            parts.append((1, 0.0, token))
    return tuple(parts)


def _unscheduled(schedule: str) -> bool:
    return not schedule or schedule.endswith("=None")


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def wants(metric: str) -> list[str]:
    """The columns to fetch for ``metric``: accuracy too for a loss (drawn when the runs have it)."""
    return [metric, "val_accuracy"] if "loss" in metric else [metric]


class NothingToPlot(ValueError):
    """The frame has no epoch that reports the metric (the sweep has no epochs yet, or none of it)."""


def _metrics(frame: pd.DataFrame, metric: str) -> list[str]:
    """The loss asked for, and accuracy beside it when the runs report it."""
    drawn = [metric]
    if "loss" in metric and _has(frame, "val_accuracy"):
        drawn.append("val_accuracy")
    return drawn


def plot_curves(
    frame: pd.DataFrame,
    path: PathLike | None = None,
    ax: Any = None,
    *,
    metric: str = "val_loss",
    title: str | None = None,
    log_scale: bool = True,
) -> Figure:
    """The metric per epoch for each configuration of ``client.sweep_metrics``: mean over seeds,
    band from min to max; accuracy in a second panel when present. ``frame.attrs["configs"]``
    (configuration label → flattened configuration, as the client sets it) gives the colours and
    line styles; without it each configuration is its own optimizer. ``NothingToPlot`` when no
    epoch reports ``metric``."""
    if frame.empty or metric not in frame or frame[metric].isna().all():
        raise NothingToPlot("has no epochs yet" if frame.empty else f"has no epoch that reports {metric}")
    drawn = _metrics(frame, metric)
    fig, axes = _canvas(ax, len(drawn), (9 + 5 * (len(drawn) - 1), 5.5))
    configs: Mapping[str, Mapping[str, Any]] = frame.attrs.get("configs") or {}
    labels = sorted(frame["configuration"].unique(), key=str) if "configuration" in frame else []
    keys = {c: style_keys(configs.get(c, {}), str(c)) for c in labels}
    colours = _colours(list(keys.values()))
    schedules = sorted({k[2] for k in keys.values()}, key=lambda s: (not _unscheduled(s), s))  # none: solid
    order = sorted(labels, key=lambda c: (keys[c][0], _natural(keys[c][1]), keys[c][2]))
    for panel, name in zip(axes, drawn, strict=True):
        for i, configuration in enumerate(order):
            optimizer, settings, schedule = keys[configuration]
            look = {"color": colours[optimizer, settings], "linestyle": STYLES[schedules.index(schedule) % len(STYLES)]}
            _draw_one(panel, frame[frame["configuration"] == configuration], name, str(configuration), i, look)
        _finish(panel, name, log_scale and "accuracy" not in name)
    _legend(axes[0], fontsize=7, loc="best", ncol=2 if len(order) > 12 else 1)
    fig.suptitle(title or f"{metric} (mean over seeds, band = min..max)")
    return _save(fig, path)


def _draw_one(ax: Axes, group: pd.DataFrame, metric: str, label: str, index: int, look: dict[str, Any]) -> None:
    curve = group.groupby("epoch")[metric].agg(["mean", "min", "max"]).dropna()
    if curve.empty:
        return
    stride = max(len(curve) // 6, 2) if len(curve) >= 4 else 1  # offset markers: coinciding curves alternate
    marker = MARKERS[index % len(MARKERS)]
    ax.plot(
        curve.index, curve["mean"], label=label, linewidth=1.6, marker=marker, markersize=4,
        markevery=(index % stride, stride), **look,
    )  # fmt: skip
    ax.fill_between(curve.index, curve["min"], curve["max"], color=look["color"], alpha=0.12, linewidth=0)


def _finish(ax: Axes, metric: str, log_scale: bool) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
