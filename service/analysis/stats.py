"""Statistics behind optimlab's verdicts: paired seed-by-seed comparisons, tuning-budget curves,
divergence maps, time-to-target and performance profiles. Pure numpy/scipy; every float it hands
out is a plain Python float or None, so results go to JSON as they are."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Mode = Literal["min", "max"]
Verdict = Literal["a", "b", "inconclusive"]

# scipy's own cut-offs for wilcoxon(method="auto"): the exact null distribution up to n=50 when there
# are no ties or zeros; with ties/zeros a permutation test whose 2**n sign flips are all enumerated
# (n <= 13, so the p-value is exact and deterministic); otherwise the normal approximation.
_WILCOXON_EXACT_MAX_N = 50
_WILCOXON_PERMUTATION_MAX_N = 13


def _float(x: Any) -> float | None:
    """A plain float, or None for NaN/inf (JSON has neither)."""
    value = float(x)
    return value if math.isfinite(value) else None


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"Invalid mode: {mode!r} (expected 'min' or 'max')")


@dataclass(frozen=True)
class Paired:
    """A paired comparison of A and B over their common seeds; diffs are a - b."""

    n: int
    seeds: list[int]
    a_values: list[float]
    b_values: list[float]
    diffs: list[float]
    mean_diff: float | None
    std_diff: float | None
    t_ci: tuple[float, float] | None
    bca_ci: tuple[float, float] | None
    wilcoxon_p: float | None
    wilcoxon_method: Literal["exact", "approx"] | None
    a_wins: int
    b_wins: int
    ties: int
    p_a_better: float | None
    unpaired_a: list[int]
    unpaired_b: list[int]
    verdict: Verdict

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the CIs as two-element lists)."""
        out = asdict(self)
        out["t_ci"] = list(self.t_ci) if self.t_ci is not None else None
        out["bca_ci"] = list(self.bca_ci) if self.bca_ci is not None else None
        return out


def _t_ci(diffs: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Student t interval mean ± t_{(1+c)/2, n-1} · sd/√n; a zero sd gives the point (d, d)."""
    from scipy import stats  # here, not at import: the API process starts without scipy

    n = diffs.size
    if n < 2:
        return None
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    mean = float(np.mean(diffs))
    lo, hi = _float(mean - half), _float(mean + half)
    return (lo, hi) if lo is not None and hi is not None else None


def _bca_ci(diffs: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, float] | None:
    """Bias-corrected and accelerated bootstrap interval of the mean diff (Efron 1987), resampling
    pairs (one-sample over the diffs is the same thing). None where BCa is undefined."""
    from scipy import stats  # here, not at import: the API process starts without scipy

    if diffs.size < 3:
        return None
    if np.all(diffs == diffs[0]):
        # Every resample has the same mean, so the interval collapses; scipy would answer NaN.
        return (float(diffs[0]), float(diffs[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns (and returns NaN) on degenerate resamples
        res = stats.bootstrap(
            (diffs,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="BCa", rng=seed
        )
    lo, hi = _float(res.confidence_interval.low), _float(res.confidence_interval.high)
    return (lo, hi) if lo is not None and hi is not None else None


def _wilcoxon(diffs: np.ndarray, seed: int) -> tuple[float | None, Literal["exact", "approx"] | None]:
    """Two-sided Wilcoxon signed-rank p-value with the method scipy's "auto" would choose, made
    explicit so the caller can report it: "exact" for the exact or fully enumerated null, else "approx"."""
    from scipy import stats  # here, not at import: the API process starts without scipy

    if diffs.size == 0:
        return None, None
    if np.all(diffs == 0):
        return 1.0, "exact"  # no evidence either way; scipy would divide by zero
    magnitudes = np.abs(diffs[diffs != 0])
    has_ties_or_zeros = magnitudes.size < diffs.size or np.unique(magnitudes).size < magnitudes.size
    method: Any
    label: Literal["exact", "approx"]
    if diffs.size <= _WILCOXON_EXACT_MAX_N and not has_ties_or_zeros:
        method, label = "exact", "exact"
    elif diffs.size <= _WILCOXON_PERMUTATION_MAX_N:
        method, label = stats.PermutationMethod(n_resamples=2**_WILCOXON_PERMUTATION_MAX_N, rng=seed), "exact"
    else:
        method, label = "asymptotic", "approx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample warnings from the normal approximation
        p = stats.wilcoxon(diffs, method=method).pvalue
    return _float(p), label


def _verdict(t_ci: tuple[float, float] | None, p: float | None, mode: Mode, confidence: float) -> Verdict:
    """A side wins only when the t CI excludes 0 in its favour and Wilcoxon agrees at 1 - confidence."""
    if t_ci is None or p is None or p >= 1 - confidence:
        return "inconclusive"
    lo, hi = t_ci
    a_side_negative = mode == "min"  # for losses a negative a - b favours A
    if hi < 0:
        return "a" if a_side_negative else "b"
    if lo > 0:
        return "b" if a_side_negative else "a"
    return "inconclusive"


def paired(
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    mode: Mode,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Paired:
    """Compare A and B seed by seed (common random numbers make each seed a matched pair).

    Args:
        a, b: seed -> finite metric value; only seeds present in both are paired.
        mode: "min" when smaller is better (losses), "max" otherwise.
        confidence: level of both intervals; the verdict's Wilcoxon threshold is 1 - confidence.
        n_resamples, seed: the BCa bootstrap's resample count and generator seed.
    """
    _check_mode(mode)
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid confidence: {confidence} (expected 0 < confidence < 1)")
    for side, values in (("a", a), ("b", b)):
        for s, v in values.items():
            if not math.isfinite(v):
                raise ValueError(f"Invalid value for {side} seed {s}: {v} (expected a finite number)")
    seeds = sorted(set(a) & set(b))
    a_arr = np.array([a[s] for s in seeds], dtype=float)
    b_arr = np.array([b[s] for s in seeds], dtype=float)
    diffs = a_arr - b_arr
    n = len(seeds)
    a_better = diffs < 0 if mode == "min" else diffs > 0
    b_better = diffs > 0 if mode == "min" else diffs < 0
    a_wins, b_wins = int(a_better.sum()), int(b_better.sum())
    ties = n - a_wins - b_wins
    t_ci = _t_ci(diffs, confidence)
    p, method = _wilcoxon(diffs, seed)
    return Paired(
        n=n,
        seeds=[int(s) for s in seeds],
        a_values=[float(v) for v in a_arr],
        b_values=[float(v) for v in b_arr],
        diffs=[float(v) for v in diffs],
        mean_diff=_float(np.mean(diffs)) if n else None,
        std_diff=_float(np.std(diffs, ddof=1)) if n >= 2 else None,
        t_ci=t_ci,
        bca_ci=_bca_ci(diffs, confidence, n_resamples, seed),
        wilcoxon_p=p,
        wilcoxon_method=method,
        a_wins=a_wins,
        b_wins=b_wins,
        ties=ties,
        p_a_better=(a_wins + ties / 2) / n if n else None,
        unpaired_a=sorted(int(s) for s in set(a) - set(b)),
        unpaired_b=sorted(int(s) for s in set(b) - set(a)),
        verdict=_verdict(t_ci, p, mode, confidence),
    )


MAX_MATRIX_CONFIGS = 30
"""The most configurations an all-pairs matrix compares (435 pairs, each with a BCa bootstrap)."""


def all_pairs(
    values: Mapping[str, Mapping[int, float]],
    *,
    mode: Mode,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`paired` for every ordered pair of distinct keys (both directions, so each cell reads as a
    row). Each unordered pair is computed once and mirrored (negated, swapped intervals; the same
    p). With many pairs some look significant by chance, so each cell also has ``p_holm``, the
    Wilcoxon p adjusted over all pairs by Holm's step-down method, and its verdict uses it."""
    names = list(values)
    if len(names) > MAX_MATRIX_CONFIGS:
        raise ValueError(f"{len(names)} configurations; an all-pairs matrix compares at most {MAX_MATRIX_CONFIGS}")
    keys = ["a", "b", "n", "mean_diff", "t_ci", "bca_ci", "wilcoxon_p", "p_holm", "p_a_better", "verdict"]
    halves: list[dict[str, Any]] = []
    for i, name_a in enumerate(names):
        for name_b in names[i + 1 :]:
            full = paired(
                values[name_a], values[name_b], mode=mode, confidence=confidence, n_resamples=n_resamples, seed=seed
            )
            cell = full.as_dict()
            cell["a"], cell["b"] = name_a, name_b
            halves.append(cell)
    for cell, adjusted in zip(halves, _holm([c["wilcoxon_p"] for c in halves]), strict=True):
        cell["p_holm"] = adjusted
        t_ci = tuple(cell["t_ci"]) if cell["t_ci"] is not None else None
        cell["verdict"] = _verdict(t_ci, adjusted, mode, confidence)  # type: ignore[arg-type]
    cells = []
    for cell in halves:
        cells.append({k: cell[k] for k in keys})
        cells.append({k: _mirrored(cell, k) for k in keys})
    return cells


def _mirrored(cell: Mapping[str, Any], key: str) -> Any:
    """``cell`` (A against B) read as B against A."""
    value = cell[key]
    if key in ("a", "b"):
        return cell["b" if key == "a" else "a"]
    if key == "mean_diff" and value is not None:
        return -value
    if key in ("t_ci", "bca_ci") and value is not None:
        return [-value[1], -value[0]]
    if key == "p_a_better" and value is not None:
        return 1.0 - value
    if key == "verdict":
        return {"a": "b", "b": "a"}.get(value, value)
    return value


def _holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``ps`` (None stays None and does not count)."""
    present = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _best_weights(n: int, ks: np.ndarray) -> np.ndarray:
    """W[k-1, i-1] = P(best of k draws is the i-th value from the worse end) = (i/n)^k - ((i-1)/n)^k."""
    cdf = (np.arange(n + 1) / n)[None, :] ** ks[:, None]
    return np.diff(cdf, axis=1)


def _worst_first(values: np.ndarray, mode: Mode) -> np.ndarray:
    ascending = np.sort(values, axis=-1)
    return ascending if mode == "max" else ascending[..., ::-1]


def expected_best(values: Sequence[float], *, mode: Mode) -> list[float]:
    """Expected best of k random-search trials, k = 1..N, drawn with replacement from the N observed
    values; exact from order statistics, not simulated (Dodge et al. 2019, "Show Your Work")."""
    _check_mode(mode)
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return []
    if not np.all(np.isfinite(arr)):
        raise ValueError("Invalid values: expected_best needs finite numbers")
    weights = _best_weights(arr.size, np.arange(1, arr.size + 1))
    return [float(v) for v in weights @ _worst_first(arr, mode)]


@dataclass(frozen=True)
class BudgetCurve:
    """Expected best after k trials with a bootstrap band (lo, hi) over resampled trial sets."""

    k: list[int]
    expected: list[float]
    lo: list[float]
    hi: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_curve(
    values: Sequence[float], *, mode: Mode, confidence: float = 0.95, n_bootstrap: int = 1000, seed: int = 0
) -> BudgetCurve:
    """`expected_best` with a percentile bootstrap band: the N trials are resampled with replacement
    `n_bootstrap` times and the curve recomputed on each set. The band is widened where needed to
    contain the estimate itself (resamples often miss the single best trial, pulling them low)."""
    expected = expected_best(values, mode=mode)
    n = len(expected)
    if n == 0:
        return BudgetCurve([], [], [], [])
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    resampled = _worst_first(arr[rng.integers(0, n, size=(n_bootstrap, n))], mode)
    curves = resampled @ _best_weights(n, np.arange(1, n + 1)).T
    lo = np.minimum(np.quantile(curves, (1 - confidence) / 2, axis=0), expected)
    hi = np.maximum(np.quantile(curves, (1 + confidence) / 2, axis=0), expected)
    return BudgetCurve(list(range(1, n + 1)), expected, [float(v) for v in lo], [float(v) for v in hi])


@dataclass(frozen=True)
class LrCell:
    """The runs of one group at one learning rate; mean/std over the finite values of stable runs."""

    lr: float
    runs: int
    diverged: int
    fraction: float
    mean: float | None
    std: float | None


@dataclass(frozen=True)
class DivergenceMap:
    """Per-lr divergence of one group, plus where stability ends and where divergence is certain."""

    lrs: list[LrCell]
    stable_max_lr: float | None
    diverged_min_lr: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def divergence_map(runs: Iterable[tuple[float, bool, float | None]]) -> DivergenceMap:
    """Group (lr, diverged, value) runs by lr. stable_max_lr: the largest lr at which no run diverged;
    diverged_min_lr: the smallest lr at which every run diverged (None where there is none)."""
    by_lr: dict[float, list[tuple[bool, float | None]]] = {}
    for lr, diverged, value in runs:
        if not math.isfinite(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        by_lr.setdefault(float(lr), []).append((bool(diverged), value))
    cells = []
    for lr in sorted(by_lr):
        group = by_lr[lr]
        n_div = sum(d for d, _ in group)
        finite = [float(v) for d, v in group if not d and v is not None and math.isfinite(v)]
        mean = float(np.mean(finite)) if finite else None
        std = _float(np.std(finite, ddof=1)) if len(finite) >= 2 else None
        cells.append(LrCell(lr, len(group), n_div, n_div / len(group), mean, std))
    stable = [c.lr for c in cells if c.diverged == 0]
    certain = [c.lr for c in cells if c.diverged == c.runs]
    return DivergenceMap(cells, max(stable) if stable else None, min(certain) if certain else None)


def time_to_target(
    epochs: Sequence[int], seconds: Sequence[float], values: Sequence[float | None], *, target: float, mode: Mode
) -> tuple[int | None, float | None]:
    """First epoch whose value reaches target (<= for "min", >= for "max") and the cumulative seconds
    through that epoch; (None, None) when it is never reached. Missing/non-finite values never reach."""
    _check_mode(mode)
    if not len(epochs) == len(seconds) == len(values):
        raise ValueError("epochs, seconds and values must have the same length")
    elapsed = 0.0
    for epoch, secs, value in zip(epochs, seconds, values, strict=True):
        elapsed += float(secs)
        if value is None or not math.isfinite(value):
            continue
        if (value <= target) if mode == "min" else (value >= target):
            return int(epoch), elapsed
    return None, None


def _ratios(row: Mapping[str, float | None], optimizers: list[str]) -> dict[str, float | None] | None:
    """t / fastest t for each optimizer on one problem (None: not solved); None when nobody solved it."""
    solved = {o: float(t) for o, t in row.items() if t is not None}
    for optimizer, t in solved.items():
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"Invalid time for {optimizer}: {t} (expected a positive number or None)")
    if not solved:
        return None
    fastest = min(solved.values())
    return {o: solved[o] / fastest if o in solved else None for o in optimizers}


def performance_profiles(
    times: Mapping[str, Mapping[str, float | None]], *, taus: Sequence[float] | None = None
) -> dict[str, Any]:
    """Performance profiles (Dolan & Moré 2002): on each problem r = t / fastest t; rho_o(tau) is the
    share of problems optimizer o solves within tau times the fastest. A problem nobody solved has no
    ratio; it is left out of the shares and listed under "unsolved". Default taus: 50 log-spaced
    points from 1 to the largest finite ratio (at least 2)."""
    optimizers = sorted({o for row in times.values() for o in row})
    ratios: dict[str, dict[str, float | None]] = {}
    unsolved = []
    for problem, row in times.items():
        problem_ratios = _ratios(row, optimizers)
        if problem_ratios is None:
            unsolved.append(problem)
        else:
            ratios[problem] = problem_ratios
    finite = [r for row in ratios.values() for r in row.values() if r is not None]
    if taus is None:
        # The grid plus every ratio itself and 2: rho steps exactly there, so rho(1), rho(2) and
        # each jump read exactly off the answer.
        grid = np.geomspace(1.0, max([2.0, *finite]), 50)
        taus = sorted({float(t) for t in grid} | {1.0, 2.0} | {float(r) for r in finite})
    profiles: dict[str, list[float]] = {}
    for o in optimizers:
        within = np.array([r if (r := row[o]) is not None else math.inf for row in ratios.values()])
        profiles[o] = [float(np.mean(within <= tau)) if within.size else 0.0 for tau in taus]
    return {"taus": [float(t) for t in taus], "profiles": profiles, "ratios": ratios, "unsolved": unsolved}
