"""fit_rate (the compatibility wrapper over estimate_rate) against scipy's linregress and exact power laws, interval coverage on synthetic data,
property tests; theory_rate against THEORY.md section 4 and the D2 exponent table."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

import mixsim
from mixsim import losses as L
from mixsim import rates as R

SIZES = np.unique(np.geomspace(1e3, 1e5, 8).round())


def synthetic(rng, slope=-0.5, reps=20, noise=0.6, sizes=SIZES):
    """Errors C n^slope times log-normal noise, shape (m, reps)."""
    return 2.0 * sizes[:, None] ** slope * rng.lognormal(0.0, noise, size=(sizes.size, reps))


def test_exact_power_law():
    errors = np.repeat((3.0 * SIZES**-0.37)[:, None], 5, axis=1)
    fit = R.fit_rate(SIZES, errors)
    assert fit.slope == pytest.approx(-0.37, abs=1e-12)
    assert fit.intercept == pytest.approx(np.log(3.0), abs=1e-10)
    assert fit.ci_low == pytest.approx(-0.37, abs=1e-10) and fit.ci_high == pytest.approx(-0.37, abs=1e-10)
    assert np.allclose(fit.local_slopes, -0.37)
    assert fit.n_points == SIZES.size and fit.local_slopes.shape == (SIZES.size - 1,)
    assert np.array_equal(fit.n_replicates, np.full(SIZES.size, 5))


def test_matches_linregress_and_tidy_layout():
    rng = np.random.default_rng(3)
    errors = synthetic(rng)
    fit = R.fit_rate(SIZES, errors, average="mean")
    ref = stats.linregress(np.log(SIZES), np.log(errors.mean(axis=1)))
    half = stats.t.ppf(0.975, SIZES.size - 2) * ref.stderr
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-12)
    assert fit.stderr == pytest.approx(ref.stderr, rel=1e-10)
    assert (fit.ci_low, fit.ci_high) == pytest.approx((ref.slope - half, ref.slope + half), rel=1e-10)
    # one entry per replicate, in any order, gives the same fit (and the same bootstrap groups)
    tidy = R.fit_rate(np.repeat(SIZES, errors.shape[1]), errors.reshape(-1), average="mean")
    assert tidy.slope == fit.slope and tidy.ci_low == fit.ci_low and tidy.boot_low == fit.boot_low
    order = rng.permutation(errors.size)
    shuffled = R.fit_rate(np.repeat(SIZES, errors.shape[1])[order], errors.reshape(-1)[order], average="mean", n_boot=0)
    assert shuffled.slope == pytest.approx(fit.slope, rel=1e-12)


@pytest.mark.parametrize("average, summary", [("median", np.median), ("logmean", lambda e, axis: np.exp(np.log(e).mean(axis)))])
def test_averages(average, summary):
    errors = synthetic(np.random.default_rng(4))
    fit = R.fit_rate(SIZES, errors, average=average, n_boot=0)
    assert np.allclose(fit.average, summary(errors, axis=1))
    assert fit.slope == pytest.approx(stats.linregress(np.log(SIZES), np.log(fit.average)).slope, rel=1e-12)
    assert np.isnan(fit.boot_low) and fit.method == R.canonical_average(average)


def test_interval_coverage_on_synthetic_power_laws():
    # 200 data sets (8 sizes x 20 replicates, log-normal noise): the 95% t-interval must cover the
    # true slope 90%-99% of the time (binomial sd at 95% is 1.5%; the band is about +-3 sd).
    rng = np.random.default_rng(2024)
    t_cover = boot_cover = 0
    for _ in range(200):
        fit = R.fit_rate(SIZES, synthetic(rng, slope=-0.5), n_boot=400, rng=rng)
        t_cover += fit.covers(-0.5)
        boot_cover += fit.covers(-0.5, interval="bootstrap")
    assert 0.90 <= t_cover / 200 <= 0.99
    # the percentile bootstrap slightly under-covers with 20 replicates ((R - 1) / R variance)
    assert 0.85 <= boot_cover / 200 <= 0.99


def test_two_sizes_and_bootstrap_reproducibility():
    errors = synthetic(np.random.default_rng(5), sizes=np.array([1e3, 1e4]))
    fit = R.fit_rate([1e3, 1e4], errors)
    assert np.isfinite(fit.slope) and np.isnan(fit.ci_low) and np.isnan(fit.stderr)
    assert np.isfinite(fit.boot_low) and fit.boot_low <= fit.boot_high
    assert R.fit_rate([1e3, 1e4], errors, rng=7).boot_low == R.fit_rate([1e3, 1e4], errors, rng=7).boot_low


@settings(max_examples=40, deadline=None)
@given(st.floats(-2, 2), st.floats(-1, 1), st.integers(0, 2**32 - 1))
def test_scale_and_power_equivariance(log_c, power, seed):
    # multiplying every error by c shifts the intercept by log c; by n^power, the slope by power
    errors = synthetic(np.random.default_rng(seed), reps=4)
    base = R.fit_rate(SIZES, errors, n_boot=50, rng=1)
    moved = R.fit_rate(SIZES, np.exp(log_c) * errors * SIZES[:, None] ** power, n_boot=50, rng=1)
    assert moved.slope == pytest.approx(base.slope + power, abs=1e-9)
    assert moved.intercept == pytest.approx(base.intercept + log_c, abs=1e-8)
    assert moved.ci_high - moved.ci_low == pytest.approx(base.ci_high - base.ci_low, abs=1e-9)
    assert moved.boot_low == pytest.approx(base.boot_low + power, abs=1e-9)


def test_bad_inputs():
    errors = synthetic(np.random.default_rng(6))
    with pytest.raises(ValueError, match="2 distinct"):
        R.fit_rate([100.0] * 5, [0.1] * 5)
    with pytest.raises(ValueError, match="> 0"):
        R.fit_rate([100, 200, 400], [0.1, 0.0, 0.2])
    with pytest.raises(ValueError, match="> 0"):
        R.fit_rate([100, 200, 400], [0.1, -1.0, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        R.fit_rate([100, 200, 400], [0.1, np.nan, 0.2])
    with pytest.raises(ValueError, match="shape"):
        R.fit_rate([100, 200], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="n must"):
        R.fit_rate([100, -200, 400], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="average"):
        R.fit_rate(SIZES, errors, average="max")
    with pytest.raises(ValueError, match="level"):
        R.fit_rate(SIZES, errors, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        R.fit_rate(SIZES, errors, n_boot=-1)
    with pytest.raises(ValueError, match="interval"):
        R.fit_rate(SIZES, errors).covers(-0.5, interval="z")


# ---------------------------------------------------------------------------------------------
# theory_rate
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gate, k, k_true, group, expected", [
    ("softmax", 2, 2, "D1", (-0.5, "A/B")),
    ("softmax", 2, 2, "expert_slope_single_weighted", (-0.5, "A/B")),
    ("softmax", 2, 2, "density", (-0.5, "A/B")),
    ("softmax", 2, 2, "weight_single_unweighted", (-0.5, "A/B")),
    ("competition", 2, 2, "weight", (-0.5, "A/C")),
    ("softmax", 2, 2, "variance_multi_unweighted", None),
    ("softmax", 3, 2, "gate_slope", (-1 / 8, "B")),
    ("softmax", 3, 2, "expert_intercept_multi_weighted", (-1 / 8, "B")),
    ("softmax", 3, 2, "expert_slope_multi", (-1 / 4, "B")),
    ("softmax", 3, 2, "variance", (-1 / 4, "B")),
    ("softmax", 3, 2, "variance_single_unweighted", (-0.5, "B")),
    ("softmax", 3, 2, "weight_multi_weighted", (-0.5, "B")),
    ("softmax", 3, 2, "D2", (-0.5, "B")),
    ("softmax", 3, 2, "D1", (-1 / 8, "B")),
    ("softmax", 3, 2, "hellinger", (-0.5, "B")),
    ("softmax", 4, 2, "gate_slope", (-1 / 12, "B")),
    ("softmax", 4, 2, "variance", (-1 / 6, "B")),
    ("softmax", 5, 2, "variance", None),
    ("softmax", 1, 2, "D1", None),
    ("sigmoid", 2, 2, "D1", None),
    ("competition", 2, 2, "D1", (-0.5, "A/C")),
    ("competition", 3, 2, "expert_slope_multi_unweighted", (-0.25, "C")),
    ("competition", 3, 2, "gate_slope", None),
])
def test_theory_table(gate, k, k_true, group, expected):
    got = R.theory_rate(gate, k, k_true, group)
    if expected is None:
        assert got is None
    else:
        assert got[0] == pytest.approx(expected[0]) and got[1] == expected[1]


def test_theory_cell_size_and_errors():
    assert R.theory_rate("softmax", 4, 2, "gate_slope", cell_size=2) == (pytest.approx(-1 / 8), "B")
    assert R.theory_rate("softmax", 3, 2, "variance", expert="tanh") is None
    with pytest.raises(ValueError, match="cell_size"):
        R.theory_rate("softmax", 3, 2, "variance", cell_size=3)
    with pytest.raises(ValueError, match="gate"):
        R.theory_rate("soft", 2, 2, "D1")
    with pytest.raises(ValueError, match="group"):
        R.theory_rate("softmax", 2, 2, "beta")
    with pytest.raises(ValueError, match="fitted_k"):
        R.theory_rate("softmax", 0, 2, "D1")


@pytest.mark.parametrize("key", [("softmax", "linear"), ("competition", "linear")])
def test_theory_rates_agree_with_d2_exponents(key):
    # D2 ~ n^-1/2 with |D g|^e in a cell of m atoms means |D g| ~ n^(-1 / (2 e))
    for m in (2, 3):
        assert set(L.D2_EXPONENTS[key][m]) == set(R.THEORY_RATES[key][m][0])
        for group, e in L.D2_EXPONENTS[key][m].items():
            assert R.THEORY_RATES[key][m][0][group] == pytest.approx(-1 / (2 * e))


def test_public_names():
    assert mixsim.fit_rate is R.fit_rate and mixsim.theory_rate is R.theory_rate


def test_numpy_scalars_are_accepted_for_level():
    # numpy floats are accepted wherever Python ones are (issue 15, item 9).
    n = np.repeat([100, 1000, 10000], 5)
    errors = n ** -0.5 * np.exp(np.random.default_rng(0).normal(0, 0.1, n.size))
    a = mixsim.fit_rate(n, errors, level=np.float32(0.9))
    b = mixsim.fit_rate(n, errors, level=0.9)
    assert a.ci_low == pytest.approx(b.ci_low, rel=1e-6) and a.level == pytest.approx(0.9)


def test_fit_rate_is_a_wrapper_with_estimate_rates_defaults():
    errors = synthetic(np.random.default_rng(8))
    fit, est = R.fit_rate(SIZES, errors), R.estimate_rate(SIZES, errors)
    assert fit.method == est.average == "log"
    assert fit.slope == pytest.approx(est.slope, rel=1e-12) and fit.intercept == pytest.approx(est.intercept, rel=1e-12)
    assert (fit.boot_low, fit.boot_high) == (est.slope_low, est.slope_high)
    np.testing.assert_allclose(fit.local_slopes, est.local_slopes, rtol=1e-12)
    assert R.fit_rate(SIZES, errors, average="logmean").slope == fit.slope  # the earlier name of "log"
