"""Training curves: an optimizer keeps its colour under every schedule, a schedule keeps its line
style, coinciding curves stay visible, accuracy sits beside the loss, the sweep's name is the title."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from matplotlib.colors import to_rgba

from service.client import Client
from service.client_display import flatten, label
from service.plots_curves import NothingToPlot, plot_curves, style_keys

CONFIGS = [
    {"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": {"name": "cosine"}},
    {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": {"name": "cosine"}},
    {"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": None},
    {"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": None},
    {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "cosine"}},
    {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": None},
]


def _frame(accuracy: bool = True) -> pd.DataFrame:
    """Two seeds per configuration; the two schedules' curves coincide exactly (none ever fires)."""
    rows: list[dict[str, Any]] = []
    for config in CONFIGS:
        lr = config["optimizer"]["lr"]
        for seed in (0, 1):
            for epoch in range(1, 11):
                loss = 2.0 * np.exp(-lr * 10 * epoch) + 0.01 * seed + 0.05
                row = {"configuration": label(flatten(config)), "seed": seed, "epoch": epoch, "val_loss": loss}
                rows.append(row | ({"val_accuracy": 1 - loss / 3} if accuracy else {}))
    frame = pd.DataFrame(rows)
    frame.attrs["configs"] = {label(flatten(c)): flatten(c) for c in CONFIGS}
    return frame


def _lines(ax: Any) -> dict[str, Any]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_an_optimizer_keeps_its_colour_and_a_schedule_its_line_style(tmp_path: Path) -> None:
    fig = plot_curves(_frame(), tmp_path / "curves.png", title="lr probe")
    lines = _lines(fig.axes[0])
    by = {label(flatten(c)): c for c in CONFIGS}
    colour = {name: to_rgba(line.get_color()) for name, line in lines.items()}
    for a, ca in by.items():
        for b, cb in by.items():
            same_optimizer = ca["optimizer"] == cb["optimizer"]
            assert (colour[a] == colour[b]) == same_optimizer, (a, b)
            same_schedule = ca["scheduler"] == cb["scheduler"]
            assert (lines[a].get_linestyle() == lines[b].get_linestyle()) == same_schedule, (a, b)
    sgd = {to_rgba(lines[label(flatten(c))].get_color())[:3] for c in CONFIGS if c["optimizer"]["name"] == "sgd"}
    adam = to_rgba(lines[label(flatten(CONFIGS[4]))].get_color())[:3]
    assert len(sgd) == 2  # two learning rates: two shades of one hue, neither is adam's colour
    assert adam not in sgd
    markers = [line.get_marker() for line in lines.values()]
    assert len(set(markers)) == len(markers)  # coinciding curves (the two schedules) stay visible
    assert fig.texts[0].get_text() == "lr probe"
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_accuracy_is_drawn_beside_the_loss_when_the_runs_report_it() -> None:
    fig = plot_curves(_frame(accuracy=True))
    assert [ax.get_ylabel() for ax in fig.axes] == ["val_loss", "val_accuracy"]
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[1].get_yscale() == "linear"
    assert len(fig.axes[1].get_lines()) == len(CONFIGS)
    assert [ax.get_ylabel() for ax in plot_curves(_frame(accuracy=False)).axes] == ["val_loss"]


def test_without_configurations_each_curve_is_its_own_colour() -> None:
    frame = _frame(accuracy=False)
    frame.attrs.clear()
    colours = [to_rgba(line.get_color()) for line in plot_curves(frame).axes[0].get_lines()]
    assert len(set(colours)) == len(CONFIGS)


def test_style_keys_split_optimizer_settings_and_schedule() -> None:
    flat = flatten({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "scheduler": {"name": "step"}})
    assert style_keys(flat, "x") == ("sgd", "lr=0.1 momentum=0.9", "scheduler.name=step")
    assert style_keys(flatten({"optimizer": {"lr": 0.1}}), "lr=0.1") == ("lr=0.1", "", "")


def test_the_client_titles_the_plot_with_the_sweeps_name(tmp_path: Path) -> None:
    jobs = [{"job_id": i + 1, "config": c, "seed": 0, "status": "succeeded"} for i, c in enumerate(CONFIGS)]
    rows = [[j["job_id"], e, 1.0 / e, 0.5] for j in jobs for e in (1, 2, 3)]
    routes = {
        "/v1/sweeps/7": {"id": 7, "name": "adam vs sgd"},
        "/v1/sweeps/7/metrics": {
            "columns": ["job_id", "epoch", "val_loss", "val_accuracy"],
            "rows": rows,
            "jobs": jobs,
        },
    }
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url.params.get("columns")))
        return httpx.Response(200, json=routes[request.url.path])

    with Client("http://test", transport=httpx.MockTransport(answer)) as client:
        png = client.plot_curves(7, tmp_path / "c.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "val_loss,val_accuracy" in asked


def test_a_frame_without_the_metric_is_nothing_to_plot() -> None:
    """``Client.plot_curves`` and ``optimlab plot`` both get this error, not an empty picture."""
    with pytest.raises(NothingToPlot, match="has no epochs yet"):
        plot_curves(_frame().iloc[0:0])
    with pytest.raises(NothingToPlot, match="has no epoch that reports val_accuracy"):
        plot_curves(_frame(accuracy=False), metric="val_accuracy")
