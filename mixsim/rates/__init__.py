"""Convergence rates: log-log slopes of errors against sample size, with honest intervals, and the
exponents theory predicts (THEORY.md section 4).

:func:`estimate_rate` reads a rate off per-replicate errors measured at several sample sizes: the
errors at each size are averaged (:data:`SLOPE_AVERAGES`: ``"log"``, the geometric mean, by
default; ``"median"``; ``"mean"``), ``log(average)`` is regressed on ``log(n)`` by least squares,
and every slope comes with a bootstrap interval (replicates resampled within each size), local
slopes between neighbouring sizes and a curvature check. :func:`compare_rates` compares two such
rates; :func:`theory_rate` returns the exponent the theory predicts, or None. :func:`fit_rate`
is the earlier function, kept as a thin wrapper with estimate_rate's defaults.

Files, in the order a rate is made: ``bootstrap`` (resampling replicates within sizes, intervals),
``estimate`` (:func:`estimate_rate`), ``compare`` (:func:`compare_rates`, :func:`verdict`),
``power_law`` (:func:`fit_rate`), ``theory`` (:func:`theory_rate`).
"""
from __future__ import annotations

from .bootstrap import AVERAGE_ALIASES, INTERVALS, SLOPE_AVERAGES, bootstrap_interval, canonical_average, ols_slope
from .compare import RateComparison, compare_rates, verdict
from .estimate import FALLBACKS, RATE_ROW_COLUMNS, VERDICTS, RateEstimate, estimate_rate
from .power_law import AVERAGES, RateFit, fit_rate
from .theory import THEORY_RATES, theory_rate

__all__ = [
    "AVERAGES", "THEORY_RATES", "RateFit", "fit_rate", "theory_rate", "ols_slope",
    "SLOPE_AVERAGES", "INTERVALS", "FALLBACKS", "VERDICTS", "RateEstimate", "RateComparison",
    "estimate_rate", "compare_rates", "bootstrap_interval", "verdict", "canonical_average", "AVERAGE_ALIASES",
    "RATE_ROW_COLUMNS",
]
