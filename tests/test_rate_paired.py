"""The n-to-eps ratio of compare_rates (issue 24, item 3): how many samples side a needs for the
error side b reaches at n_ref, paired (matched truths, common random numbers) or not, against a slow
reference bootstrap written here and against the closed form on exact power laws."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mixsim import rates as R

SIZES = np.unique(np.geomspace(1e3, 1e5, 6).round())
REPS = 12


def matched_errors(seed):
    """Errors of two arms on the same data sets: a = 2 n^-0.5, b = n^-0.4, times a shared and an own noise."""
    rng = np.random.default_rng(seed)
    shared = rng.lognormal(0.0, 0.5, size=(SIZES.size, REPS))
    a = 2.0 * SIZES[:, None] ** -0.5 * shared * rng.lognormal(0.0, 0.05, size=shared.shape)
    b = 1.0 * SIZES[:, None] ** -0.4 * shared * rng.lognormal(0.0, 0.05, size=shared.shape)
    return a, b


def slow_log_ratio(a, b, n_ref):
    """log(n_a(eps_b(n_ref)) / n_ref) from np.polyfit lines of the mean log errors, one data set at a time."""
    x = np.log(SIZES)
    slope_a, int_a = np.polyfit(x, [np.mean(np.log(row)) for row in a], 1)
    slope_b, int_b = np.polyfit(x, [np.mean(np.log(row)) for row in b], 1)
    log_eps = int_b + slope_b * np.log(n_ref)
    return (log_eps - int_a) / slope_a - np.log(n_ref) if slope_a < 0 else np.inf


def slow_bca(estimate, boot, jack_by_group, level=0.95):
    """BCa from the textbook formulas (Efron & Tibshirani 14.14-14.15, one acceleration term per sample)."""
    z0 = stats.norm.ppf((np.sum(boot < estimate) + np.sum(boot <= estimate)) / (2 * boot.size))
    num = den = 0.0
    for values in jack_by_group:
        u = (len(values) - 1) * (np.mean(values) - np.asarray(values))
        num += np.sum(u**3) / len(values) ** 3
        den += np.sum(u**2) / len(values) ** 2
    acc = num / (6 * den**1.5)
    z = stats.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    return np.percentile(boot, 100 * stats.norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z))))


@pytest.mark.parametrize("interval", ["percentile", "bca"])
def test_paired_n_to_eps_ratio_matches_a_slow_reference_loop(interval):
    a, b = matched_errors(3)
    B, n_ref = 300, np.array([3e3, 2e4])
    cmp = R.compare_rates(SIZES, a, SIZES, b, paired=True, n_boot=B, rng=8, interval=interval, n_ref=n_ref)
    # the same resample indices from the same seed: size by size, (B, R) at once, used for both arms
    stream = np.random.default_rng(8)
    idx = [stream.integers(0, REPS, size=(B, REPS)) for _ in SIZES]
    for j, ref in enumerate(n_ref):
        point = slow_log_ratio(a, b, ref)
        boot = np.array([slow_log_ratio(np.array([a[g, i[r]] for g, i in enumerate(idx)]),
                                        np.array([b[g, i[r]] for g, i in enumerate(idx)]), ref) for r in range(B)])
        if interval == "percentile":
            low, high = np.percentile(boot, [2.5, 97.5])
        else:  # the jackknife leaves replicate r of size g out of both arms at once
            drop = lambda e, g, r: [np.delete(row, r) if h == g else row for h, row in enumerate(e)]  # noqa: E731
            jack = [[slow_log_ratio(drop(a, g, r), drop(b, g, r), ref) for r in range(REPS)] for g in range(SIZES.size)]
            low, high = slow_bca(point, boot, jack)
        assert np.log(cmp.ref_ratio[j]) == pytest.approx(point, abs=1e-10)
        assert (np.log(cmp.ref_ratio_low[j]), np.log(cmp.ref_ratio_high[j])) == pytest.approx((low, high), abs=1e-9)
        slope_b, int_b = np.polyfit(np.log(SIZES), np.log(b).mean(1), 1)
        assert cmp.eps_ref[j] == pytest.approx(np.exp(int_b + slope_b * np.log(ref)), rel=1e-10)
        assert cmp.n_a_ref[j] == pytest.approx(ref * np.exp(point), rel=1e-10)
    assert cmp.ref_reached.tolist() == [True, True]
    row = cmp.to_row()
    assert row["n_ref"] == 2e4 and row["ref_ratio"] == cmp.ref_ratio[1] and row["ref_efficiency"] == cmp.ref_efficiency[1]


def test_the_ratio_on_exact_power_laws_is_the_closed_form():
    # a = 2 n^-0.5 and b = n^-0.4 with the same noise on both: eps_b(n) = n^-0.4 (times the noise's
    # mean log), and a reaches it at n_a = 4 n^0.8, so n_a / n_ref = 4 n_ref^-0.2, with no noise left
    rng = np.random.default_rng(4)
    shared = rng.lognormal(0.0, 0.5, size=(SIZES.size, REPS))
    shared /= np.exp(np.log(shared).mean(axis=1, keepdims=True))  # mean log 0 at every size: lines exact
    a, b = 2.0 * SIZES[:, None] ** -0.5 * shared, SIZES[:, None] ** -0.4 * shared
    cmp = R.compare_rates(SIZES, a, SIZES, b, paired=True, n_ref=[1e4, 5e4], n_boot=500)
    np.testing.assert_allclose(cmp.ref_ratio, 4.0 * np.array([1e4, 5e4]) ** -0.2, rtol=1e-9)
    np.testing.assert_allclose(cmp.n_a_ref, 4.0 * np.array([1e4, 5e4]) ** 0.8, rtol=1e-9)
    assert cmp.ref_efficiency == ("faster", "faster")  # 4 n^-0.2 < 1 here
    independent = R.compare_rates(SIZES, a, SIZES, b, n_ref=[1e4, 5e4], n_boot=500)
    np.testing.assert_allclose(independent.ref_ratio, cmp.ref_ratio, rtol=1e-12)  # same point, other interval
    width = lambda c: np.log(c.ref_ratio_high / c.ref_ratio_low)  # noqa: E731
    assert np.all(width(cmp) < width(independent))  # the shared noise moves both lines together


def test_pairing_narrows_the_ratio_interval_and_the_default_reference():
    a, b = matched_errors(5)
    paired = R.compare_rates(SIZES, a, SIZES, b, paired=True, rng=1)
    independent = R.compare_rates(SIZES, a, SIZES, b, rng=1)
    width = lambda c: np.log(c.ref_ratio_high / c.ref_ratio_low)  # noqa: E731
    assert np.all(width(paired) < 0.8 * width(independent))
    # default: one reference, the geometric middle of the sizes of b's rate line (all, or the upper half)
    used = SIZES if paired.b.rate_source == "full" else SIZES[-((SIZES.size + 1) // 2):]
    assert paired.n_ref.tolist() == pytest.approx([np.exp(np.log(used).mean())], rel=1e-12)
    exact = SIZES[:, None] ** -0.4 * np.exp(np.linspace(-0.3, 0.3, REPS))  # an exact power law: rate over all sizes
    cmp = R.compare_rates(SIZES, exact, SIZES, exact * 0.5, paired=True, n_boot=50)
    assert cmp.b.rate_source == "full" and cmp.n_ref.tolist() == pytest.approx([np.exp(np.log(SIZES).mean())], rel=1e-12)
    with pytest.raises(ValueError, match="n_ref"):
        R.compare_rates(SIZES, a, SIZES, b, n_ref=[0.0])


def test_a_side_without_a_rate_has_no_ratio():
    a, b = matched_errors(6)
    step = np.where(SIZES[:, None] <= 3e3, 0.75, 0.06 * (SIZES[:, None] / 3e3) ** -0.4) * b / b.mean(1, keepdims=True)
    cmp = R.compare_rates(SIZES, a, SIZES, step, fallback="none", n_ref=[1e4])
    assert cmp.b.rate_source == "none"  # a step: b's curvature check fails, and fallback="none" gives no rate
    assert np.isnan(cmp.ref_ratio).all() and cmp.ref_efficiency == ("cannot tell",) and not cmp.ref_reached.any()
    assert R.compare_rates(SIZES, a, SIZES, step, fallback="none").n_ref.size == 0  # no default reference either
