"""Convergence rates: log-log slopes of errors against sample size, with honest intervals, and the
exponents theory predicts (THEORY.md section 4).

:func:`fit_rate` reads a rate off per-replicate errors measured at several sample sizes: the
errors at each size are averaged, ``log(average)`` is regressed on ``log(n)`` by least squares,
and the slope comes with a t-interval and a bootstrap interval (replicates resampled within each
size), plus the local slopes between neighbouring sizes so that curvature is visible.
:func:`theory_rate` returns the exponent the theory predicts for the same quantity, or None.

Files, in the order a rate is made: ``bootstrap`` (resampling replicates within sizes, intervals),
``power_law`` (:func:`fit_rate`), ``estimate`` (:func:`estimate_rate`), ``compare``
(:func:`compare_rates`, :func:`verdict`), ``theory`` (:func:`theory_rate`).
"""
from __future__ import annotations

from .bootstrap import AVERAGE_ALIASES, INTERVALS, SLOPE_AVERAGES, bootstrap_interval, canonical_average, ols_slope
from .compare import RateComparison, compare_rates, verdict
from .estimate import FALLBACKS, VERDICTS, RateEstimate, estimate_rate
from .power_law import AVERAGES, RateFit, fit_rate
from .theory import THEORY_RATES, theory_rate

__all__ = [
    "AVERAGES", "THEORY_RATES", "RateFit", "fit_rate", "theory_rate", "ols_slope",
    "SLOPE_AVERAGES", "INTERVALS", "FALLBACKS", "VERDICTS", "RateEstimate", "RateComparison",
    "estimate_rate", "compare_rates", "bootstrap_interval", "verdict", "canonical_average", "AVERAGE_ALIASES",
]
