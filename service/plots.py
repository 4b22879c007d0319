"""Every optimlab plot, drawn with matplotlib (the ``plot`` extra) from the API's answers.

Each ``plot_*(data, path=None, ax=None)`` takes the JSON the matching route returns (or the
client's DataFrame of it, whose ``attrs`` hold that JSON), draws on new Agg figures that pyplot
never tracks (nothing to close, and a notebook's own backend is left alone), saves a PNG when
``path`` is given, and returns the figure. Plots with two panels take ``ax`` as a pair of axes.
matplotlib is imported inside the functions so that the client imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.client_frames import matrix_frame, matrix_labels, verdict_words

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathLike = str | Path
WIN_COLORS = {"a": "tab:blue", "b": "tab:orange", "tie": "tab:gray"}
DPI = 120


def _body(data: Any) -> Mapping[str, Any]:
    """The route's JSON, whether given as is or as a client DataFrame carrying it in ``attrs``."""
    attrs = getattr(data, "attrs", None)
    return attrs if isinstance(attrs, Mapping) and attrs else data


def _canvas(ax: Any, panels: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """New figure with ``panels`` axes side by side, or the figure of the axes the caller gave."""
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        return fig, list(fig.subplots(1, panels, squeeze=False)[0])
    axes = [ax] if hasattr(ax, "plot") else list(ax)
    if len(axes) != panels:
        raise ValueError(f"ax: this plot draws on {panels} axes, got {len(axes)}")
    return axes[0].figure, axes


def _save(fig: Figure, path: PathLike | None) -> Figure:
    if path is not None:
        fig.savefig(Path(path), dpi=DPI)
    return fig


def _legend(ax: Axes, **options: Any) -> None:
    """A legend, when there is anything to name (an empty sweep draws empty axes, not a warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """JSON numbers with None (a NaN or inf the server could not send) as NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _pct(confidence: float = 0.95) -> str:
    return f"{confidence:.0%}"


# --- paired comparisons ----------------------------------------------------------------------


def plot_compare(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """Left, each seed's A and B joined by a line coloured by the seed's winner; right, the
    per-seed differences A - B with their mean and its t and BCa confidence intervals."""
    body = _body(data)
    fig, (pairs_ax, diff_ax) = _canvas(ax, 2, (11, 4.8))
    _draw_pairs(pairs_ax, body)
    _draw_diffs(diff_ax, body)
    fig.suptitle(f"{body['a']['label']} vs {body['b']['label']}: {body['which']} {body['metric']}")
    return _save(fig, path)


def _draw_pairs(ax: Axes, body: Mapping[str, Any]) -> None:
    from matplotlib.lines import Line2D

    a_values, b_values = _floats(body["a_values"]), _floats(body["b_values"])
    counts = {"a": 0, "b": 0, "tie": 0}
    for seed, a, b in zip(body["seeds"], a_values, b_values, strict=True):
        winner = "tie" if a == b else ("a" if (a < b) == (body["mode"] == "min") else "b")
        counts[winner] += 1
        ax.plot([0, 1], [a, b], color=WIN_COLORS[winner], marker="o", linewidth=1.2, alpha=0.8)
        if len(body["seeds"]) <= 20:
            ax.annotate(f"seed {seed}", (0, a), xytext=(-6, 0), textcoords="offset points", ha="right", fontsize=7)
    ax.set_xticks([0, 1], [f"A: {body['a']['label']}", f"B: {body['b']['label']}"])
    ax.set_xlim(-0.45, 1.25)
    ax.set_ylabel(f"{body['which']} {body['metric']}")
    unpaired = [
        f"{side.upper()} {', '.join(map(str, body[f'unpaired_{side}']))}" for side in "ab" if body[f"unpaired_{side}"]
    ]
    ax.set_title(f"per seed (n = {body['n']} pairs" + (f"; unpaired: {'; '.join(unpaired)})" if unpaired else ")"))
    ax.grid(alpha=0.3)
    names = {"a": "A better", "b": "B better", "tie": "tie"}
    handles = [Line2D([], [], color=WIN_COLORS[k], marker="o", label=f"{names[k]}: {n}") for k, n in counts.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")


def _draw_diffs(ax: Axes, body: Mapping[str, Any]) -> None:
    diffs = _floats(body["diffs"])
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(diffs))  # fixed: the same data, the same picture
    ax.scatter(diffs, jitter, color="tab:purple", alpha=0.7, label="per-seed A - B")
    ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
    for row, key in enumerate(("t_ci", "bca_ci"), start=1):
        ci = body.get(key)
        if ci is not None and body.get("mean_diff") is not None:
            mean = body["mean_diff"]
            ax.errorbar(mean, row, xerr=[[mean - ci[0]], [ci[1] - mean]], fmt="o", color="black", capsize=4)
    ax.set_yticks([0, 1, 2], ["per-seed A - B", f"mean, {_pct()} t CI", f"mean, {_pct()} BCa CI"])
    ax.set_ylim(-0.6, 2.6)
    ax.set_xlabel(f"A - B ({body['metric']})")
    left = body["mode"] == "min"  # A - B below zero is A's lower value
    where, text = (0.02, "<- A better") if left else (0.98, "A better ->")
    ax.text(where, 0.02, text, transform=ax.transAxes, ha="left" if left else "right", color=WIN_COLORS["a"])
    p = body.get("wilcoxon_p")
    test = f"Wilcoxon p = {p:.3g} ({body.get('wilcoxon_method')})" if p is not None else "Wilcoxon: too few pairs"
    if body.get("p_a_better") is not None:
        test += f", P(A beats B) = {body['p_a_better']:.2f}"
    ax.set_title(f"{verdict_words(body)}\n{test}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")


def plot_compare_matrix(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """All pairs of a sweep's configurations: cell (row A, column B) is the mean difference A - B,
    blue where the row is better; ``*`` marks a verdict that is not inconclusive."""
    body = _body(data)
    matrix = matrix_frame(body)
    labels = matrix_labels(body)
    n = len(matrix)
    fig, (axes,) = _canvas(ax, 1, (2.5 + 1.2 * n, 1.8 + 0.9 * n))
    values = matrix.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
    limit = limit or 1.0
    cmap = "RdBu_r" if body["mode"] == "min" else "RdBu"  # blue: the row is better either way
    image = axes.imshow(values, cmap=cmap, vmin=-limit, vmax=limit)
    verdicts = {(labels[c["a"]], labels[c["b"]]): c["verdict"] for c in body["cells"]}
    for i, row in enumerate(matrix.index):
        for j, column in enumerate(matrix.columns):
            value = values[i, j]
            mark = "" if verdicts.get((row, column), "inconclusive") == "inconclusive" else "*"
            axes.text(j, i, "-" if np.isnan(value) else f"{value:.3g}{mark}", ha="center", va="center", fontsize=8)
    axes.set_xticks(range(n), list(matrix.columns), rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(n), list(matrix.index), fontsize=8)
    axes.set_xlabel("B")
    axes.set_ylabel("A")
    fig.colorbar(image, ax=axes, label=f"mean {body['metric']} difference A - B")
    axes.set_title(f"{body['which']} {body['metric']}, paired by seed (* : not inconclusive)", fontsize=9)
    return _save(fig, path)


# --- learning rates --------------------------------------------------------------------------


def plot_range_test(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """An LR range test: loss and its smoothed curve against lr (log x), each suggestion a
    labelled vertical line."""
    body = _body(data)
    if not isinstance(body, Mapping) or body.get("kind") != "lr_range_test":
        raise ValueError("data: not an LR range test result (has the job finished? is it a range test?)")
    fig, (axes,) = _canvas(ax, 1, (8, 5))
    lr, loss, smoothed = _floats(body["lr"]), _floats(body["loss"]), _floats(body["smoothed"])
    axes.plot(lr, loss, color="tab:gray", alpha=0.5, linewidth=1, label="loss")
    axes.plot(lr, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    styles = {"steepest": "tab:red", "valley": "tab:green", "min_over_10": "tab:purple"}
    for name, value in (body.get("suggestions") or {}).items():
        if value is not None:
            axes.axvline(value, color=styles.get(name, "black"), linestyle="--", label=f"{name}: {value:.3g}")
    axes.set_xscale("log")
    shown = smoothed[np.isfinite(smoothed)]
    if shown.size:  # the raw loss spikes far past the smoothed curve at divergence: keep the curve readable
        low, high = min(float(shown.min()), float(np.nanmin(loss))), float(shown.max())
        pad = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
        axes.set_ylim(low - pad, high + pad)
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    axes.set_title(f"LR range test ({len(lr)} steps, stopped: {body.get('stopped')})")
    axes.grid(alpha=0.3, which="both")
    _legend(axes, fontsize=8)
    return _save(fig, path)


def plot_divergence(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """Left, the fraction of runs diverged at each lr per optimizer configuration; right, the
    metric against lr (mean line, each stable run a dot, each diverged run an x at the top)."""
    body = _body(data)
    fig, (fraction_ax, metric_ax) = _canvas(ax, 2, (12, 4.8))
    for index, group in enumerate(body["groups"]):
        color = f"C{index}"
        rows = group["lrs"]
        lrs = _floats([r["lr"] for r in rows])
        stable = group.get("stable_max_lr")
        note = f" (stable up to {stable:.3g})" if stable is not None else " (none stable)"
        fraction_ax.plot(
            lrs, _floats([r["fraction"] for r in rows]), marker="o", color=color, label=group["group"] + note
        )
        metric_ax.plot(lrs, _floats([r["mean"] for r in rows]), marker="o", color=color, label=group["group"])
        _draw_runs(metric_ax, rows, color)
    for axes in (fraction_ax, metric_ax):
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.grid(alpha=0.3, which="both")
    metric_ax.set_xlim(fraction_ax.get_xlim())  # the x of diverged runs is not in the metric axes' data limits
    fraction_ax.set_ylim(-0.05, 1.05)
    fraction_ax.set_ylabel("fraction of runs diverged")
    fraction_ax.set_title("divergence")
    metric_ax.set_ylabel(f"{body['which']} {body['metric']}")
    metric_ax.set_title("sensitivity (x: a diverged run)")
    _legend(fraction_ax, fontsize=8)
    from matplotlib.lines import Line2D

    handles, names = metric_ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", marker="x", linestyle="none"))
    metric_ax.legend(handles=handles, labels=[*names, "diverged run"], fontsize=8)
    return _save(fig, path)


def _draw_runs(ax: Axes, rows: Sequence[Mapping[str, Any]], color: str) -> None:
    """Stable runs at their value; diverged ones as x at the top edge, since they have none."""
    top = ax.get_xaxis_transform()  # x in data (lr), y in axes fraction
    for row in rows:
        jobs = row.get("jobs")
        if jobs is None:  # a frame's row: counts only
            diverged, values = [None] * int(row["diverged"]), []
        else:
            diverged = [j for j in jobs if j["status"] == "diverged"]
            values = [j["value"] for j in jobs if j["status"] != "diverged" and j["value"] is not None]
        if values:
            ax.scatter([row["lr"]] * len(values), values, color=color, s=12, alpha=0.5)
        if diverged:
            offsets = 0.96 - 0.025 * np.arange(len(diverged))
            ax.scatter([row["lr"]] * len(diverged), offsets, color=color, marker="x", transform=top, gid="diverged")


# --- budgets and profiles --------------------------------------------------------------------


def plot_budget(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """Expected best value after k random-search trials, per optimizer, with its bootstrap band."""
    body = _body(data)
    fig, (axes,) = _canvas(ax, 1, (8, 5))
    for index, group in enumerate(body["groups"]):
        k = np.asarray(group["k"], dtype=float)
        axes.plot(k, _floats(group["expected"]), color=f"C{index}", label=f"{group['group']} (N = {group['n_trials']})")
        axes.fill_between(k, _floats(group["lo"]), _floats(group["hi"]), color=f"C{index}", alpha=0.2)
    axes.set_xlabel("k: random-search trials")
    axes.set_ylabel(f"expected best of k: {body['which']} {body['metric']}")
    axes.set_title(f"tuning budget ({body['mode']} is better; band: {_pct()} bootstrap)")
    axes.grid(alpha=0.3)
    _legend(axes, fontsize=8)
    return _save(fig, path)


def plot_profiles(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """Performance profiles: rho(tau), the share of problems an optimizer reaches the target
    within tau times the fastest optimizer's time, in epochs (left) and seconds (right)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    body = _body(data)
    fig, axes_pair = _canvas(ax, 2, (12, 4.8))
    for axes, measure in zip(axes_pair, ("epochs", "seconds"), strict=True):
        profile = body[measure]
        for index, (optimizer, rho) in enumerate(sorted(profile["profiles"].items())):
            axes.step(profile["taus"], _floats(rho), where="post", color=f"C{index}", label=optimizer)
        axes.set_xscale("log", base=2)  # 1, 2, 4, ...: "twice as slow" reads off the axis
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("tau: time / fastest time on the problem")
        axes.set_ylabel("rho(tau): share of problems")
        unsolved = profile.get("unsolved") or []
        axes.set_title(f"time to target in {measure}" + (f" ({len(unsolved)} unsolved)" if unsolved else ""))
        axes.grid(alpha=0.3, which="both")
        _legend(axes, fontsize=8, loc="lower right")
    tolerance = body.get("tolerance")
    within = f" within {tolerance:.0%} of the best" if tolerance is not None else ""
    fig.suptitle(f"performance profiles over {len(body['problems'])} problems: {body['metric']}{within}")
    return _save(fig, path)


# --- 2-D test functions ----------------------------------------------------------------------


def plot_trajectories(data: Any, path: PathLike | None = None, ax: Any = None) -> Figure:
    """Each run's path over the function's contour (log-spaced levels, since these functions
    span orders of magnitude; linear for a saddle): a line per run, o at its start, a square at
    its end, the minimum as a star."""
    body = _body(data)
    fig, (axes,) = _canvas(ax, 1, (8, 6.5))
    _draw_contour(axes, body["contour"])
    labels = [p["label"] for p in body["paths"]]
    for index, run in enumerate(body["paths"]):
        x, y = _floats(run["x"]), _floats(run["y"])
        name = run["label"] if labels.count(run["label"]) == 1 else f"{run['label']} seed {run.get('seed')}"
        name += " (diverged)" if run.get("status") == "diverged" else ""
        width = max(2.6 - 0.6 * index, 1.0)  # later paths narrower: one that retraces another stays visible
        axes.plot(x, y, color=f"C{index}", linewidth=width, label=name)
        finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        if finite.size:
            start, end = finite[0], finite[-1]
            axes.plot(x[start], y[start], color=f"C{index}", marker="o", markeredgecolor="black", linestyle="none")
            axes.plot(x[end], y[end], color=f"C{index}", marker="s", markeredgecolor="black", linestyle="none")
    if body.get("minimum") is not None:
        mx, my = body["minimum"]
        axes.plot(
            mx, my, marker="*", markersize=16, color="gold", markeredgecolor="black", linestyle="none", label="minimum"
        )
    (x0, x1), (y0, y1) = body["bounds"]
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    runs = len(body["paths"])
    axes.set_title(f"{body['function']}: {runs} run{'' if runs == 1 else 's'} (o start, square end)")
    _legend(axes, fontsize=7, loc="best")
    return _save(fig, path)


def _draw_contour(ax: Axes, contour: Mapping[str, Any]) -> None:
    from matplotlib.colors import BoundaryNorm

    x, y, z = np.asarray(contour["x"], float), np.asarray(contour["y"], float), np.asarray(contour["z"], float)
    if x.ndim == 1 and z.shape == (x.size, y.size) and x.size != y.size:
        z = z.T  # z[i][j] is f(x[j], y[i]) (meshgrid order); accept the transposed order too
    low, high = float(np.nanmin(z)), float(np.nanmax(z))
    span = high - low or 1.0
    if low < 0:  # no basin in the box (a saddle): log levels would all crowd into its lowest corner
        levels = np.linspace(low, low + span, 26)
    else:  # a basin: log-spaced above its floor, so the valley near the minimum shows
        levels = np.concatenate([[low], low + np.geomspace(span * 1e-4, span, 25)])
    ax.contourf(x, y, z, levels=levels, cmap="viridis", norm=BoundaryNorm(levels, 256), alpha=0.45)
    ax.contour(x, y, z, levels=levels, colors="black", linewidths=0.4, alpha=0.4)
