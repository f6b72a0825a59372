"""estimate_rate / compare_rates (issue 12): point estimates against scipy's linregress, interval
coverage on synthetic power laws, the curvature check on a regime change, the slope-difference and
n-to-eps intervals against a slow reference bootstrap loop and against scipy.stats.bootstrap."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

import mixsim
from mixsim import rates as R

SIZES = np.unique(np.geomspace(1e3, 1e5, 8).round())


def power_law(rng, slope=-0.5, reps=20, noise=0.6, sizes=SIZES, scale=2.0):
    """Errors ``scale n^slope`` times log-normal noise, shape (m, reps)."""
    return scale * sizes[:, None] ** slope * rng.lognormal(0.0, noise, size=(sizes.size, reps))


LOG_AVERAGE = {  # written out again here, independently of mixsim.rates.SLOPE_AVERAGES
    "log": lambda e: np.mean(np.log(e)),
    "median": lambda e: np.log(np.median(e)),
    "mean": lambda e: np.log(np.mean(e)),
}


# ---------------------------------------------------------------------------------------------
# point estimates
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("average", ["log", "median", "mean"])
def test_point_estimates_match_linregress(average):
    errors = power_law(np.random.default_rng(5), reps=9)
    est = R.estimate_rate(SIZES, errors, average=average, n_boot=50)
    log_avg = np.array([LOG_AVERAGE[average](row) for row in errors])
    x = np.log(SIZES)
    full = stats.linregress(x, log_avg)
    assert est.slope == pytest.approx(full.slope, rel=1e-12) and est.intercept == pytest.approx(full.intercept, rel=1e-12)
    assert np.allclose(est.log_average, log_avg, rtol=1e-13)
    # halves: 8 sizes -> the first 4 and the last 4
    assert est.lower_slope == pytest.approx(stats.linregress(x[:4], log_avg[:4]).slope, rel=1e-12)
    assert est.upper_slope == pytest.approx(stats.linregress(x[4:], log_avg[4:]).slope, rel=1e-12)
    assert est.curvature == pytest.approx(est.lower_slope - est.upper_slope, abs=1e-14)
    assert np.allclose(est.local_slopes, np.diff(log_avg) / np.diff(x), rtol=1e-12)
    assert np.array_equal(est.local_sizes, np.stack([SIZES[:-1], SIZES[1:]], axis=1))
    # the bootstrap interval of each average holds the average
    assert np.all(est.average_low <= est.average_error * (1 + 1e-12)) and np.all(est.average_error <= est.average_high * (1 + 1e-12))


def test_odd_number_of_sizes_shares_the_middle_and_windows_of_three():
    sizes = SIZES[:7]
    errors = power_law(np.random.default_rng(6), sizes=sizes)
    est = R.estimate_rate(sizes, errors, window=3, n_boot=50)
    x, y = np.log(sizes), np.mean(np.log(errors), axis=1)
    assert est.lower_slope == pytest.approx(stats.linregress(x[:4], y[:4]).slope, rel=1e-12)
    assert est.upper_slope == pytest.approx(stats.linregress(x[3:], y[3:]).slope, rel=1e-12)
    assert est.local_slopes.shape == (5,)
    assert est.local_slopes[2] == pytest.approx(stats.linregress(x[2:5], y[2:5]).slope, rel=1e-12)


def test_exact_power_law_gives_zero_width_intervals():
    pattern = np.random.default_rng(1).lognormal(0.0, 0.5, size=10)  # the same replicates at every size
    errors = 3.0 * SIZES[:, None] ** -0.37 * pattern[None, :]
    for average in ("log", "median", "mean"):
        est = R.estimate_rate(SIZES, errors, average=average, n_boot=200)
        assert est.slope == pytest.approx(-0.37, abs=1e-12)
        assert np.allclose(est.local_slopes, -0.37) and est.curvature == pytest.approx(0.0, abs=1e-12)
        # resampling the same indices at every size would keep the line exact; independent
        # resamples per size do not, so only the point values are exact here
        assert est.slope_low <= -0.37 <= est.slope_high


@settings(max_examples=25, deadline=None)
@given(log_c=st.floats(-5, 5), power=st.floats(-1, 1), average=st.sampled_from(["log", "median", "mean"]))
def test_scale_and_power_equivariance(log_c, power, average):
    # errors * c * n^p: every slope and interval end moves by p, the intercept by log c, curvature not at all
    errors = power_law(np.random.default_rng(2), reps=6)
    base = R.estimate_rate(SIZES, errors, average=average, n_boot=200, rng=1)
    moved = R.estimate_rate(SIZES, np.exp(log_c) * errors * SIZES[:, None] ** power, average=average, n_boot=200, rng=1)
    for name in ("slope", "slope_low", "slope_high", "upper_slope", "upper_low", "rate", "rate_high"):
        assert getattr(moved, name) == pytest.approx(getattr(base, name) + power, abs=1e-9), name
    assert np.allclose(moved.local_low, base.local_low + power, atol=1e-9)
    assert (moved.curvature_low, moved.curvature_high) == pytest.approx((base.curvature_low, base.curvature_high), abs=1e-9)
    assert moved.intercept == pytest.approx(base.intercept + log_c, abs=1e-8)


def test_tidy_rows_logmean_alias_and_same_seed_same_numbers():
    rng = np.random.default_rng(7)
    errors = power_law(rng)
    n = np.repeat(SIZES, errors.shape[1])
    a = R.estimate_rate(n, errors.reshape(-1), replicate=np.tile(np.arange(20), SIZES.size), rng=3)
    b = R.estimate_rate(SIZES, errors, rng=3)
    c = R.estimate_rate(SIZES, errors, average="logmean", rng=3)
    for other in (b, c):
        assert other.to_row() == a.to_row()
        assert np.array_equal(other.local_low, a.local_low)
    assert R.estimate_rate(SIZES, errors, rng=4).slope_low != a.slope_low
    order = rng.permutation(n.size)
    shuffled = R.estimate_rate(n[order], errors.reshape(-1)[order], n_boot=50)
    assert shuffled.slope == pytest.approx(a.slope, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# coverage and the curvature check
# ---------------------------------------------------------------------------------------------

def test_primary_interval_covers_the_true_slope():
    # 1000 data sets (8 sizes x 40 replicates, log-normal per-replicate noise, true slope -0.5): the
    # 95% percentile interval of the slope of the mean log error covers -0.5 in 92%-98% of them
    # (binomial sd at 95% with 1000 sets is 0.7%; expected ~94.7%: the resampled variance is
    # (R - 1) / R of the true one). The curvature check flags a true power law ~5% of the time.
    rng = np.random.default_rng(20261203)
    cover = flagged = 0
    for _ in range(1000):
        est = R.estimate_rate(SIZES, power_law(rng, reps=40), n_boot=1000, rng=rng)
        cover += est.slope_low <= -0.5 <= est.slope_high
        flagged += est.power_law is False
    assert 0.92 <= cover / 1000 <= 0.98
    assert flagged / 1000 <= 0.09


@pytest.mark.slow
@pytest.mark.parametrize("average", ["log", "median", "mean"])
@pytest.mark.parametrize("interval", ["percentile", "bca"])
def test_coverage_with_heavy_tails_slow(average, interval):
    # log errors t-distributed with 3 degrees of freedom (a few fits far off), 40 replicates
    rng = np.random.default_rng(11)
    cover = 0
    for _ in range(300):
        errors = 2.0 * SIZES[:, None] ** -0.4 * np.exp(0.4 * rng.standard_t(3, size=(SIZES.size, 40)))
        est = R.estimate_rate(SIZES, errors, average=average, interval=interval, n_boot=2000, rng=rng)
        cover += est.slope_low <= -0.4 <= est.slope_high
    low = 0.80 if (average, interval) == ("mean", "bca") else 0.92  # BCa's acceleration is erratic there
    assert low <= cover / 300 <= 0.99


def step_errors(rng, reps=20):
    """A regime change (THEORY.md section 8): errors near 0.75 up to n = 2e3, then n^-0.4 from 0.06 at 3e3."""
    level = np.where(SIZES <= 2e3, 0.75, 0.06 * (SIZES / 3e3) ** -0.4)
    return level[:, None] * rng.lognormal(0.0, 0.4, size=(SIZES.size, reps))


def test_a_step_is_flagged_and_the_upper_half_slope_used():
    est = R.estimate_rate(SIZES, step_errors(np.random.default_rng(8)))
    assert est.power_law is False and est.note == "not a power law over this range"
    assert est.curvature_high < 0  # lower half steeper than the upper half
    assert est.rate_source == "upper_half"
    assert (est.rate, est.rate_low, est.rate_high) == (est.upper_slope, est.upper_low, est.upper_high)
    assert est.upper_low <= -0.4 <= est.upper_high
    none = R.estimate_rate(SIZES, step_errors(np.random.default_rng(8)), fallback="none")
    assert none.rate_source == "none" and np.isnan(none.rate)
    smooth = R.estimate_rate(SIZES, power_law(np.random.default_rng(8)))
    assert smooth.power_law is True and smooth.rate_source == "full" and smooth.rate == smooth.slope and smooth.note == ""
    two = R.estimate_rate(SIZES[:2], power_law(np.random.default_rng(8), sizes=SIZES[:2]))
    assert two.power_law is None and two.rate_source == "full" and np.isnan(two.curvature)


# ---------------------------------------------------------------------------------------------
# comparing two rates against a slow reference bootstrap
# ---------------------------------------------------------------------------------------------

def slow_side(sizes, errors, average, B, seed):
    """Per-resample (slope, intercept) of one side, one resample at a time with np.polyfit and the
    resample indices drawn in the order estimate_rate draws them (size by size, (B, R) at once)."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(e), size=(B, len(e))) for e in errors]
    x = np.log(sizes)
    h = (len(sizes) + 1) // 2  # halves: the first and the last ceil(m / 2) sizes
    lines, curvature = np.empty((B, 2)), np.empty(B)
    for b in range(B):
        y = [LOG_AVERAGE[average](np.asarray(e)[i[b]]) for e, i in zip(errors, idx)]
        lines[b] = np.polyfit(x, y, 1)
        curvature[b] = np.polyfit(x[:h], y[:h], 1)[0] - np.polyfit(x[-h:], y[-h:], 1)[0]
    point = np.polyfit(x, [LOG_AVERAGE[average](np.asarray(e)) for e in errors], 1)
    jack = []  # leave one replicate out, size by size
    for g, e in enumerate(errors):
        for r in range(len(e)):
            y = [LOG_AVERAGE[average](np.delete(np.asarray(f), r) if h == g else np.asarray(f)) for h, f in enumerate(errors)]
            jack.append((g, np.polyfit(x, y, 1)))
    return point, lines, jack, curvature


def slow_bca(estimate, boot, jack_by_group, level=0.95):
    """BCa from the textbook formulas (Efron & Tibshirani 14.14-14.15, one acceleration term per sample)."""
    z0 = stats.norm.ppf((np.sum(boot < estimate) + np.sum(boot <= estimate)) / (2 * boot.size))
    num = den = 0.0
    for values in jack_by_group:
        values = np.asarray(values)
        r = values.size
        u = (r - 1) * (values.mean() - values)
        num += np.sum(u**3) / r**3
        den += np.sum(u**2) / r**2
    a = num / (6 * den**1.5)
    z = stats.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    q = stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    return np.percentile(boot, 100 * q)


def two_sides():
    rng = np.random.default_rng(9)
    sizes_a, sizes_b = SIZES, SIZES[1:7]
    errors_a = [2.0 * s**-0.5 * rng.lognormal(0, 0.6, size=12 + i % 3) for i, s in enumerate(sizes_a)]
    errors_b = [1.0 * s**-0.3 * np.exp(0.5 * rng.standard_t(3, size=10)) for s in sizes_b]
    tidy = lambda sizes, errs: (np.concatenate([[s] * len(e) for s, e in zip(sizes, errs)]), np.concatenate(errs))  # noqa: E731
    return sizes_a, errors_a, sizes_b, errors_b, tidy(sizes_a, errors_a), tidy(sizes_b, errors_b)


@pytest.mark.parametrize("average", ["log", "median", "mean"])
@pytest.mark.parametrize("interval", ["percentile", "bca"])
def test_slope_difference_matches_a_slow_reference_loop(average, interval):
    sizes_a, errors_a, sizes_b, errors_b, (n_a, e_a), (n_b, e_b) = two_sides()
    B = 300
    cmp = R.compare_rates(n_a, e_a, n_b, e_b, average=average, interval=interval, n_boot=B, rng=(11, 12))
    pa, la, ja, ca = slow_side(sizes_a, errors_a, average, B, 11)
    pb, lb, jb, cb = slow_side(sizes_b, errors_b, average, B, 12)
    diff = la[:, 0] - lb[:, 0]
    if interval == "percentile":
        ref = np.percentile(diff, [2.5, 97.5])
    else:
        groups = [[j[1][0] - pb[0] for j in ja if j[0] == g] for g in range(len(sizes_a))]
        groups += [[pa[0] - j[1][0] for j in jb if j[0] == g] for g in range(len(sizes_b))]
        ref = slow_bca(pa[0] - pb[0], diff, groups)
    assert cmp.slope_difference == pytest.approx(pa[0] - pb[0], abs=1e-12)
    assert (cmp.slope_difference_low, cmp.slope_difference_high) == pytest.approx(tuple(ref), abs=1e-10)
    assert cmp.a.slope == pytest.approx(pa[0], abs=1e-12) and cmp.b.slope == pytest.approx(pb[0], abs=1e-12)
    if interval == "percentile":  # each side's own intervals come from the same resamples
        assert (cmp.a.slope_low, cmp.a.slope_high) == pytest.approx(tuple(np.percentile(la[:, 0], [2.5, 97.5])), abs=1e-10)
        assert (cmp.a.curvature_low, cmp.a.curvature_high) == pytest.approx(tuple(np.percentile(ca, [2.5, 97.5])), abs=1e-10)
        assert (cmp.b.curvature_low, cmp.b.curvature_high) == pytest.approx(tuple(np.percentile(cb, [2.5, 97.5])), abs=1e-10)
    # the sample-efficiency ratio: n each line needs for eps, per resample, then percentiles
    if cmp.a.rate_source == cmp.b.rate_source == "full" and interval == "percentile":
        assert cmp.eps.size == 3 and np.all(cmp.reached)
        log_eps = np.log(cmp.eps)
        need = lambda line: np.where(line[..., :1] < 0, (log_eps - line[..., 1:]) / line[..., :1], np.inf)  # noqa: E731
        assert np.allclose(cmp.n_a, np.exp(need(pa)), rtol=1e-9) and np.allclose(cmp.n_b, np.exp(need(pb)), rtol=1e-9)
        ref_ratio = np.percentile(need(la) - need(lb), [2.5, 97.5], axis=0)
        assert np.allclose(np.log(cmp.n_ratio_low), ref_ratio[0], atol=1e-9)
        assert np.allclose(np.log(cmp.n_ratio_high), ref_ratio[1], atol=1e-9)


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_slope_difference_agrees_with_scipy_bootstrap(method):
    # scipy.stats.bootstrap resamples every sample (here: every size of either side) independently,
    # as compare_rates does, with its own random numbers: the end points agree to Monte Carlo error
    # (with 4000 resamples each, an end point's Monte Carlo sd is ~0.05 bootstrap sd; allow 0.3).
    sizes_a, errors_a, sizes_b, errors_b, (n_a, e_a), (n_b, e_b) = two_sides()
    m_a = len(sizes_a)

    def statistic(*samples, axis=-1):
        ya = np.stack([np.mean(np.log(s), axis=axis) for s in samples[:m_a]], axis=-1)
        yb = np.stack([np.mean(np.log(s), axis=axis) for s in samples[m_a:]], axis=-1)
        return R.ols_slope(np.log(sizes_a), ya) - R.ols_slope(np.log(sizes_b), yb)

    ref = stats.bootstrap(errors_a + errors_b, statistic, n_resamples=4000, method=method, vectorized=True,
                          rng=np.random.default_rng(1)).confidence_interval
    cmp = R.compare_rates(n_a, e_a, n_b, e_b, n_boot=4000, interval=method.lower(), rng=2)
    sd = (cmp.slope_difference_high - cmp.slope_difference_low) / 3.92
    assert cmp.slope_difference_low == pytest.approx(ref.low, abs=0.3 * sd)
    assert cmp.slope_difference_high == pytest.approx(ref.high, abs=0.3 * sd)


# ---------------------------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("low, high, word", [
    (-0.3, -0.1, "faster"), (0.1, 0.4, "slower"), (-0.1, 0.2, "cannot tell"), (0.0, 0.2, "cannot tell"),
    (float("nan"), 0.1, "cannot tell"), (-np.inf, -1.0, "faster"), (1.0, np.inf, "slower"),
])
def test_verdict_words(low, high, word):
    assert R.verdict(low, high) == word and word in R.VERDICTS


def test_compare_verdicts_on_known_slopes():
    rng = np.random.default_rng(10)
    # shallow starts lower, so both lines cover errors 0.0095-0.053 (a range for the n ratio)
    steep, shallow = power_law(rng, slope=-0.5, reps=40), power_law(rng, slope=-0.25, reps=40, scale=0.3)
    same = power_law(rng, slope=-0.5, reps=40)
    faster = R.compare_rates(SIZES, steep, SIZES, shallow)
    assert faster.verdict == "faster" and faster.difference_high < 0
    assert faster.efficiency == ("faster",) * 3 and np.all(faster.n_ratio_high < 1)
    assert R.compare_rates(SIZES, shallow, SIZES, steep).verdict == "slower"
    tie = R.compare_rates(SIZES, steep, SIZES, same)
    assert tie.verdict == "cannot tell" and tie.difference_low < 0 < tie.difference_high
    # a side whose curvature check fails uses its upper-half slope (fallback) or gives no verdict
    step = step_errors(rng, reps=40)
    mixed = R.compare_rates(SIZES, step, SIZES, shallow)
    assert mixed.a.rate_source == "upper_half"
    assert mixed.difference == pytest.approx(mixed.a.upper_slope - mixed.b.slope, abs=1e-12)
    assert mixed.slope_difference == pytest.approx(mixed.a.slope - mixed.b.slope, abs=1e-12)
    none = R.compare_rates(SIZES, step, SIZES, shallow, fallback="none")
    assert none.verdict == "cannot tell" and np.isnan(none.difference) and none.eps.size == 0
    row = faster.to_row()
    assert row["verdict"] == "faster" and row["eps"] == faster.eps[1] and row["source_a"] == "full"


def test_explicit_eps_outside_the_fitted_range_is_marked():
    rng = np.random.default_rng(12)
    cmp = R.compare_rates(SIZES, power_law(rng), SIZES, power_law(rng, slope=-0.3, scale=0.5), eps=[1e-6, 0.03])
    assert cmp.reached.tolist() == [False, True]
    assert np.all(np.isfinite(cmp.n_ratio))


def test_comparison_reproducible_and_sides_independent():
    rng = np.random.default_rng(13)
    a, b = power_law(rng), power_law(rng)
    first, again = R.compare_rates(SIZES, a, SIZES, b, rng=5), R.compare_rates(SIZES, a, SIZES, b, rng=5)
    assert first.to_row() == again.to_row()
    # one seed is split into two streams: the sides are not resampled with the same indices
    same_data = R.compare_rates(SIZES, a, SIZES, a, rng=5)
    assert same_data.a.slope_low != same_data.b.slope_low
    with pytest.raises(ValueError, match="different seeds"):
        R.compare_rates(SIZES, a, SIZES, b, rng=(3, 3))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_bad_input_is_refused_by_name():
    errors = power_law(np.random.default_rng(14), reps=5)
    cases = [
        (dict(average="max"), "average"), (dict(level=95), "level"), (dict(n_boot=1), "n_boot"),
        (dict(interval="bootstrap-t"), "interval"), (dict(fallback="lower_half"), "fallback"),
        (dict(window=1), "window"), (dict(window=9), "window"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            R.estimate_rate(SIZES, errors, **kwargs)
    with pytest.raises(TypeError, match="average"):
        R.estimate_rate(SIZES, errors, average=1)
    n = np.repeat(SIZES, 5)
    with pytest.raises(ValueError, match="replicate"):
        R.estimate_rate(n, errors.reshape(-1), replicate=np.zeros(n.size))
    with pytest.raises(ValueError, match=">= 2 replicates"):
        R.estimate_rate(SIZES, errors[:, :1])
    with pytest.raises(ValueError, match="> 0"):
        R.estimate_rate(SIZES, np.where(errors > np.median(errors), 0.0, errors))
    with pytest.raises(ValueError, match="NaN"):
        R.estimate_rate(SIZES, np.where(errors > np.median(errors), np.nan, errors))
    with pytest.raises(ValueError, match="side b"):
        R.compare_rates(SIZES, errors, SIZES, errors[:, :1])
    with pytest.raises(ValueError, match="eps"):
        R.compare_rates(SIZES, errors, SIZES, errors, eps=[-1.0])
    with pytest.raises(ValueError, match="method"):
        R.bootstrap_interval(0.0, np.zeros(10), method="normal")


def test_exported():
    assert mixsim.estimate_rate is R.estimate_rate and mixsim.compare_rates is R.compare_rates


def test_bootstrap_interval_with_infinite_and_undefined_resamples():
    # +-inf resamples (a line that never reaches eps) are order statistics; NaN ones are dropped
    boot = np.concatenate([np.linspace(0.0, 1.0, 90), np.full(10, np.inf), [np.nan]])
    low, high = R.bootstrap_interval(0.5, boot, level=0.9)
    assert low == pytest.approx(np.percentile(boot[:100], 5), rel=1e-12) and high == np.inf
    low, high = R.bootstrap_interval(0.5, -boot, level=0.9)
    assert low == -np.inf and high == pytest.approx(np.percentile(-boot[:100], 95), rel=1e-12)
    # between a finite and an infinite order statistic: the nearer one, not inf - inf = NaN
    assert R.bootstrap_interval(0.0, np.array([0.0, 1.0, np.inf]), level=0.5) == (0.5, np.inf)
    assert R.bootstrap_interval(0.0, np.array([np.nan, np.nan])) == pytest.approx((np.nan, np.nan), nan_ok=True)
    with pytest.raises(ValueError, match="level"):
        R.bootstrap_interval(0.0, boot, level=1.5)


def test_replicate_ids_of_any_type():
    errors = power_law(np.random.default_rng(15), reps=3)
    n = np.repeat(SIZES, 3)
    ids = np.tile(np.array(["r0", "r1", "r2"]), SIZES.size)
    assert R.estimate_rate(n, errors.reshape(-1), replicate=ids, n_boot=20).slope == pytest.approx(
        R.estimate_rate(SIZES, errors, n_boot=20).slope, rel=1e-12)
    ids[1] = "r0"
    with pytest.raises(ValueError, match="'r0'"):
        R.estimate_rate(n, errors.reshape(-1), replicate=ids, n_boot=20)


# ---------------------------------------------------------------------------------------------
# paired comparison: both gates fitted on the same data sets
# ---------------------------------------------------------------------------------------------

def test_paired_difference_matches_a_slow_reference_loop():
    rng = np.random.default_rng(16)
    shared = rng.lognormal(0.0, 0.6, size=(SIZES.size, 15))  # a data set's luck, common to both gates
    a = 2.0 * SIZES[:, None] ** -0.5 * shared * rng.lognormal(0.0, 0.2, size=shared.shape)
    b = 1.0 * SIZES[:, None] ** -0.4 * shared * rng.lognormal(0.0, 0.2, size=shared.shape)
    B = 300
    cmp = R.compare_rates(SIZES, a, SIZES, b, paired=True, n_boot=B, rng=21, interval="bca")
    stream = np.random.default_rng(21)
    idx = [stream.integers(0, 15, size=(B, 15)) for _ in SIZES]
    x = np.log(SIZES)
    diff = np.array([np.polyfit(x, [np.mean(np.log(a[g, i[r]])) for g, i in enumerate(idx)], 1)[0]
                     - np.polyfit(x, [np.mean(np.log(b[g, i[r]])) for g, i in enumerate(idx)], 1)[0] for r in range(B)])
    point = np.polyfit(x, np.log(a).mean(1), 1)[0] - np.polyfit(x, np.log(b).mean(1), 1)[0]
    jack = [[np.polyfit(x, [np.mean(np.log(np.delete(a[h], r) if h == g else a[h])) for h in range(SIZES.size)], 1)[0]
             - np.polyfit(x, [np.mean(np.log(np.delete(b[h], r) if h == g else b[h])) for h in range(SIZES.size)], 1)[0]
             for r in range(15)] for g in range(SIZES.size)]
    assert cmp.slope_difference == pytest.approx(point, abs=1e-12)
    assert (cmp.slope_difference_low, cmp.slope_difference_high) == pytest.approx(tuple(slow_bca(point, diff, jack)), abs=1e-10)


def test_paired_resampling_keeps_the_correlation():
    rng = np.random.default_rng(17)
    a = power_law(rng, reps=30)
    b = 0.5 * a * SIZES[:, None] ** 0.1  # the same data sets: b's errors move with a's
    paired = R.compare_rates(SIZES, a, SIZES, b, paired=True)
    independent = R.compare_rates(SIZES, a, SIZES, b)
    assert paired.slope_difference == pytest.approx(-0.1, abs=1e-12)
    assert paired.slope_difference_high - paired.slope_difference_low < 1e-9  # the difference has no noise
    assert independent.slope_difference_high - independent.slope_difference_low > 0.05
    assert paired.verdict == "faster" and independent.verdict in R.VERDICTS


def test_paired_rows_are_matched_by_replicate_id():
    rng = np.random.default_rng(18)
    a, b = power_law(rng, reps=6), power_law(rng, reps=6, slope=-0.3)
    n, reps = np.repeat(SIZES, 6), np.tile(np.arange(6), SIZES.size)
    ref = R.compare_rates(SIZES, a, SIZES, b, paired=True, rng=4, n_boot=200)
    order = rng.permutation(n.size)
    shuffled = R.compare_rates(n[order], a.reshape(-1)[order], n, b.reshape(-1), replicate_a=reps[order], replicate_b=reps,
                               paired=True, rng=4, n_boot=200)
    assert shuffled.to_row() == ref.to_row()
    with pytest.raises(ValueError, match="replicate_a and replicate_b"):
        R.compare_rates(n, a.reshape(-1), n, b.reshape(-1), replicate_a=reps, replicate_b=reps + 10, paired=True)
    with pytest.raises(ValueError, match="same sample sizes"):
        R.compare_rates(SIZES, a, SIZES[:-1], b[:-1], paired=True)
    with pytest.raises(ValueError, match="one stream"):
        R.compare_rates(SIZES, a, SIZES, b, paired=True, rng=(1, 2))
    with pytest.raises(TypeError, match="paired"):
        R.compare_rates(SIZES, a, SIZES, b, paired="yes")
