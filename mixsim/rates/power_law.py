"""Power-law fits of errors against sample size: :func:`fit_rate` (the average error at each size,
its log regressed on log n, with a t-interval, a bootstrap interval and local slopes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

from ..checks import check_level
from ..model import as_rng
from .bootstrap import as_groups, ols_slope


# ---------------------------------------------------------------------------------------------
# estimating a rate
# ---------------------------------------------------------------------------------------------


def _geometric_mean(errors: np.ndarray, axis: int) -> np.ndarray:
    return np.exp(np.mean(np.log(errors), axis=axis))


def _scaled(summary: Callable[..., np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
    """``summary`` (mean, median) of positive errors computed on the errors divided by their
    largest, so that errors near float64's maximum do not overflow."""
    def scaled_summary(errors: np.ndarray, axis: int) -> np.ndarray:
        top = np.max(errors, axis=axis, keepdims=True)
        return np.squeeze(top, axis=axis) * summary(errors / top, axis=axis)
    return scaled_summary


#: How the replicate errors at one sample size are summarised before taking logs:
#: ``mean`` (log of the mean error, as the reference plots do; the default), ``median``
#: (log of the median), ``logmean`` (mean of log errors, i.e. log of the geometric mean).
AVERAGES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "mean": _scaled(np.mean),
    "median": _scaled(np.median),
    "logmean": _geometric_mean,
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
        The key of :data:`AVERAGES` used.
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


def _bootstrap_slopes(log_n: np.ndarray, groups: list[np.ndarray], average: Callable, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Slopes refitted on ``n_boot`` resamples (replicates drawn with replacement within each size)."""
    log_avg = np.empty((n_boot, len(groups)))
    for g, errs in enumerate(groups):
        idx = rng.integers(0, errs.size, size=(n_boot, errs.size))
        log_avg[:, g] = np.log(average(errs[idx], 1))
    return ols_slope(log_n, log_avg)


def fit_rate(
    n: Any,
    errors: Any,
    *,
    average: str = "mean",
    level: float = 0.95,
    n_boot: int = 2000,
    rng: Any = 0,
) -> RateFit:
    """Fit ``error ~ C n^slope`` to replicate errors at several sample sizes.

    At each distinct size the replicate errors are summarised by ``average``; the slope is the
    least-squares slope of ``log(average)`` on ``log(n)`` (each size counts once, however many
    replicates it has).

    Parameters
    ----------
    n : array of shape (N,) or (m,)
        Sample sizes. Either one entry per replicate (sizes repeated, aligned with ``errors`` of
        shape (N,)), as in a tidy study table, or the m distinct sizes when ``errors`` has shape
        (m, R) (R replicates per size). At least 2 distinct sizes; 3 or more for a t-interval.
    errors : array of shape (N,) or (m, R)
        Per-replicate errors (losses, distances), finite and > 0.
    average : {"mean", "median", "logmean"}, default "mean"
        Summary of the replicates at one size (:data:`AVERAGES`). ``"mean"`` (log of the mean
        error) is what the reference simulations plot; ``"logmean"`` (mean of log errors) is less
        sensitive to a few bad fits.
    level : float, default 0.95
        Confidence level of the t and bootstrap intervals.
    n_boot : int, default 2000
        Bootstrap resamples; 0 skips the bootstrap (its bounds are then NaN).
    rng : numpy Generator, int seed or None, default 0
        Randomness of the bootstrap (a fixed seed by default, so results are reproducible).

    Returns
    -------
    RateFit
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {tuple(AVERAGES)}; got {average!r}")
    level = check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0; got {n_boot!r}")
    sizes, groups = as_groups(n, errors)
    summarise = AVERAGES[average]
    avg = np.array([summarise(g, 0) for g in groups])
    log_n, log_avg = np.log(sizes), np.log(avg)
    m = sizes.size
    slope = float(ols_slope(log_n, log_avg))
    intercept = float(log_avg.mean() - slope * log_n.mean())
    if m > 2:
        resid = log_avg - (intercept + slope * log_n)
        stderr = float(np.sqrt(resid @ resid / (m - 2) / np.sum((log_n - log_n.mean()) ** 2)))
        half = float(stats.t.ppf(0.5 + level / 2, m - 2)) * stderr
        ci = (slope - half, slope + half)
    else:
        stderr, ci = float("nan"), (float("nan"), float("nan"))
    if n_boot > 0 and min(g.size for g in groups) >= 2:
        boot = _bootstrap_slopes(log_n, groups, summarise, int(n_boot), as_rng(rng))
        boot_ci = tuple(float(v) for v in np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2]))
    else:
        boot_ci = (float("nan"), float("nan"))
    return RateFit(
        slope=slope, intercept=intercept, ci_low=ci[0], ci_high=ci[1], boot_low=boot_ci[0], boot_high=boot_ci[1],
        n_points=int(m), local_slopes=np.diff(log_avg) / np.diff(log_n), average=avg, sizes=sizes,
        n_replicates=np.array([g.size for g in groups]), stderr=stderr, level=float(level), method=average,
    )
