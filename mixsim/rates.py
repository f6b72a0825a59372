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

from .gates import GATES
from .losses import GROUPS
from .model import as_rng

__all__ = ["AVERAGES", "THEORY_RATES", "RateFit", "fit_rate", "theory_rate", "ols_slope"]

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


def ols_slope(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of ``Y`` (..., m) on ``x`` (m,); returns shape (...)."""
    xc = x - x.mean()
    return (Y - Y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)


def _as_groups(n: Any, errors: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct sizes (m,) and the errors at each, from aligned 1-D arrays or (m,) and (m, R)."""
    n = np.asarray(n, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if n.ndim != 1:
        raise ValueError(f"n must be a 1-D array; got shape {n.shape}")
    if errors.ndim == 2:
        if errors.shape[0] != n.shape[0]:
            raise ValueError(f"errors of shape (m, R) need n of shape (m,); got n {n.shape}, errors {errors.shape}")
        n, errors = np.repeat(n, errors.shape[1]), errors.reshape(-1)
    elif errors.ndim != 1 or errors.shape != n.shape:
        raise ValueError(f"errors must have the shape of n (one entry per replicate) or (len(n), R); got n {n.shape}, errors {errors.shape}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError("n must hold finite sample sizes > 0")
    if not np.all(np.isfinite(errors)):
        raise ValueError("errors contain NaN or inf; drop the failed replicates before fitting a rate")
    if np.any(errors <= 0):
        raise ValueError(f"errors must be > 0 to take logs; got {int(np.sum(errors <= 0))} non-positive value(s)")
    sizes = np.unique(n)
    if sizes.size < 2:
        raise ValueError(f"n must contain at least 2 distinct sample sizes; got {sizes.size}")
    return sizes, [errors[n == s] for s in sizes]


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
    if isinstance(level, bool) or not isinstance(level, (float, int)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a float in (0, 1); got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an int >= 0; got {n_boot!r}")
    sizes, groups = _as_groups(n, errors)
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
