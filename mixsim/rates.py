"""Convergence rates: log-log slopes of errors against sample size, with honest intervals, and the
exponents theory predicts (THEORY.md section 4).

:func:`fit_rate` reads a rate off per-replicate errors measured at several sample sizes: the
errors at each size are averaged, ``log(average)`` is regressed on ``log(n)`` by least squares,
and the slope comes with a t-interval and a bootstrap interval (replicates resampled within each
size), plus the local slopes between neighbouring sizes so that curvature is visible.
:func:`theory_rate` returns the exponent the theory predicts for the same quantity, or None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

from ._bootstrap import (
    INTERVALS,
    SLOPE_AVERAGES,
    Resampled,
    as_groups,
    bootstrap_interval,
    canonical_average,
    check_replicates,
    draw_indices,
    halves,
    interval_of,
    line_weights,
    linear_stat,
    ols_slope,
    resample,
)
from .gates import GATES
from .losses import GROUPS
from .model import as_rng

__all__ = [
    "AVERAGES", "THEORY_RATES", "RateFit", "fit_rate", "theory_rate", "ols_slope",
    "SLOPE_AVERAGES", "INTERVALS", "FALLBACKS", "VERDICTS", "RateEstimate", "RateComparison",
    "estimate_rate", "compare_rates", "bootstrap_interval", "verdict",
]

# ---------------------------------------------------------------------------------------------
# estimating a rate
# ---------------------------------------------------------------------------------------------


def _geometric_mean(errors: np.ndarray, axis: int) -> np.ndarray:
    return np.exp(np.mean(np.log(errors), axis=axis))


#: How the replicate errors at one sample size are summarised before taking logs:
#: ``mean`` (log of the mean error, as the reference plots do; the default), ``median``
#: (log of the median), ``logmean`` (mean of log errors, i.e. log of the geometric mean).
AVERAGES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "mean": lambda errors, axis: np.mean(errors, axis=axis),
    "median": lambda errors, axis: np.median(errors, axis=axis),
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
        each size, averaged, and the slope refitted; NaN when ``n_boot == 0``.
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
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (float, int, np.floating, np.integer)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a float in (0, 1); got {level!r}")
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
    if n_boot > 0:
        boot = _bootstrap_slopes(log_n, groups, summarise, int(n_boot), as_rng(rng))
        boot_ci = tuple(float(v) for v in np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2]))
    else:
        boot_ci = (float("nan"), float("nan"))
    return RateFit(
        slope=slope, intercept=intercept, ci_low=ci[0], ci_high=ci[1], boot_low=boot_ci[0], boot_high=boot_ci[1],
        n_points=int(m), local_slopes=np.diff(log_avg) / np.diff(log_n), average=avg, sizes=sizes,
        n_replicates=np.array([g.size for g in groups]), stderr=stderr, level=float(level), method=average,
    )


# ---------------------------------------------------------------------------------------------
# what theory predicts
# ---------------------------------------------------------------------------------------------


def _groups(exponent: float, slope: bool = True, weight: bool = True) -> dict[str, float]:
    return {g: exponent for g in GROUPS if (slope or g != "gate_slope") and (weight or g != "weight")}


#: Predicted exponents (error ~ n^exponent, up to log factors) and confidence tags, keyed by
#: ``(gate, expert)`` then the size m of the largest Voronoi cell: m = 1 is exact-fitted (every
#: cell a singleton); m = 2, 3 give the rates of the parameters *inside* such a cell. Singleton
#: cells, cell weight sums, D2 and the density converge at n^-1/2 in every listed regime
#: (THEORY.md section 4). Only the softmax gate with linear experts is from the papers; the
#: competition rows are the claim [A] in a reconstructed form [C] (exact-fitted) and the "likely
#: figure" n^-1/4 [C] (over-fitted). Edit to change; gates and experts not listed get None.
THEORY_RATES: dict[tuple[str, str], dict[int, tuple[dict[str, float], str]]] = {
    ("softmax", "linear"): {
        1: (_groups(-1 / 2), "A/B"),
        2: ({"gate_slope": -1 / 8, "expert_slope": -1 / 4, "expert_intercept": -1 / 8, "variance": -1 / 4}, "B"),
        3: ({"gate_slope": -1 / 12, "expert_slope": -1 / 6, "expert_intercept": -1 / 12, "variance": -1 / 6}, "B"),
    },
    ("competition", "linear"): {
        1: (_groups(-1 / 2, slope=False), "A/C"),
        2: (_groups(-1 / 4, slope=False, weight=False), "C"),
        3: (_groups(-1 / 4, slope=False, weight=False), "C"),
    },
}

_DENSITY = ("density", "hellinger", "total_variation")
_CELLS = ("single", "multi")


def _parse_group(group: str) -> tuple[str, str | None]:
    """``(base, cells)`` from a group name such as ``variance``, ``variance_multi`` or a
    :func:`mixsim.group_errors` key such as ``variance_multi_unweighted``."""
    if not isinstance(group, str):
        raise TypeError(f"group must be a string; got {type(group).__name__}")
    if group in _DENSITY or group in ("D1", "D2"):
        return group, None
    for base in GROUPS:
        for cells in (None,) + _CELLS:
            stem = base if cells is None else f"{base}_{cells}"
            if group in (stem, f"{stem}_weighted", f"{stem}_unweighted"):
                return base, cells
    raise ValueError(
        f"unknown group {group!r}; expected one of {_DENSITY + ('D1', 'D2') + GROUPS}, optionally followed by "
        "'_single' or '_multi' and '_weighted' or '_unweighted' (the keys of mixsim.group_errors)"
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def theory_rate(
    gate: str,
    fitted_k: int,
    true_k: int,
    group: str,
    *,
    expert: str = "linear",
    cell_size: int | None = None,
) -> tuple[float, str] | None:
    """The exponent theory predicts for an error, ``error ~ n^exponent`` (up to log factors).

    Parameters
    ----------
    gate : {"softmax", "competition", "sigmoid", "topk"}
    fitted_k, true_k : int
        Experts in the fitted and the true model.
    group : str
        ``"density"`` (also ``"hellinger"``, ``"total_variation"``), ``"D1"``, ``"D2"``, a
        parameter group (``weight``, ``gate_slope``, ``expert_slope``, ``expert_intercept``,
        ``variance``), optionally with ``_single`` / ``_multi`` and ``_weighted`` /
        ``_unweighted`` (any key of :func:`mixsim.group_errors`). A bare group means its slowest
        cell. Weighted and unweighted errors share a rate.
    expert : str, default "linear"
        Expert family.
    cell_size : int, optional
        Size of the over-fitted Voronoi cell; default ``fitted_k - true_k + 1``, the worst case
        (e.g. fitted_k = true_k + 2 may also give two cells of 2; pass 2 for that).

    Returns
    -------
    (exponent, tag) or None
        ``exponent`` < 0, ``tag`` the THEORY.md confidence tag; None where theory says nothing
        (under-fitted models, gates or experts not in :data:`THEORY_RATES`, cells of 4 or more,
        multi-atom cells of an exact-fitted model).
    """
    if not isinstance(gate, str):
        raise TypeError(f"gate must be a string; got {type(gate).__name__}")
    if gate not in GATES + ("topk",):
        raise ValueError(f"unknown gate {gate!r}; expected one of {GATES + ('topk',)}")
    fitted_k, true_k = _positive_int(fitted_k, "fitted_k"), _positive_int(true_k, "true_k")
    base, cells = _parse_group(group)
    table = THEORY_RATES.get((gate, expert))
    if table is None or fitted_k < true_k:
        return None
    if fitted_k == true_k:
        if cells == "multi":
            return None
        rates, tag = table[1]
        return (-0.5, tag) if base in _DENSITY + ("D1", "D2") else (rates[base], tag) if base in rates else None
    m = fitted_k - true_k + 1 if cell_size is None else _positive_int(cell_size, "cell_size")
    if m > fitted_k - true_k + 1 or m < 2:
        raise ValueError(f"cell_size must be in 2..{fitted_k - true_k + 1} for fitted_k={fitted_k}, true_k={true_k}; got {m}")
    if m not in table:
        return None
    rates, tag = table[m]
    if base in _DENSITY or base in ("D2", "weight") or cells == "single":
        return -0.5, tag
    if base == "D1":
        return max(rates.values()), tag  # the slowest group (exponents are negative)
    return (rates[base], tag) if base in rates else None


# ---------------------------------------------------------------------------------------------
# rates for heavy-tailed errors (issue 12): bootstrap intervals, local slopes, curvature check
# ---------------------------------------------------------------------------------------------
# The resampling lives in mixsim._bootstrap; SLOPE_AVERAGES and INTERVALS are re-exported here.

#: What the verdict uses for a row whose curvature check fails ("not a power law over this range"):
#: ``"upper_half"`` (the slope over the upper half of the sizes, the declared default) or ``"none"``
#: (no rate: the verdict is "cannot tell").
FALLBACKS = ("upper_half", "none")

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
        names = ("average", "interval", "level", "n_boot", "slope", "slope_low", "slope_high", "intercept",
                 "lower_slope", "lower_low", "lower_high", "upper_slope", "upper_low", "upper_high",
                 "curvature", "curvature_low", "curvature_high", "power_law", "rate_source", "rate", "rate_low",
                 "rate_high")
        row = {name: getattr(self, name) for name in names}
        return row | {"n_sizes": int(self.sizes.size), "n_min": float(self.sizes[0]), "n_max": float(self.sizes[-1]),
                      "replicates_min": int(self.n_replicates.min()), "note": self.note}


def _check_window(window: Any, m: int, where: str = "") -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 2 <= window <= m:
        raise ValueError(f"window must be an int from 2 to the number of distinct sizes{where} ({m}); got {window!r}")
    return int(window)


def _check_common(level: Any, n_boot: Any, interval: Any, fallback: Any) -> None:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (float, int, np.floating, np.integer)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a float in (0, 1); got {level!r}")
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
    check_replicates(n, errors, replicate)
    res = resample(n, errors, average, int(n_boot), as_rng(rng))
    return _estimate(res, average, level, interval, _check_window(window, res.log_n.size), fallback)


# ---------------------------------------------------------------------------------------------
# comparing two rates (competition minus softmax): slope difference, n-to-eps ratio, verdict
# ---------------------------------------------------------------------------------------------


def verdict(low: float, high: float) -> str:
    """Verdict on ``a`` against ``b`` from an interval of ``a - b``, for a quantity where smaller means faster.

    Parameters
    ----------
    low, high : float
        Interval of the difference ``a - b`` of slopes (more negative = errors fall faster) or of
        log sample sizes needed (more negative = fewer samples needed).

    Returns
    -------
    {"faster", "slower", "cannot tell"}
        "faster" when the whole interval is below 0, "slower" when above, "cannot tell" when it
        contains 0 or is undefined (NaN).
    """
    if np.isnan(low) or np.isnan(high) or low > high:
        return "cannot tell"
    if high < 0:
        return "faster"
    if low > 0:
        return "slower"
    return "cannot tell"


@dataclass(frozen=True, eq=False)
class RateComparison:
    """Two rates compared: ``a`` minus ``b`` (pass competition as ``a`` and softmax as ``b``).

    Each data set is resampled within each size, on its own (independent data sets) or, when
    ``paired``, with the same replicate indices for both; every interval of a difference pairs
    resample i of ``a`` with resample i of ``b``.

    Attributes
    ----------
    a, b : RateEstimate
        Each side's own estimate, from the same resamples the differences use.
    level : float
    interval : {"percentile", "bca"}
    paired : bool
        Whether both sides were resampled together (the same data sets).
    difference, difference_low, difference_high : float
        ``a.rate - b.rate``: the rates the verdict uses (each side's full slope, or its fallback
        where its curvature check failed); NaN when a side has no rate.
    slope_difference, slope_difference_low, slope_difference_high : float
        ``a.slope - b.slope`` over all sizes, whatever the curvature checks say.
    verdict : {"faster", "slower", "cannot tell"}
        From the ``difference`` interval (:func:`verdict`): "faster" means ``a``'s errors fall
        faster with n than ``b``'s.
    eps : array of shape (q,)
        Error levels for the sample-efficiency ratio.
    reached : bool array of shape (q,)
        Whether both fitted lines reach ``eps`` inside the sizes they were fitted on (no
        extrapolation). Default ``eps`` values are all reached.
    n_a, n_b : arrays of shape (q,)
        Sample size each fitted line needs to reach ``eps`` (inf when its slope is >= 0).
    n_ratio, n_ratio_low, n_ratio_high : arrays of shape (q,)
        ``n_a / n_b`` with its interval: < 1 means ``a`` needs fewer samples for that error.
    n_undefined : int array of shape (q,)
        Resamples on which the ratio is undefined (both slopes >= 0), left out of its interval.
    efficiency : tuple of str, length q
        :func:`verdict` on the log ratio's interval at each ``eps`` ("faster": ``a`` needs fewer samples).
    """

    a: RateEstimate
    b: RateEstimate
    level: float
    interval: str
    paired: bool
    difference: float
    difference_low: float
    difference_high: float
    slope_difference: float
    slope_difference_low: float
    slope_difference_high: float
    verdict: str
    eps: np.ndarray
    reached: np.ndarray
    n_a: np.ndarray
    n_b: np.ndarray
    n_ratio: np.ndarray
    n_ratio_low: np.ndarray
    n_ratio_high: np.ndarray
    n_undefined: np.ndarray
    efficiency: tuple[str, ...]

    def to_row(self) -> dict[str, Any]:
        """The scalar results as one flat dict; the ratio at the middle ``eps`` (NaN if there is none)."""
        names = ("difference", "difference_low", "difference_high", "slope_difference", "slope_difference_low",
                 "slope_difference_high", "verdict", "paired")
        row = {name: getattr(self, name) for name in names}
        mid = self.eps.size // 2
        pick = lambda arr: float(arr[mid]) if self.eps.size else float("nan")  # noqa: E731
        return row | {
            "rate_a": self.a.rate, "rate_b": self.b.rate, "source_a": self.a.rate_source, "source_b": self.b.rate_source,
            "eps": pick(self.eps), "n_ratio": pick(self.n_ratio), "n_ratio_low": pick(self.n_ratio_low),
            "n_ratio_high": pick(self.n_ratio_high),
            "efficiency": self.efficiency[mid] if self.eps.size else "cannot tell",
        }


def _side_streams(rng: Any) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators: from a pair as given, else two children of one seed or Generator."""
    if isinstance(rng, (tuple, list)):
        if len(rng) != 2:
            raise ValueError(f"rng as a sequence must hold two seeds or Generators (one per side); got {len(rng)}")
        if isinstance(rng[0], (int, np.integer)) and isinstance(rng[1], (int, np.integer)) and rng[0] == rng[1]:
            raise ValueError(f"rng: the two sides need different seeds (the data sets are resampled independently); got {rng}")
        return as_rng(rng[0]), as_rng(rng[1])
    entropy = as_rng(rng).integers(0, 2**63 - 1, size=2)
    child_a, child_b = np.random.SeedSequence([int(v) for v in entropy]).spawn(2)
    return np.random.default_rng(child_a), np.random.default_rng(child_b)


def _rate_line(est: RateEstimate, res: Resampled) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Weights (slope, intercept) of the line the rate uses and the indices of its sizes; None without a rate."""
    if est.rate_source == "none":
        return None
    index = np.arange(res.log_n.size) if est.rate_source == "full" else halves(res.log_n.size)[1]
    return (*line_weights(res.log_n, index), index)


def _log_n_needed(L: np.ndarray, line: tuple, log_eps: np.ndarray) -> np.ndarray:
    """``log n`` at which the line through L reaches each ``log_eps``: shape (..., q); +inf when its slope >= 0."""
    slope, intercept = (L @ line[0])[..., None], (L @ line[1])[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (log_eps - intercept) / slope
    return np.where(slope < 0, out, np.inf)


def _default_eps(ea: RateEstimate, eb: RateEstimate, line_a: tuple, line_b: tuple, n_eps: int) -> np.ndarray:
    """``n_eps`` error levels inside the range both fitted lines cover over their own sizes (log-spaced, ends excluded)."""
    spans = []
    for est, line in ((ea, line_a), (eb, line_b)):
        if line is None or est.rate >= 0:
            return np.empty(0)
        log_n = np.log(est.sizes[line[2]])
        spans.append((est.rate_intercept + est.rate * log_n.max(), est.rate_intercept + est.rate * log_n.min()))
    low, high = max(s[0] for s in spans), min(s[1] for s in spans)
    if not low < high:
        return np.empty(0)
    return np.exp(low + (high - low) * np.arange(1, n_eps + 1) / (n_eps + 1))


def _tidy(n: Any, errors: Any, replicate: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows as 1-D arrays (n, errors, replicate), sorted by size then replicate id when ids are given."""
    n, errors = np.asarray(n, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    if errors.ndim == 2 and n.ndim == 1 and errors.shape[0] == n.shape[0]:
        n, errors = np.repeat(n, errors.shape[1]), errors.reshape(-1)
    if replicate is None or n.shape != errors.shape:
        return n, errors, None  # shape errors are reported by resample
    replicate = np.asarray(replicate)
    order = np.lexsort((replicate, n))
    return n[order], errors[order], replicate[order]


def _paired_rows(n_a: Any, errors_a: Any, replicate_a: Any, n_b: Any, errors_b: Any, replicate_b: Any) -> tuple[tuple, tuple]:
    """Both sides as tidy rows in matching order, or ValueError when they are not on the same replicates."""
    a, b = _tidy(n_a, errors_a, replicate_a), _tidy(n_b, errors_b, replicate_b)
    if not np.array_equal(a[0], b[0]):
        raise ValueError("paired=True needs the same sample sizes with the same number of replicates on both sides (n_a, n_b)")
    if (a[2] is None) != (b[2] is None) or (a[2] is not None and not np.array_equal(a[2], b[2])):
        raise ValueError("paired=True: replicate_a and replicate_b must both be given and hold the same ids at each size, or both be omitted")
    return a, b


def _resample_sides(n_a: Any, errors_a: Any, n_b: Any, errors_b: Any, average: str, n_boot: int, paired: bool,
                    rng: Any) -> tuple[Resampled, Resampled]:
    """Resample both sides: on two independent streams, or (paired) with the same indices from one stream."""
    if paired and isinstance(rng, (tuple, list)):
        raise ValueError("rng: paired=True resamples both sides with one stream; give one seed or Generator")
    streams = (as_rng(rng),) * 2 if paired else _side_streams(rng)
    indices = None
    if paired:  # the same replicate indices for both sides (their sizes and counts were matched)
        try:
            counts = np.array([g.size for g in as_groups(n_a, errors_a)[1]])
        except ValueError as exc:
            raise ValueError(f"side a (n_a, errors_a): {exc}") from exc
        indices = draw_indices(counts, n_boot, streams[0]) if counts.min() >= 2 else None
    out = []
    for side, n, errors, stream in (("a", n_a, errors_a, streams[0]), ("b", n_b, errors_b, streams[1])):
        try:
            out.append(resample(n, errors, average, n_boot, stream, indices))
        except ValueError as exc:
            raise ValueError(f"side {side} (n_{side}, errors_{side}): {exc}") from exc
    return out[0], out[1]


def compare_rates(
    n_a: Any,
    errors_a: Any,
    n_b: Any,
    errors_b: Any,
    *,
    replicate_a: Any = None,
    replicate_b: Any = None,
    average: str = "log",
    level: float = 0.95,
    n_boot: int = 4000,
    interval: str = "percentile",
    window: int = 2,
    fallback: str = "upper_half",
    eps: Any = None,
    n_eps: int = 3,
    paired: bool = False,
    rng: Any = 0,
) -> RateComparison:
    """Compare the rates of two data sets: slope difference ``a - b``, sample-efficiency ratio, verdict.

    Each side is estimated as in :func:`estimate_rate` (same ``average``, ``interval``, ``window``
    and ``fallback``). By default each side is resampled on its own stream: the data sets of two
    gates with different truths and seeds are independent, and resampling them independently is
    the right bootstrap. Resample i of the difference is resample i of ``a`` minus resample i of
    ``b``. When both gates were fitted on the *same* data sets (same sizes, same replicates, as in
    one study whose seeds do not depend on the gate), pass ``paired=True``: replicate r of both
    sides is then drawn together, which keeps their correlation (independent resampling would
    overstate the noise of the difference when the correlation is positive).

    The **sample-efficiency ratio** at an error level eps is ``n_a(eps) / n_b(eps)``, the sizes at
    which the two fitted lines (the lines of each side's rate) reach eps, with an interval from the
    same resamples. By default eps takes ``n_eps`` log-spaced levels strictly inside the range of
    errors that *both* fitted lines cover over their own sizes, so neither line is extrapolated.

    Parameters
    ----------
    n_a, errors_a : arrays
        Sizes and per-replicate errors of side ``a`` (competition), as for :func:`estimate_rate`.
    n_b, errors_b : arrays
        The same for side ``b`` (softmax).
    replicate_a, replicate_b : arrays, optional
        Replicate ids, checked as in :func:`estimate_rate`.
    average, level, n_boot, interval, window, fallback
        As in :func:`estimate_rate` (defaults "log", 0.95, 4000, "percentile", 2, "upper_half").
    eps : array-like of float > 0, optional
        Error levels for the ratio (default: ``n_eps`` levels both lines reach; none when the
        lines share no range or a rate is >= 0). Levels outside a line's range are computed by
        extrapolation and marked ``reached = False``.
    n_eps : int, default 3
        Number of default levels.
    paired : bool, default False
        Resample the replicates of both sides together. Needs the same sizes and replicate counts;
        replicates are matched by ``replicate_a`` / ``replicate_b`` ids when given (both, equal sets
        at each size), else by their order within each size.
    rng : Generator, int seed, None, or a pair of them, default 0
        One seed or Generator is split into two independent streams (one per side); a pair is
        used as given (``a`` first). With ``paired=True``: one seed or Generator.

    Returns
    -------
    RateComparison
    """
    average = canonical_average(average)
    _check_common(level, n_boot, interval, fallback)
    if isinstance(n_eps, bool) or not isinstance(n_eps, (int, np.integer)) or n_eps < 1:
        raise ValueError(f"n_eps must be an int >= 1; got {n_eps!r}")
    if eps is not None:
        eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        if eps.ndim != 1 or not np.all(np.isfinite(eps)) or np.any(eps <= 0):
            raise ValueError(f"eps must be finite error levels > 0; got {eps}")
    for side, (n, errors, rep) in {"a": (n_a, errors_a, replicate_a), "b": (n_b, errors_b, replicate_b)}.items():
        try:
            check_replicates(n, errors, rep)
        except ValueError as exc:
            raise ValueError(f"side {side} (n_{side}, errors_{side}, replicate_{side}): {exc}") from exc
    if not isinstance(paired, bool):
        raise TypeError(f"paired must be a bool; got {type(paired).__name__}")
    if paired:
        (n_a, errors_a, replicate_a), (n_b, errors_b, replicate_b) = _paired_rows(n_a, errors_a, replicate_a, n_b, errors_b, replicate_b)
    res_a, res_b = _resample_sides(n_a, errors_a, n_b, errors_b, average, int(n_boot), paired, rng)
    for side, res in (("a", res_a), ("b", res_b)):
        window = _check_window(window, res.log_n.size, f" of side {side}")
    est_a = _estimate(res_a, average, level, interval, int(window), fallback)
    est_b = _estimate(res_b, average, level, interval, int(window), fallback)

    def difference(line_a: tuple | None, line_b: tuple | None) -> tuple[float, float, float]:
        if line_a is None or line_b is None:
            return float("nan"), float("nan"), float("nan")
        sa, sb = linear_stat(res_a, line_a[0]), linear_stat(res_b, line_b[0])
        low, high = ci(sa.estimate - sb.estimate, sa.boot - sb.boot, sa.estimate, sa.jack, sb.estimate, sb.jack)
        return sa.estimate - sb.estimate, low, high

    def ci(estimate: float, boot: np.ndarray, point_a: Any, jack_a: np.ndarray, point_b: Any, jack_b: np.ndarray) -> tuple[float, float]:
        """Interval of a statistic of both sides; the jackknife leaves a replicate of one side out (of both when paired)."""
        if paired:
            jack, groups, counts = jack_a - jack_b, res_a.jack_group, res_a.counts
        else:
            jack = np.concatenate([jack_a - point_b, point_a - jack_b])
            groups = np.concatenate([res_a.jack_group, res_b.jack_group + res_a.counts.size])
            counts = np.concatenate([res_a.counts, res_b.counts])
        return bootstrap_interval(estimate, boot, level, interval, jack, groups, counts)

    full_a = (*line_weights(res_a.log_n, np.arange(res_a.log_n.size)), None)
    full_b = (*line_weights(res_b.log_n, np.arange(res_b.log_n.size)), None)
    slope_diff = difference(full_a, full_b)
    line_a, line_b = _rate_line(est_a, res_a), _rate_line(est_b, res_b)
    diff = difference(line_a, line_b)

    eps = _default_eps(est_a, est_b, line_a, line_b, int(n_eps)) if eps is None else eps
    q = eps.size
    nan_q = np.full(q, np.nan)
    n_need_a, n_need_b, ratio, ratio_low, ratio_high = nan_q, nan_q, nan_q.copy(), nan_q.copy(), nan_q.copy()
    undefined, reached, log_ci = np.zeros(q, dtype=int), np.zeros(q, dtype=bool), np.full((q, 2), np.nan)
    if q and line_a is not None and line_b is not None:
        log_eps = np.log(eps)
        point_a, point_b = _log_n_needed(res_a.point, line_a, log_eps), _log_n_needed(res_b.point, line_b, log_eps)
        n_need_a, n_need_b = np.exp(point_a), np.exp(point_b)
        reached = np.all([(p >= res.log_n[line[2]].min() - 1e-12) & (p <= res.log_n[line[2]].max() + 1e-12)
                          for p, res, line in ((point_a, res_a, line_a), (point_b, res_b, line_b))], axis=0)
        with np.errstate(invalid="ignore"):
            boot = _log_n_needed(res_a.boot, line_a, log_eps) - _log_n_needed(res_b.boot, line_b, log_eps)  # (B, q)
            jack_a, jack_b = _log_n_needed(res_a.jack, line_a, log_eps), _log_n_needed(res_b.jack, line_b, log_eps)
            log_ratio = point_a - point_b
        undefined = np.sum(np.isnan(boot), axis=0)
        with np.errstate(invalid="ignore"):
            for j in range(q):
                log_ci[j] = ci(log_ratio[j], boot[:, j], point_a[j], jack_a[:, j], point_b[j], jack_b[:, j])
        ratio, ratio_low, ratio_high = np.exp(log_ratio), np.exp(log_ci[:, 0]), np.exp(log_ci[:, 1])
    efficiency = tuple(verdict(low, high) for low, high in log_ci)
    return RateComparison(
        a=est_a, b=est_b, level=float(level), interval=interval, paired=paired,
        difference=diff[0], difference_low=diff[1], difference_high=diff[2],
        slope_difference=slope_diff[0], slope_difference_low=slope_diff[1], slope_difference_high=slope_diff[2],
        verdict=verdict(diff[1], diff[2]), eps=eps, reached=reached, n_a=n_need_a, n_b=n_need_b,
        n_ratio=ratio, n_ratio_low=ratio_low, n_ratio_high=ratio_high, n_undefined=undefined, efficiency=efficiency,
    )
