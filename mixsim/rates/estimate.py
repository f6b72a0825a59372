"""Rates for heavy-tailed errors (issue 12): :func:`estimate_rate`, the slope of a declared average
with bootstrap intervals over replicates, local slopes and a curvature check."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import check_level
from ..model import as_rng
from .bootstrap import (INTERVALS, Resampled, canonical_average, check_replicates, halves, interval_of, line_weights,
                        linear_stat, resample)


# ---------------------------------------------------------------------------------------------
# rates for heavy-tailed errors (issue 12): bootstrap intervals, local slopes, curvature check
# ---------------------------------------------------------------------------------------------
# The resampling lives in mixsim.rates.bootstrap; SLOPE_AVERAGES and INTERVALS are re-exported by mixsim.rates.

#: What the verdict uses for a row whose curvature check fails ("not a power law over this range"):
#: ``"upper_half"`` (the slope over the upper half of the sizes, the declared default) or ``"none"``
#: (no rate: the verdict is "cannot tell").
FALLBACKS = ("upper_half", "none")

#: The keys of :meth:`RateEstimate.to_row`, in order: the columns of a rate table's estimate.
RATE_ROW_COLUMNS = [
    "average", "interval", "level", "n_boot", "slope", "slope_low", "slope_high", "intercept", "lower_slope", "lower_low",
    "lower_high", "upper_slope", "upper_low", "upper_high", "curvature", "curvature_low", "curvature_high", "power_law",
    "rate_source", "rate", "rate_low", "rate_high", "n_sizes", "n_min", "n_max", "replicates_min", "note",
]

#: Verdict words for "a minus b" of a quantity where smaller means faster (slopes, log sample sizes).
VERDICTS = ("faster", "slower", "cannot tell")


@dataclass(frozen=True, eq=False)
class RateEstimate:
    """A rate read off replicate errors at several sizes, with bootstrap intervals and a curvature check.

    All slopes are least-squares slopes of ``log(average error)`` on ``log(n)``; every interval is
    a bootstrap interval (``interval`` method, ``level``) from one set of ``n_boot`` resamples in
    which replicates are drawn with replacement within each size.

    Attributes
    ----------
    average : {"log", "median", "mean"}
        The average of the replicates at one size (:data:`SLOPE_AVERAGES`).
    interval : {"percentile", "bca"}
    level : float
    n_boot : int
    sizes : array of shape (m,)
        Distinct sample sizes, increasing.
    n_replicates : int array of shape (m,)
    log_average : array of shape (m,)
        Log of the average error at each size.
    average_low, average_high : arrays of shape (m,)
        Bootstrap interval of the average error at each size (error scale, for bands).
    slope, slope_low, slope_high, intercept : float
        The line over every size and the interval of its slope (natural logs).
    local_sizes : array of shape (m - window + 1, 2)
        First and last size of each window of ``window`` neighbouring sizes.
    local_slopes, local_low, local_high : arrays of shape (m - window + 1,)
        Slopes over each window, with intervals.
    lower_slope, lower_low, lower_high, upper_slope, upper_low, upper_high, upper_intercept : float
        Lines over the lower and the upper half of the sizes (ceil(m/2) sizes each; the middle one
        in both when m is odd). NaN with fewer than 3 sizes.
    curvature, curvature_low, curvature_high : float
        ``lower_slope - upper_slope`` with its interval (NaN with fewer than 3 sizes).
    power_law : bool or None
        False when the curvature interval excludes 0 ("not a power law over this range"), True
        when it contains 0, None with fewer than 3 sizes (no check possible).
    fallback : {"upper_half", "none"}
        The rule declared for a failed check.
    rate_source : {"full", "upper_half", "none"}
        Which line the verdict uses: every size when the check passes (or cannot be made), else
        the fallback.
    rate, rate_low, rate_high, rate_intercept : float
        That line's slope, interval and intercept (NaN when ``rate_source`` is "none").
    """

    average: str
    interval: str
    level: float
    n_boot: int
    sizes: np.ndarray
    n_replicates: np.ndarray
    log_average: np.ndarray
    average_low: np.ndarray
    average_high: np.ndarray
    slope: float
    slope_low: float
    slope_high: float
    intercept: float
    local_sizes: np.ndarray
    local_slopes: np.ndarray
    local_low: np.ndarray
    local_high: np.ndarray
    lower_slope: float
    lower_low: float
    lower_high: float
    upper_slope: float
    upper_low: float
    upper_high: float
    upper_intercept: float
    curvature: float
    curvature_low: float
    curvature_high: float
    power_law: bool | None
    fallback: str
    rate_source: str
    rate: float
    rate_low: float
    rate_high: float
    rate_intercept: float

    @property
    def average_error(self) -> np.ndarray:
        """The average error at each size, ``exp(log_average)``, shape (m,)."""
        return np.exp(self.log_average)

    @property
    def note(self) -> str:
        """``"not a power law over this range"`` when the curvature check fails, else ``""``."""
        return "not a power law over this range" if self.power_law is False else ""

    def to_row(self) -> dict[str, Any]:
        """The scalar results as one flat dict (a row of a rates table)."""
        row = {name: getattr(self, name) for name in RATE_ROW_COLUMNS[:-5]}
        return row | {"n_sizes": int(self.sizes.size), "n_min": float(self.sizes[0]), "n_max": float(self.sizes[-1]),
                      "replicates_min": int(self.n_replicates.min()), "note": self.note}


def _check_window(window: Any, m: int, where: str = "") -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 2 <= window <= m:
        raise ValueError(f"window must be an int from 2 to the number of distinct sizes{where} ({m}); got {window!r}")
    return int(window)


def _check_common(level: Any, n_boot: Any, interval: Any, fallback: Any) -> None:
    check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2 (thousands for a 95% interval); got {n_boot!r}")
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}; got {interval!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}; got {fallback!r}")


def _estimate(res: Resampled, average: str, level: float, interval: str, window: int, fallback: str) -> RateEstimate:
    m = res.log_n.size
    ci = lambda stat: interval_of(stat, res, level, interval)  # noqa: E731
    w_slope, w_int = line_weights(res.log_n, np.arange(m))
    full = linear_stat(res, w_slope)
    full_ci = ci(full)
    unit = np.eye(m)
    avg_ci = np.array([ci(linear_stat(res, unit[j])) for j in range(m)])  # (m, 2) log scale
    starts = np.arange(m - window + 1)
    local = [linear_stat(res, line_weights(res.log_n, np.arange(s, s + window))[0]) for s in starts]
    local_ci = np.array([ci(stat) for stat in local]).reshape(-1, 2)
    nan = float("nan")
    lower = upper = curv = None
    if m >= 3:
        low_idx, up_idx = halves(m)
        (wl, _), (wu, wu_int) = line_weights(res.log_n, low_idx), line_weights(res.log_n, up_idx)
        lower, upper, curv = linear_stat(res, wl), linear_stat(res, wu), linear_stat(res, wl - wu)
        lower_ci, upper_ci, curv_ci = ci(lower), ci(upper), ci(curv)
        power_law = bool(curv_ci[0] <= 0.0 <= curv_ci[1])
        upper_intercept = float(res.point @ wu_int)
    else:
        lower_ci = upper_ci = curv_ci = (nan, nan)
        power_law, upper_intercept = None, nan
    if power_law is not False:
        source, rate, rate_ci, rate_int = "full", full.estimate, full_ci, float(res.point @ w_int)
    elif fallback == "upper_half":
        source, rate, rate_ci, rate_int = "upper_half", upper.estimate, upper_ci, upper_intercept
    else:
        source, rate, rate_ci, rate_int = "none", nan, (nan, nan), nan
    return RateEstimate(
        average=average, interval=interval, level=float(level), n_boot=int(res.boot.shape[0]),
        sizes=res.sizes, n_replicates=res.counts, log_average=res.point,
        average_low=np.exp(avg_ci[:, 0]), average_high=np.exp(avg_ci[:, 1]),
        slope=full.estimate, slope_low=full_ci[0], slope_high=full_ci[1], intercept=float(res.point @ w_int),
        local_sizes=np.stack([res.sizes[starts], res.sizes[starts + window - 1]], axis=1),
        local_slopes=np.array([s.estimate for s in local]), local_low=local_ci[:, 0], local_high=local_ci[:, 1],
        lower_slope=nan if lower is None else lower.estimate, lower_low=lower_ci[0], lower_high=lower_ci[1],
        upper_slope=nan if upper is None else upper.estimate, upper_low=upper_ci[0], upper_high=upper_ci[1],
        upper_intercept=upper_intercept,
        curvature=nan if curv is None else curv.estimate, curvature_low=curv_ci[0], curvature_high=curv_ci[1],
        power_law=power_law, fallback=fallback, rate_source=source, rate=rate, rate_low=rate_ci[0],
        rate_high=rate_ci[1], rate_intercept=rate_int,
    )


def estimate_rate(
    n: Any,
    errors: Any,
    *,
    replicate: Any = None,
    average: str = "log",
    level: float = 0.95,
    n_boot: int = 4000,
    interval: str = "percentile",
    window: int = 2,
    fallback: str = "upper_half",
    rng: Any = 0,
) -> RateEstimate:
    """Rate of decay of replicate errors with bootstrap intervals, local slopes and a curvature check.

    At each distinct size the replicate errors are averaged (``average``); the slope is the
    least-squares slope of the log-average on ``log(n)``, each size counting once. Intervals come
    from one bootstrap in which the replicates of each size are drawn with replacement (sizes
    independently, replicate counts kept), the average and every slope recomputed in closed form.

    The **curvature check** compares the slope over the lower half of the sizes with the slope over
    the upper half: when the interval of ``lower - upper`` excludes 0 the errors do not follow one
    power law over this range (a regime change, a floor, a pre-asymptotic stretch) and the full
    slope means nothing; the rate the verdict uses is then the ``fallback`` (the upper-half slope by
    default, a rule to declare before the run). At the 95% level the check fails on 5% of true
    power laws.

    Parameters
    ----------
    n : array of shape (N,) or (m,)
        Sample sizes: one entry per replicate (a tidy table's column), or the m distinct sizes when
        ``errors`` has shape (m, R).
    errors : array of shape (N,) or (m, R)
        Per-replicate errors, finite and > 0 (drop failed fits first). At least 2 sizes and 2
        replicates per size; 3 sizes or more for the curvature check.
    replicate : array of shape (N,), optional
        Replicate ids aligned with a tidy ``n``; only checked (each (n, replicate) pair once), which
        catches a table not filtered to one metric.
    average : {"log", "median", "mean"}, default "log"
        :data:`SLOPE_AVERAGES`. ``"log"`` (slope of the mean log error, i.e. of the geometric mean)
        is the primary estimate for heavy-tailed errors; report "median" and "mean" beside it.
    level : float, default 0.95
    n_boot : int, default 4000
        Bootstrap resamples (BCa needs a few thousand for stable 95% end points).
    interval : {"percentile", "bca"}, default "percentile"
        :data:`INTERVALS` (which says why percentile is the default).
    window : int, default 2
        Neighbouring sizes per local slope (2: between neighbours).
    fallback : {"upper_half", "none"}, default "upper_half"
        :data:`FALLBACKS`: the rate used when the curvature check fails.
    rng : numpy Generator, int seed or None, default 0
        Randomness of the bootstrap (a fixed seed by default: same data, same intervals).

    Returns
    -------
    RateEstimate

    Examples
    --------
    >>> rows = table[(table.metric == metric) & (table.gate == "softmax")]  # one tidy series  # doctest: +SKIP
    >>> est = estimate_rate(rows["n"], rows["value"], replicate=rows["replicate"])  # doctest: +SKIP
    >>> est.rate, (est.rate_low, est.rate_high), est.note  # doctest: +SKIP
    """
    average = canonical_average(average)
    _check_common(level, n_boot, interval, fallback)
    level = float(level)
    check_replicates(n, errors, replicate)
    res = resample(n, errors, average, int(n_boot), as_rng(rng))
    return _estimate(res, average, level, interval, _check_window(window, res.log_n.size), fallback)
