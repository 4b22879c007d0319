"""Every plot drawn from fixed, contract-shaped answers: a valid PNG, and the artists each plot
promises (a line per group, labels, log x where the data is learning rates). Each PNG is also
written to /tmp/optimlab-plots/ so a person can look at them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

from service import plots
from service.client import Client
from service.client_frames import budget_frame, pairs_frame
from tests.service import analysis_answers as answers

GALLERY = Path("/tmp/optimlab-plots")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def drawn(draw: Callable[..., Figure], data: Any, tmp_path: Path, name: str) -> Figure:
    """Draw to a PNG in tmp_path (checked) and to the gallery; return the figure."""
    path = tmp_path / f"{name}.png"
    fig = draw(data, path)
    assert isinstance(fig, Figure)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert path.stat().st_size > 10_000, "an empty canvas is a few kB"
    GALLERY.mkdir(parents=True, exist_ok=True)
    fig.savefig(GALLERY / f"{name}.png", dpi=plots.DPI)
    return fig


def labelled(ax: Any) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def legend_texts(ax: Any) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_a_paired_comparison_joins_each_seeds_a_and_b(tmp_path: Path) -> None:
    body = answers.compare()
    fig = drawn(plots.plot_compare, body, tmp_path, "compare")
    pairs, diffs = fig.axes
    lines = pairs.get_lines()
    assert len(lines) == body["n"], "one line per paired seed"
    for line, a, b in zip(lines, body["a_values"], body["b_values"], strict=True):
        assert list(line.get_xdata()) == [0, 1]
        assert list(line.get_ydata()) == pytest.approx([a, b])
    a_won = [line for line in lines if line.get_color() == plots.WIN_COLORS["a"]]
    assert len(a_won) == body["a_wins"] == 4
    assert [t.get_text() for t in pairs.get_xticklabels()] == ["A: adam lr=0.001", "B: sgd lr=0.1"]
    assert legend_texts(pairs) == ["A better: 4", "B better: 1", "tie: 0"]
    (points,) = [c for c in diffs.collections if isinstance(c, PathCollection)]
    assert sorted(points.get_offsets()[:, 0]) == pytest.approx(sorted(body["diffs"]))
    assert len(diffs.containers) == 2, "the mean with its t CI, and with its BCa CI"
    t_bar = diffs.containers[0].lines[2][0].get_segments()[0]
    assert t_bar[:, 0] == pytest.approx(body["t_ci"])
    assert "inconclusive" in diffs.get_title()
    assert "Wilcoxon p = 0.125 (exact)" in diffs.get_title()
    assert fig.get_suptitle() == "adam lr=0.001 vs sgd lr=0.1: best val_loss"


def test_a_decisive_comparison_names_the_winner_and_a_frame_draws_the_same(tmp_path: Path) -> None:
    fig = drawn(plots.plot_compare, pairs_frame(answers.compare_decisive()), tmp_path, "compare_decisive")
    assert "adam lr=0.001 is better (lower val_loss)" in fig.axes[1].get_title()


def test_the_matrix_shows_every_pair_and_marks_the_verdicts(tmp_path: Path) -> None:
    fig = drawn(plots.plot_compare_matrix, answers.compare_matrix(), tmp_path, "compare_matrix")
    ax = fig.axes[0]
    (image,) = ax.get_images()
    values = np.asarray(image.get_array())
    assert values.shape == (3, 3)
    assert np.isnan(np.diag(values)).all()
    assert values[1, 0] == pytest.approx(-0.036), "row adam, column sgd"
    texts = [t.get_text() for t in ax.texts]
    assert {"-0.036*", "0.036*"} <= set(texts), "the decisive pair is marked both ways"
    assert "-0.006" in texts
    assert texts.count("-") == 3, "the diagonal"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd lr=0.1", "adam lr=0.001", "adamw lr=0.001"]
    assert image.get_cmap().name == "RdBu_r", "losses: a negative difference (row better) is blue"


def test_a_range_test_draws_loss_and_suggestions_on_a_log_lr_axis(tmp_path: Path) -> None:
    body = answers.range_test()
    fig = drawn(plots.plot_range_test, body, tmp_path, "range_test")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert labelled(ax) == ["loss", "smoothed loss", "steepest: 0.00032", "valley: 0.0021", "min_over_10: 0.0167"]
    _, smoothed, *suggestions = ax.get_lines()
    assert list(smoothed.get_ydata()) == pytest.approx(body["smoothed"])
    assert [line.get_xdata()[0] for line in suggestions] == pytest.approx([0.00032, 0.0021, 0.0167])
    assert ax.get_ylim()[1] < max(body["loss"]), "the divergence spike is cut off so the curve reads"
    assert "stopped: diverged" in ax.get_title()


def test_a_range_test_without_a_suggestion_draws_the_others(tmp_path: Path) -> None:
    body = answers.range_test()
    body["suggestions"]["steepest"] = None
    fig = drawn(plots.plot_range_test, body, tmp_path, "range_test_no_steepest")
    assert labelled(fig.axes[0]) == ["loss", "smoothed loss", "valley: 0.0021", "min_over_10: 0.0167"]


def test_a_range_test_plot_refuses_other_results() -> None:
    with pytest.raises(ValueError, match="not an LR range test"):
        plots.plot_range_test(answers.trajectories())
    with pytest.raises(ValueError, match="not an LR range test"):
        plots.plot_range_test(None)


def test_divergence_draws_a_line_per_group_and_marks_diverged_runs(tmp_path: Path) -> None:
    body = answers.divergence()
    fig = drawn(plots.plot_divergence, body, tmp_path, "divergence")
    fraction, metric = fig.axes
    assert fraction.get_xscale() == metric.get_xscale() == "log"
    assert labelled(fraction) == ["sgd momentum=0.9 (stable up to 0.1)", "adam (stable up to 0.001)"]
    sgd, adam = fraction.get_lines()
    assert list(sgd.get_xdata()) == [0.01, 0.1, 1.0]
    assert list(sgd.get_ydata()) == [0.0, 0.0, 1.0]
    assert list(adam.get_ydata()) == pytest.approx([0.0, 0.0, 1 / 3])
    assert labelled(metric) == ["sgd momentum=0.9", "adam"]
    crosses = [c for c in metric.collections if c.get_gid() == "diverged"]
    assert sum(len(c.get_offsets()) for c in crosses) == 4, "three sgd runs at lr 1 and one adam run at 0.01"
    stable = [c for c in metric.collections if c.get_gid() != "diverged"]
    assert sum(len(c.get_offsets()) for c in stable) == 14
    assert legend_texts(metric)[-1] == "diverged run"


def test_budget_draws_a_curve_and_band_per_group(tmp_path: Path) -> None:
    body = answers.budget()
    fig = drawn(plots.plot_budget, budget_frame(body), tmp_path, "budget")
    ax = fig.axes[0]
    assert labelled(ax) == ["sgd (N = 8)", "adam (N = 5)"]
    sgd, adam = ax.get_lines()
    assert list(sgd.get_xdata()) == list(range(1, 9))
    assert list(adam.get_ydata()) == pytest.approx(body["groups"][1]["expected"])
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2


def test_profiles_draw_a_step_per_optimizer_in_epochs_and_seconds(tmp_path: Path) -> None:
    body = answers.profiles()
    fig = drawn(plots.plot_profiles, body, tmp_path, "profiles")
    epochs, seconds = fig.axes
    for ax, measure in ((epochs, "epochs"), (seconds, "seconds")):
        assert ax.get_xscale() == "log"
        assert labelled(ax) == ["adam", "sgd"]
        assert all(line.get_drawstyle() == "steps-post" for line in ax.get_lines())
        assert list(ax.get_lines()[0].get_ydata()) == pytest.approx(body[measure]["profiles"]["adam"])
        assert "(1 unsolved)" in ax.get_title()
    assert "over 4 problems: val_loss within 5% of the best" in fig.get_suptitle()


def test_trajectories_draw_each_path_over_the_contour(tmp_path: Path) -> None:
    body = answers.trajectories()
    fig = drawn(plots.plot_trajectories, body, tmp_path, "trajectories")
    ax = fig.axes[0]
    names = ["sgd lr=0.002", "sgd lr=0.0005 momentum=0.9", "sgd lr=0.008 (diverged)"]
    assert labelled(ax) == [*names, "minimum"]
    assert legend_texts(ax) == [*names, "minimum"]
    lines = ax.get_lines()
    assert len(lines) == 3 * 3 + 1, "per path: the path, its start, its end; and the minimum"
    first_path, first_start, first_end = lines[:3]
    assert len(first_path.get_xdata()) == 401
    assert (first_start.get_marker(), first_end.get_marker()) == ("o", "s")
    assert (first_start.get_xdata()[0], first_start.get_ydata()[0]) == (-1.2, 1.0)
    star = lines[-1]
    assert (star.get_marker(), star.get_xdata()[0], star.get_ydata()[0]) == ("*", 1.0, 1.0)
    diverged_end = lines[8]
    assert np.isfinite(diverged_end.get_xdata()).all(), "a diverged path ends at its last finite point"
    assert (ax.get_xlim(), ax.get_ylim()) == ((-2.0, 2.0), (-1.0, 3.0))
    assert len(ax.collections) == 2, "filled contour and contour lines"
    levels = ax.collections[0].levels
    steps = np.diff(levels[1:])
    assert (steps[1:] / steps[:-1]) == pytest.approx(np.full(len(steps) - 1, steps[1] / steps[0])), "log-spaced"


def test_a_transposed_contour_grid_is_drawn_the_same() -> None:
    body = answers.trajectories()
    flipped = answers.fresh(body)
    flipped["contour"]["z"] = np.asarray(body["contour"]["z"]).T.tolist()
    first, second = plots.plot_trajectories(body), plots.plot_trajectories(flipped)
    assert np.allclose(first.axes[0].collections[0].levels, second.axes[0].collections[0].levels)


def test_a_function_without_a_basin_gets_linear_levels() -> None:
    body = answers.trajectories()
    x, y = np.meshgrid(body["contour"]["x"], body["contour"]["y"])
    body["contour"]["z"] = (x**2 - y**2).tolist()  # a saddle: log levels would crowd into one corner
    levels = plots.plot_trajectories(body).axes[0].collections[0].levels
    assert np.diff(levels) == pytest.approx(np.full(len(levels) - 1, levels[1] - levels[0]))
    assert (levels[0], levels[-1]) == pytest.approx((np.min(x**2 - y**2), np.max(x**2 - y**2)))


def test_plots_draw_on_the_callers_axes() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert plots.plot_budget(answers.budget(), ax=left) is fig
    assert plots.plot_compare(answers.compare(), ax=(left, right)) is fig
    with pytest.raises(ValueError, match="2 axes, got 1"):
        plots.plot_divergence(answers.divergence(), ax=left)


def test_the_clients_plot_methods_fetch_and_draw(tmp_path: Path) -> None:
    routes = {
        "/v1/sweeps/3/compare": answers.compare(),
        "/v1/sweeps/3/divergence": answers.divergence(),
        "/v1/sweeps/3/budget": answers.budget(),
        "/v1/sweeps/3/trajectories": answers.trajectories(),
        "/v1/profiles": answers.profiles(),
        "/v1/jobs/5/result": {"job_id": 5, "status": "succeeded", "result": answers.range_test()},
        "/v1/jobs/6/result": {"job_id": 6, "status": "failed", "result": None},
        "/v1/sweeps/3": {"id": 3, "name": "lr probe"},
        "/v1/sweeps/3/metrics": {
            "columns": ["job_id", "epoch", "val_loss"],
            "rows": [[1, 1, 0.9], [1, 2, 0.5], [2, 1, 0.8], [2, 2, 0.4]],
            "jobs": [
                {"job_id": j, "config": {"optimizer": {"lr": 0.1}}, "seed": j, "status": "succeeded"} for j in (1, 2)
            ],
        },
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=routes[request.url.path]))
    with Client("http://test", transport=transport) as client:
        drawn_by = {
            "compare": lambda path: client.plot_compare(3, "0f9e", "a1b2", path=path),
            "divergence": lambda path: client.plot_divergence(3, path=path),
            "budget": lambda path: client.plot_budget(3, path=path),
            "trajectories": lambda path: client.plot_trajectories(3, path=path),
            "profiles": lambda path: client.plot_profiles([1, 2, 3, 4], path=path),
            "range_test": lambda path: client.plot_range_test(5, path=path),
        }
        for name, draw in drawn_by.items():
            fig = draw(tmp_path / f"client_{name}.png")
            assert isinstance(fig, Figure)
            assert (tmp_path / f"client_{name}.png").read_bytes().startswith(PNG_SIGNATURE)
        with pytest.raises(ValueError, match="not an LR range test"):
            client.plot_range_test(6)
        curves = client.plot_curves(3, tmp_path / "curves.png")
    assert curves.read_bytes().startswith(PNG_SIGNATURE)


def test_the_matrix_plot_from_the_client_frame(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answers.compare_matrix()))
    with Client("http://test", transport=transport) as client:
        fig = client.plot_compare_matrix(3, path=tmp_path / "matrix.png")
    assert len(fig.axes[0].texts) == 9


def _empty(name: str) -> dict[str, Any]:
    """Each answer as a sweep with nothing finished yet sends it."""
    body: dict[str, Any] = getattr(answers, name)()
    if name == "compare":
        body |= {"n": 0, "seeds": [], "a_values": [], "b_values": [], "diffs": [], "mean_diff": None}
        body |= {"std_diff": None, "t_ci": None, "bca_ci": None, "wilcoxon_p": None, "p_a_better": None}
    elif name == "profiles":
        for measure in ("epochs", "seconds"):
            body[measure] = {"taus": [1.0, 2.0], "profiles": {}, "ratios": {}, "unsolved": ["1", "2", "3", "4"]}
    elif name == "trajectories":
        body["paths"] = []
    else:
        body["groups"] = []
    return body


@pytest.mark.parametrize("name", ["compare", "divergence", "budget", "profiles", "trajectories"])
def test_an_answer_with_nothing_finished_draws_empty_axes_quietly(name: str, tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = getattr(plots, f"plot_{name}")(_empty(name), tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    assert fig.axes
