"""Worked check on real fits (issue 3): softmax reference truth, exact-fitted (k = 2), near-truth
start, 8 log-spaced sizes from 1e3 to 1e5, 20 replications: the 95% t-interval of the D1 slope
must contain -0.5 (THEORY.md sections 4 and 7). About 15-30 s of CPU.

The seed root (0) was fixed before its result was seen. A 95% interval misses -0.5 on about one
seed root in twenty by construction: a first exploratory run (a different seeding, root 2024) gave
-0.596 [-0.706, -0.486]; across 30 roots of this seeding (0-19, 100-109) the interval covered -0.5
27 times, the slopes averaged -0.498 (sd 0.045, so the mean is within 0.01 of -0.5) and
sqrt(n) * mean D1 stayed flat at 6.6-7.2 from n = 1e3 to 1e5. So a failure here after a change
to the fitter should be checked on a few more roots before anything is blamed.
"""
from __future__ import annotations

import numpy as np
import pytest

import mixsim

SIZES = np.unique(np.geomspace(1e3, 1e5, 8).round().astype(int))
REPLICATES = 20
SEED_ROOT = 0


def worked_check(seed_root: int = SEED_ROOT, sizes=SIZES, replicates: int = REPLICATES):
    """Fit the reference truth at every size; return sizes (N,), D1 (N,), fit results (N,)."""
    truth = mixsim.preset("softmax_k2")
    n_all, d1, fits = [], [], []
    for s_i, n in enumerate(sizes):
        seeds = np.random.SeedSequence([seed_root, int(n)]).spawn(replicates)
        data = [mixsim.sample(truth, int(n), rng=np.random.default_rng(s)) for s in seeds]
        results = mixsim.fit_batch(
            np.stack([X for X, _ in data]), np.stack([y for _, y in data]), 2, gate="softmax", init="near_truth",
            truth=truth, rng=[int(1e6 * seed_root + 1000 * s_i + r) for r in range(replicates)], tol=1e-10,
        )
        for res in results:
            n_all.append(n)
            d1.append(mixsim.voronoi_loss(res.params, truth, kind="D1"))
            fits.append(res)
    return np.array(n_all), np.array(d1), fits


@pytest.mark.slow
def test_softmax_exact_fitted_d1_slope_contains_half():
    n, d1, fits = worked_check()
    assert all(f.converged for f in fits), "every near-truth exact-fitted fit should converge"
    assert len(np.unique(n)) >= 8 and np.all(np.bincount(np.searchsorted(np.unique(n), n)) == REPLICATES)
    rate = mixsim.fit_rate(n, d1, average="mean")  # the average this check was declared with (the default until 0.2.0)
    print(f"D1 slope {rate.slope:.3f}, 95% t-interval [{rate.ci_low:.3f}, {rate.ci_high:.3f}], "
          f"bootstrap [{rate.boot_low:.3f}, {rate.boot_high:.3f}], local slopes {np.round(rate.local_slopes, 2)}")
    assert rate.ci_low <= -0.5 <= rate.ci_high
    assert mixsim.theory_rate("softmax", 2, 2, "D1")[0] == -0.5
