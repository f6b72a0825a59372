"""The earlier rate function, :func:`fit_rate`, kept for compatibility: a thin wrapper over the one rate
path (:func:`mixsim.rates.estimate_rate`, whose defaults it shares) that adds the t-interval of the
least-squares slope. New code: :func:`mixsim.rates.estimate_rate` (or :func:`mixsim.study.rate_table`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

from ..checks import check_level
from .bootstrap import SLOPE_AVERAGES, as_groups, canonical_average, ols_slope
from .estimate import estimate_rate


def _geometric_mean(errors: np.ndarray, axis: int) -> np.ndarray:
    return np.exp(np.mean(np.log(errors), axis=axis))


def _scaled(summary: Callable[..., np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
    """``summary`` (mean, median) of positive errors computed on the errors divided by their
    largest, so that errors near float64's maximum do not overflow."""
    def scaled_summary(errors: np.ndarray, axis: int) -> np.ndarray:
        top = np.max(errors, axis=axis, keepdims=True)
        return np.squeeze(top, axis=axis) * summary(errors / top, axis=axis)
    return scaled_summary


#: The averages by name, as functions ``(errors, axis) -> average error`` (not its log): the names of
#: :data:`mixsim.rates.SLOPE_AVERAGES` (``"log"`` is the geometric mean; ``"logmean"`` is accepted
#: for it by :func:`fit_rate`).
AVERAGES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "log": _geometric_mean,
    "median": _scaled(np.median),
    "mean": _scaled(np.mean),
}


@dataclass(frozen=True, eq=False)
class RateFit:
    """A fitted power law ``average error ~ exp(intercept) * n ** slope``.

    Attributes
    ----------
    slope : float
        Least-squares slope of ``log(average)`` on ``log(n)`` over the distinct sizes.
    intercept : float
        Intercept of that line (natural logs).
    ci_low, ci_high : float
        t-interval for the slope at ``level`` (``n_points - 2`` degrees of freedom); NaN when
        there are only two sizes.
    boot_low, boot_high : float
        Percentile bootstrap interval at ``level``: replicates resampled with replacement within
        each size, averaged, and the slope refitted; NaN when ``n_boot == 0`` or when a size
        has a single replicate (resampling it cannot vary, so there is no interval to give).
    n_points : int
        Number of distinct sample sizes (points on the log-log line).
    local_slopes : array of shape (n_points - 1,)
        Slopes between neighbouring sizes, ``diff(log average) / diff(log n)``.
    average : array of shape (n_points,)
        The averaged error at each size.
    sizes : array of shape (n_points,)
        The distinct sample sizes, increasing.
    n_replicates : array of shape (n_points,)
        Replicates per size.
    stderr : float
        Standard error of the slope (NaN with two sizes).
    level : float
        Confidence level of both intervals.
    method : str
        The average used (a name of :data:`mixsim.rates.SLOPE_AVERAGES`).
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    boot_low: float
    boot_high: float
    n_points: int
    local_slopes: np.ndarray
    average: np.ndarray
    sizes: np.ndarray
    n_replicates: np.ndarray
    stderr: float
    level: float
    method: str

    def covers(self, exponent: float, interval: str = "t") -> bool:
        """Whether the ``"t"`` or ``"bootstrap"`` interval contains ``exponent``."""
        if interval not in ("t", "bootstrap"):
            raise ValueError(f"interval must be 't' or 'bootstrap'; got {interval!r}")
        low, high = (self.ci_low, self.ci_high) if interval == "t" else (self.boot_low, self.boot_high)
        return bool(low <= exponent <= high)


def fit_rate(
    n: Any,
    errors: Any,
    *,
    average: str = "log",
    level: float = 0.95,
    n_boot: int = 4000,
    rng: Any = 0,
) -> RateFit:
    """Fit ``error ~ C n^slope`` to replicate errors at several sample sizes (compatibility wrapper).

    The slope, intercept, local slopes and bootstrap interval are those of
    :func:`mixsim.rates.estimate_rate` with the same ``average``, ``level``, ``n_boot`` and ``rng``
    (its defaults too); this adds the t-interval of the least-squares slope. New code should call
    :func:`mixsim.rates.estimate_rate`, which also checks curvature.

    Parameters
    ----------
    n : array of shape (N,) or (m,)
        Sample sizes. Either one entry per replicate (sizes repeated, aligned with ``errors`` of
        shape (N,)), as in a tidy study table, or the m distinct sizes when ``errors`` has shape
        (m, R) (R replicates per size). At least 2 distinct sizes; 3 or more for a t-interval.
    errors : array of shape (N,) or (m, R)
        Per-replicate errors (losses, distances), finite and > 0.
    average : {"log", "median", "mean"}, default "log"
        Summary of the replicates at one size (:data:`mixsim.rates.SLOPE_AVERAGES`; ``"logmean"``
        is accepted for ``"log"``). Until 0.2.0 the default was ``"mean"``.
    level : float, default 0.95
        Confidence level of the t and bootstrap intervals.
    n_boot : int, default 4000
        Bootstrap resamples (at least 2 replicates per size); 0 skips the bootstrap (its bounds are
        then NaN). Until 0.2.0 the default was 2000.
    rng : numpy Generator, int seed or None, default 0
        Randomness of the bootstrap (a fixed seed by default, so results are reproducible).

    Returns
    -------
    RateFit
    """
    average = canonical_average(average)
    level = check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0 or n_boot == 1:
        raise ValueError(f"n_boot must be 0 (no bootstrap) or an int >= 2; got {n_boot!r}")
    sizes, groups = as_groups(n, errors)
    log_avg = np.array([SLOPE_AVERAGES[average](g) for g in groups])
    log_n, m = np.log(sizes), sizes.size
    slope = float(ols_slope(log_n, log_avg))
    intercept = float(log_avg.mean() - slope * log_n.mean())
    if m > 2:
        resid = log_avg - (intercept + slope * log_n)
        stderr = float(np.sqrt(resid @ resid / (m - 2) / np.sum((log_n - log_n.mean()) ** 2)))
        half = float(stats.t.ppf(0.5 + level / 2, m - 2)) * stderr
        ci = (slope - half, slope + half)
    else:
        stderr, ci = float("nan"), (float("nan"), float("nan"))
    boot_ci = (float("nan"), float("nan"))
    if n_boot > 0 and min(g.size for g in groups) >= 2:  # one replicate at a size: no interval (NaN), never a zero-width one
        est = estimate_rate(n, errors, average=average, level=float(level), n_boot=int(n_boot), rng=rng)
        boot_ci = (est.slope_low, est.slope_high)
    return RateFit(
        slope=slope, intercept=intercept, ci_low=ci[0], ci_high=ci[1], boot_low=boot_ci[0], boot_high=boot_ci[1],
        n_points=int(m), local_slopes=np.diff(log_avg) / np.diff(log_n), average=np.exp(log_avg), sizes=sizes,
        n_replicates=np.array([g.size for g in groups]), stderr=stderr, level=float(level), method=average,
    )
