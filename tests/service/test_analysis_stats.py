"""service.analysis.stats checked against scipy, direct formulas and hand-worked examples."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from service.analysis.stats import (
    Mode,
    all_pairs,
    budget_curve,
    divergence_map,
    expected_best,
    paired,
    performance_profiles,
    time_to_target,
)

# Eight seeds of two optimizers; A is lower (better for a loss) on most seeds, by varying amounts.
A = {0: 0.91, 1: 0.85, 2: 1.02, 3: 0.78, 4: 0.95, 5: 0.88, 6: 0.99, 7: 0.81}
B = {0: 0.97, 1: 0.86, 2: 1.10, 3: 0.80, 4: 0.94, 5: 0.97, 6: 1.03, 7: 0.90}
# Darwin's Zea mays cross- minus self-fertilised height differences (Fisher 1935), the classic
# Wilcoxon example: T = 24, exact two-sided p = 0.041259765625 (n = 15).
DARWIN = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def _assert_json_plain(value: Any) -> None:
    """Everything is a built-in type (no numpy scalars) and JSON encodes without NaN/inf."""
    json.dumps(value, allow_nan=False)
    if isinstance(value, dict):
        for v in value.values():
            _assert_json_plain(v)
    elif isinstance(value, list):
        for v in value:
            _assert_json_plain(v)
    else:
        assert value is None or type(value) in (int, float, str, bool), type(value)


def test_paired_statistics_match_formulas_and_scipy() -> None:
    result = paired(A, B, mode="min", n_resamples=4999, seed=3)
    a, b = np.array([A[s] for s in range(8)]), np.array([B[s] for s in range(8)])
    d = a - b
    assert result.n == 8
    assert result.seeds == list(range(8))
    assert result.diffs == pytest.approx(list(d))
    assert result.mean_diff == pytest.approx(d.mean())
    assert result.std_diff == pytest.approx(d.std(ddof=1))

    half = stats.t.ppf(0.975, 7) * d.std(ddof=1) / math.sqrt(8)
    assert result.t_ci == pytest.approx((d.mean() - half, d.mean() + half))
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert result.t_ci == pytest.approx((ci.low, ci.high))

    boot = stats.bootstrap((d,), np.mean, n_resamples=4999, method="BCa", rng=3).confidence_interval
    assert result.bca_ci == pytest.approx((boot.low, boot.high))

    assert result.wilcoxon_method == "exact"
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)


def test_confidence_level_changes_both_intervals() -> None:
    d = np.array([A[s] - B[s] for s in range(8)])
    result = paired(A, B, mode="min", confidence=0.8, n_resamples=2000)
    half = stats.t.ppf(0.9, 7) * d.std(ddof=1) / math.sqrt(8)
    assert result.t_ci == pytest.approx((d.mean() - half, d.mean() + half))
    boot = stats.bootstrap((d,), np.mean, n_resamples=2000, confidence_level=0.8, method="BCa", rng=0)
    assert result.bca_ci == pytest.approx((boot.confidence_interval.low, boot.confidence_interval.high))


def test_wilcoxon_textbook_value_and_direct_enumeration() -> None:
    result = paired(dict(enumerate(map(float, DARWIN))), dict.fromkeys(range(15), 0.0), mode="max")
    # Direct: subsets of ranks 1..15 whose sum is <= T = 24, doubled, over 2**15 sign patterns.
    at_most_t = sum(
        1
        for signs in itertools.product((0, 1), repeat=15)
        if sum(r * s for r, s in zip(range(1, 16), signs, strict=True)) <= 24
    )
    assert result.wilcoxon_p == pytest.approx(2 * at_most_t / 2**15)
    assert result.wilcoxon_p == pytest.approx(0.041259765625)
    assert result.wilcoxon_method == "exact"


def test_wilcoxon_with_ties_enumerates_for_small_n_and_approximates_for_large_n() -> None:
    tied = {i: v for i, v in enumerate([0.1, 0.1, 0.2, -0.3, 0.4, 0.5, 0.6, 0.0])}
    result = paired(tied, dict.fromkeys(tied, 0.0), mode="min")
    assert result.wilcoxon_method == "exact"  # 2**8 sign flips, all enumerated
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(list(tied.values()), method="auto").pvalue)

    rng = np.random.default_rng(1)
    large = {i: float(v) for i, v in enumerate(rng.normal(0.2, 1.0, 60))}
    result = paired(large, dict.fromkeys(large, 0.0), mode="min")
    assert result.wilcoxon_method == "approx"
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(list(large.values()), method="asymptotic").pvalue)


@pytest.mark.parametrize(("mode", "a_wins", "b_wins"), [("min", 2, 1), ("max", 1, 2)])
def test_wins_ties_and_probability_of_a_beating_b(mode: Mode, a_wins: int, b_wins: int) -> None:
    a = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 9: 7.0}
    b = {1: 2.0, 2: 3.0, 3: 1.0, 4: 4.0, 5: 0.5, 6: 0.5}
    result = paired(a, b, mode=mode, n_resamples=500)
    assert (result.a_wins, result.b_wins, result.ties) == (a_wins, b_wins, 1)
    assert result.p_a_better == pytest.approx((a_wins + 0.5) / 4)
    assert result.seeds == [1, 2, 3, 4]
    assert result.unpaired_a == [9]
    assert result.unpaired_b == [5, 6]


def test_degenerate_inputs_give_none_never_nan() -> None:
    empty = paired({1: 1.0}, {2: 1.0}, mode="min")
    assert (empty.n, empty.mean_diff, empty.std_diff, empty.t_ci, empty.bca_ci) == (0, None, None, None, None)
    assert (empty.wilcoxon_p, empty.wilcoxon_method, empty.p_a_better, empty.verdict) == (
        None,
        None,
        None,
        "inconclusive",
    )

    one = paired({1: 1.0}, {1: 2.0}, mode="min")
    assert (one.mean_diff, one.std_diff, one.t_ci, one.bca_ci) == (-1.0, None, None, None)
    assert one.wilcoxon_p == pytest.approx(1.0)

    two = paired({1: 1.0, 2: 2.0}, {1: 2.0, 2: 2.5}, mode="min")
    assert two.t_ci is not None
    assert two.bca_ci is None

    same = paired(dict.fromkeys(range(6), 1.0), dict.fromkeys(range(6), 1.5), mode="min")
    assert same.std_diff == 0.0
    assert same.t_ci == (-0.5, -0.5)
    assert same.bca_ci == (-0.5, -0.5)

    zero = paired(dict.fromkeys(range(5), 1.0), dict.fromkeys(range(5), 1.0), mode="min")
    assert zero.wilcoxon_p == 1.0
    assert zero.verdict == "inconclusive"
    assert zero.p_a_better == 0.5
    for result in (empty, one, two, same, zero):
        _assert_json_plain(result.as_dict())


def test_verdict_needs_both_the_t_interval_and_wilcoxon() -> None:
    a = {i: 1.0 + 0.01 * i for i in range(10)}
    b = {i: 1.2 + 0.013 * i for i in range(10)}
    assert paired(a, b, mode="min").verdict == "a"
    assert paired(b, a, mode="min").verdict == "b"
    assert paired(a, b, mode="max").verdict == "b"
    # Five equal gaps: the t interval is the point -0.5 (excludes 0) but the exact Wilcoxon p is
    # 2 / 2**5 = 0.0625 >= 0.05, so no verdict; six gaps give 2 / 2**6 < 0.05.
    five = paired(dict.fromkeys(range(5), 1.0), dict.fromkeys(range(5), 1.5), mode="min")
    assert five.wilcoxon_p == pytest.approx(0.0625)
    assert five.verdict == "inconclusive"
    assert paired(dict.fromkeys(range(6), 1.0), dict.fromkeys(range(6), 1.5), mode="min").verdict == "a"
    # Noisy data whose t interval straddles 0.
    assert paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 1.0, 2: 3.5}, mode="min").verdict == "inconclusive"


def test_paired_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="seed 2"):
        paired({1: 1.0, 2: math.nan}, {1: 1.0}, mode="min")
    with pytest.raises(ValueError, match="mode"):
        paired(A, B, mode="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confidence"):
        paired(A, B, mode="min", confidence=1.5)


def test_as_dict_is_json_ready() -> None:
    out = paired(A, B, mode="min", n_resamples=500).as_dict()
    _assert_json_plain(out)
    assert isinstance(out["t_ci"], list)
    assert set(out) >= {"n", "seeds", "diffs", "t_ci", "bca_ci", "wilcoxon_p", "wilcoxon_method", "verdict"}


def test_all_pairs_covers_every_ordered_pair() -> None:
    values = {"adam": A, "sgd": B, "rmsprop": {s: v + 0.05 for s, v in A.items()}}
    cells = all_pairs(values, mode="min", n_resamples=500)
    assert {(c["a"], c["b"]) for c in cells} == {(x, y) for x in values for y in values if x != y}
    keys = {"a", "b", "n", "mean_diff", "t_ci", "bca_ci", "wilcoxon_p", "p_holm", "p_a_better", "verdict"}
    assert all(set(c) == keys for c in cells)
    cell = next(c for c in cells if (c["a"], c["b"]) == ("adam", "sgd"))
    direct = paired(A, B, mode="min", n_resamples=500)
    assert cell["mean_diff"] == pytest.approx(direct.mean_diff)
    assert cell["bca_ci"] == pytest.approx(list(direct.bca_ci or ()))
    mirror = next(c for c in cells if (c["a"], c["b"]) == ("sgd", "adam"))
    backwards = paired(B, A, mode="min", n_resamples=500)
    assert mirror["mean_diff"] == pytest.approx(backwards.mean_diff)
    assert mirror["t_ci"] == pytest.approx(list(backwards.t_ci or ()))
    assert mirror["wilcoxon_p"] == pytest.approx(backwards.wilcoxon_p)
    assert mirror["p_a_better"] == pytest.approx(backwards.p_a_better)
    # Holm over the 3 unordered pairs: the smallest p times 3, then monotone.
    ps = sorted(c["wilcoxon_p"] for c in cells[::2])
    assert min(c["p_holm"] for c in cells) == pytest.approx(min(1.0, 3 * ps[0]))
    assert all(c["p_holm"] >= c["wilcoxon_p"] for c in cells)
    _assert_json_plain(cells)


def test_holm_adjustment_by_hand() -> None:
    from service.analysis.stats import _holm

    assert _holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert _holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


VALUES = [0.42, 0.35, 0.9, 0.51, 0.38, 0.6, 0.47, 0.33, 0.75, 0.4]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_expected_best_matches_monte_carlo(mode: Mode) -> None:
    curve = expected_best(VALUES, mode=mode)
    assert len(curve) == len(VALUES)
    rng = np.random.default_rng(7)
    pick = np.min if mode == "min" else np.max
    for k in (1, 2, 4, 10):
        draws = rng.choice(VALUES, size=(200_000, k))
        assert curve[k - 1] == pytest.approx(pick(draws, axis=1).mean(), abs=3e-3)
    assert curve[0] == pytest.approx(np.mean(VALUES))
    steps = np.diff(curve)
    assert np.all(steps <= 1e-12) if mode == "min" else np.all(steps >= -1e-12)


def test_expected_best_tends_to_the_best_value() -> None:
    many = VALUES * 30  # N = 300, so k = N is large enough to almost surely draw the minimum
    assert expected_best(many, mode="min")[-1] == pytest.approx(min(VALUES), abs=1e-3)
    assert expected_best(many, mode="max")[-1] == pytest.approx(max(VALUES), abs=1e-3)
    assert expected_best([], mode="min") == []
    assert expected_best([2.5], mode="max") == [2.5]
    with pytest.raises(ValueError, match="finite"):
        expected_best([1.0, math.inf], mode="min")


@pytest.mark.parametrize("mode", ["min", "max"])
def test_budget_curve_band_contains_the_estimate(mode: Mode) -> None:
    curve = budget_curve(VALUES, mode=mode, n_bootstrap=500, seed=2)
    assert curve.k == list(range(1, 11))
    assert curve.expected == pytest.approx(expected_best(VALUES, mode=mode))
    assert all(lo <= e <= hi for lo, e, hi in zip(curve.lo, curve.expected, curve.hi, strict=True))
    assert curve.hi[0] - curve.lo[0] > 0.05  # a real band, not collapsed onto the estimate
    assert budget_curve(VALUES, mode=mode, n_bootstrap=500, seed=2) == curve
    _assert_json_plain(curve.as_dict())
    assert budget_curve([], mode="min").as_dict() == {"k": [], "expected": [], "lo": [], "hi": []}


def test_divergence_map_on_hand_built_runs() -> None:
    runs = [
        (0.1, False, 0.5),
        (0.1, False, 0.7),
        (0.01, False, 0.9),
        (0.01, False, None),
        (1.0, True, None),
        (1.0, False, 2.0),
        (3.0, True, math.nan),
        (3.0, True, 9.0),
        (10.0, True, None),
    ]
    result = divergence_map(runs)
    assert [c.lr for c in result.lrs] == [0.01, 0.1, 1.0, 3.0, 10.0]
    assert [c.runs for c in result.lrs] == [2, 2, 2, 2, 1]
    assert [c.fraction for c in result.lrs] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert result.lrs[0].mean == 0.9
    assert result.lrs[0].std is None
    assert result.lrs[1].mean == pytest.approx(0.6)
    assert result.lrs[1].std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert result.lrs[2].mean == 2.0  # the diverged run is excluded
    assert result.lrs[3].mean is None  # a diverged run's value never counts
    assert (result.stable_max_lr, result.diverged_min_lr) == (0.1, 3.0)
    _assert_json_plain(result.as_dict())
    assert divergence_map([(0.5, True, None), (2.0, False, 1.0)]).stable_max_lr == 2.0
    empty = divergence_map([])
    assert (empty.lrs, empty.stable_max_lr, empty.diverged_min_lr) == ([], None, None)


def test_time_to_target() -> None:
    epochs, seconds = [1, 2, 3, 4], [1.5, 2.0, 2.5, 3.0]
    assert time_to_target(epochs, seconds, [0.9, None, 0.4, 0.3], target=0.5, mode="min") == (3, 6.0)
    assert time_to_target(epochs, seconds, [0.9, 0.5, 0.4, 0.3], target=0.5, mode="min") == (2, 3.5)
    assert time_to_target(epochs, seconds, [0.1, 0.6, math.nan, 0.9], target=0.8, mode="max") == (4, 9.0)
    assert time_to_target(epochs, seconds, [0.9, 0.8, 0.7, 0.6], target=0.5, mode="min") == (None, None)
    with pytest.raises(ValueError, match="same length"):
        time_to_target([1], [1.0, 2.0], [0.1], target=0.5, mode="min")


def test_performance_profiles_hand_worked() -> None:
    times: dict[str, dict[str, float | None]] = {
        "p1": {"adam": 2.0, "sgd": 4.0, "lion": None},
        "p2": {"adam": 3.0, "sgd": 3.0, "lion": 6.0},
        "p3": {"adam": 10.0, "sgd": 5.0, "lion": 5.0},
        "p4": {"adam": None, "sgd": None, "lion": None},
    }
    out = performance_profiles(times, taus=[1.0, 1.5, 2.0, 4.0])
    assert out["unsolved"] == ["p4"]
    assert out["ratios"] == {
        "p1": {"adam": 1.0, "lion": None, "sgd": 2.0},
        "p2": {"adam": 1.0, "lion": 2.0, "sgd": 1.0},
        "p3": {"adam": 2.0, "lion": 1.0, "sgd": 1.0},
    }
    # rho(1) is each optimizer's share of (solved) problems it wins, ties counting for both.
    assert out["profiles"]["adam"] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    assert out["profiles"]["sgd"] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    assert out["profiles"]["lion"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert out["taus"] == [1.0, 1.5, 2.0, 4.0]
    _assert_json_plain(out)


def test_performance_profile_default_taus_and_bad_times() -> None:
    out = performance_profiles({"p": {"adam": 1.0, "sgd": 5.0}, "q": {"adam": 2.0, "sgd": 2.0}})
    assert len(out["taus"]) >= 50
    assert {1.0, 2.0, 5.0} <= set(out["taus"]), "rho is exact at 1, 2 and every ratio"
    assert out["profiles"]["sgd"][out["taus"].index(2.0)] == 0.5
    assert (out["taus"][0], out["taus"][-1]) == (pytest.approx(1.0), pytest.approx(5.0))
    assert out["profiles"]["sgd"][-1] == 1.0
    close = performance_profiles({"p": {"adam": 1.0, "sgd": 1.1}})
    assert close["taus"][-1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="sgd"):
        performance_profiles({"p": {"adam": 1.0, "sgd": -1.0}})
