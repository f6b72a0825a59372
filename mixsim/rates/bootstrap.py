"""Resampling of replicate errors measured at several sample sizes: the machinery behind
:func:`mixsim.rates.estimate_rate` and :func:`mixsim.rates.compare_rates`.

Every rate statistic is a function of the m per-size log-averages ``L = (log avg_1, ..., log avg_m)``:
the slope, intercept, local and half-range slopes are *linear* in L (``L @ w`` for a fixed weight
vector w, :func:`line_weights`), the n-to-eps ratio is not. One resampling (:func:`resample`)
therefore serves them all: B bootstrap resamples of L (replicates drawn with replacement within
each size, sizes independently, replicate counts kept) and the N leave-one-out vectors of L that
BCa's acceleration needs. :func:`bootstrap_interval` turns resampled values into a percentile or
BCa interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

from ..checks import check_level

__all__ = [
    "SLOPE_AVERAGES", "AVERAGE_ALIASES", "INTERVALS", "ols_slope", "as_groups", "canonical_average", "check_replicates",
    "Resampled", "draw_indices", "resample", "bootstrap_interval", "line_weights", "halves", "LinearStat", "linear_stat", "interval_of",
]

# ---------------------------------------------------------------------------------------------
# least squares and input checks
# ---------------------------------------------------------------------------------------------

def ols_slope(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of ``Y`` (..., m) on ``x`` (m,); returns shape (...)."""
    xc = x - x.mean()
    return (Y - Y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)


def as_groups(n: Any, errors: Any) -> tuple[np.ndarray, list[np.ndarray]]:
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


# ---------------------------------------------------------------------------------------------
# per-size log-averages, resampled
# ---------------------------------------------------------------------------------------------

#: Averages of the replicate errors at one size, as a **log** average along the last axis, for
#: :func:`mixsim.rates.estimate_rate`: ``"log"`` (mean of log errors = log of the geometric mean; the primary
#: choice: a few fits far off move it little), ``"median"`` (log of the median) and ``"mean"`` (log
#: of the arithmetic mean, as the reference plots). ``"logmean"`` (an earlier name) is accepted as an
#: alias of ``"log"``.


def _log_of(summary: Callable[..., np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Log of ``summary`` (mean, median) over the last axis of positive errors, computed on the
    errors divided by their largest, so that errors near float64's maximum do not overflow."""
    def log_summary(errors: np.ndarray) -> np.ndarray:
        top = np.max(errors, axis=-1)
        return np.log(top) + np.log(summary(errors / top[..., None], axis=-1))
    return log_summary


SLOPE_AVERAGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": lambda errors: np.mean(np.log(errors), axis=-1),
    "median": _log_of(np.median),
    "mean": _log_of(np.mean),
}
#: Other names accepted for an average: ``"logmean"`` (the name of mixsim 0.1's ``fit_rate``) for ``"log"``.
AVERAGE_ALIASES = {"logmean": "log"}

#: Bootstrap interval methods. ``"percentile"`` (the default): percentiles of the resampled
#: statistic. ``"bca"``: bias-corrected and accelerated (Efron & Tibshirani 1993, ch. 14; the
#: acceleration from the jackknife over every replicate, each size a separate sample as in
#: scipy.stats.bootstrap). Why percentile: on synthetic power laws (8 sizes, 300 data sets each,
#: slope of the mean log error) it covered as well as BCa or better: 10 / 20 / 40 replicates per
#: size, log-normal noise 0.94 / 0.93 / 0.95 (BCa 0.94 / 0.93 / 0.95); log errors t(3)-distributed
#: 0.92 / 0.94 / 0.97 (BCa 0.88 / 0.93 / 0.95); 10% of fits 20x off 0.91 / 0.95 / 0.95 (BCa 0.89 /
#: 0.93 / 0.95); and BCa's jackknife acceleration is erratic for the arithmetic mean of heavy-tailed
#: errors (coverage 0.81-0.88 against 0.87-0.95). The percentile interval under-covers slightly with
#: few replicates (the resampled variance is (R - 1) / R of the true one): use >= 20 replicates.
INTERVALS = ("percentile", "bca")


@dataclass(frozen=True, eq=False)
class Resampled:
    """Per-size log-averages of one data set: the point values, B resamples and the jackknife.

    ``jack`` row r is L with replicate r of size ``jack_group[r]`` left out (other sizes as observed).
    """

    sizes: np.ndarray  # (m,) increasing
    log_n: np.ndarray  # (m,)
    point: np.ndarray  # (m,)
    boot: np.ndarray  # (B, m)
    jack: np.ndarray  # (N, m)
    jack_group: np.ndarray  # (N,) int: the size each jackknife row leaves a replicate out of
    counts: np.ndarray  # (m,) replicates per size


def canonical_average(average: Any) -> str:
    """The declared name of an average (``"logmean"`` -> ``"log"``); TypeError for a non-string,
    ValueError for an unknown name."""
    if not isinstance(average, str):
        raise TypeError(f"average must be a string; got {type(average).__name__}")
    name = AVERAGE_ALIASES.get(average, average)
    if name not in SLOPE_AVERAGES:
        raise ValueError(f"average must be one of {tuple(SLOPE_AVERAGES)} ('logmean' is accepted for 'log'); got {average!r}")
    return name


def check_replicates(n: Any, errors: Any, replicate: Any) -> None:
    if replicate is None:
        return
    n_arr, rep = np.asarray(n), np.asarray(replicate)
    if rep.shape != np.shape(errors) or rep.ndim != 1:
        raise ValueError(f"replicate must be a 1-D array aligned with n and errors; got shape {rep.shape}, errors {np.shape(errors)}")
    labels, codes = np.unique(rep, return_inverse=True)  # any id type (ints, strings)
    pairs = np.stack([n_arr.astype(np.float64), codes.astype(np.float64)], axis=1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    if np.any(counts > 1):
        dup = unique[np.argmax(counts > 1)]
        raise ValueError(
            f"replicate: each (n, replicate) pair must appear once; (n={dup[0]:g}, replicate={labels[int(dup[1])]!r}) "
            f"appears {int(counts.max())} times (filter the table to one metric, gate and fitted k first)"
        )


def draw_indices(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Resample indices, size by size: entry j has shape (n_boot, counts[j]), values in 0..counts[j]-1."""
    return [rng.integers(0, c, size=(n_boot, c)) for c in counts]


def resample(
    n: Any, errors: Any, average: str, n_boot: int, rng: np.random.Generator, indices: list[np.ndarray] | None = None
) -> Resampled:
    """Bootstrap (within each size, ``n_boot`` resamples) and jackknife of the per-size log-averages.

    ``indices`` (from :func:`draw_indices`) replaces the draws, so that two data sets on the same
    replicates can be resampled together (a paired bootstrap).
    """
    sizes, groups = as_groups(n, errors)
    counts = np.array([g.size for g in groups])
    if np.any(counts < 2):
        raise ValueError(
            f"errors: every sample size needs >= 2 replicates to resample; n = {sizes[counts < 2][0]:g} has {counts[counts < 2][0]}"
        )
    if indices is None:
        indices = draw_indices(counts, n_boot, rng)
    elif [i.shape for i in indices] != [(n_boot, c) for c in counts]:
        raise ValueError("the resample indices do not match the replicates per size")
    log_avg = SLOPE_AVERAGES[average]
    point = np.array([log_avg(g) for g in groups])
    boot = np.empty((n_boot, sizes.size))
    jack = np.repeat(point[None, :], counts.sum(), axis=0)
    start = 0
    for j, g in enumerate(groups):
        boot[:, j] = log_avg(g[indices[j]])
        keep = ~np.eye(g.size, dtype=bool)  # row r leaves replicate r out
        jack[start:start + g.size, j] = log_avg(np.broadcast_to(g, (g.size, g.size))[keep].reshape(g.size, g.size - 1))
        start += g.size
    return Resampled(sizes, np.log(sizes), point, boot, jack, np.repeat(np.arange(sizes.size), counts), counts)


def _quantile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) that keeps +-inf instead of inf - inf = NaN."""
    s = np.sort(values)
    pos = q * (s.size - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    if s[lo] == s[hi]:
        return float(s[lo])
    if not (np.isfinite(s[lo]) and np.isfinite(s[hi])):  # no interpolation with an infinite end: the nearer one
        return float(s[lo] if pos - lo < 0.5 else s[hi])
    return float(s[lo] + (pos - lo) * (s[hi] - s[lo]))


def _acceleration(jack: np.ndarray, group: np.ndarray, counts: np.ndarray) -> float:
    """BCa acceleration from jackknife values, each sample (size) with its own influence values, as scipy does."""
    num = den = 0.0
    for g, r in enumerate(counts):
        values = jack[group == g]
        u = (r - 1) * (values.mean() - values)  # jackknife empirical influence values
        num += np.sum(u**3) / r**3
        den += np.sum(u**2) / r**2
    return 0.0 if den <= 0 else float(num / (6.0 * den**1.5))


def bootstrap_interval(
    estimate: float,
    boot: np.ndarray,
    level: float = 0.95,
    method: str = "percentile",
    jack: np.ndarray | None = None,
    jack_group: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> tuple[float, float]:
    """A bootstrap confidence interval for one statistic from its resampled values.

    Parameters
    ----------
    estimate : float
        The statistic on the observed data.
    boot : array of shape (B,)
        The statistic on B resamples. NaN entries (statistic undefined on that resample) are
        dropped; +-inf entries are kept (order statistics handle them).
    level : float, default 0.95
    method : {"percentile", "bca"}, default "percentile"
        See :data:`INTERVALS`. BCa needs ``jack``, ``jack_group`` and ``counts``; it falls back to
        the percentile interval when a jackknife value is not finite.
    jack : array of shape (N,), optional
        The statistic with one observation left out, for each of the N observations.
    jack_group : int array of shape (N,), optional
        The sample (group) of the observation each jackknife value leaves out, 0..G-1.
    counts : int array of shape (G,), optional
        Observations per sample.

    Returns
    -------
    (low, high) : tuple of float
    """
    level = check_level(level)
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    probs = (alpha, 1.0 - alpha)
    if method == "bca" and jack is not None and np.all(np.isfinite(jack)) and np.isfinite(estimate):
        share = (np.sum(boot < estimate) + np.sum(boot <= estimate)) / (2.0 * boot.size)  # ties count half
        share = min(max(share, 0.5 / boot.size), 1.0 - 0.5 / boot.size)  # estimate outside every resample
        z0 = stats.norm.ppf(share)
        a = _acceleration(np.asarray(jack, dtype=np.float64), np.asarray(jack_group), np.asarray(counts))
        z = stats.norm.ppf(np.array(probs))
        denominator = 1.0 - a * (z0 + z)
        if np.all(denominator > 0):  # otherwise |a| is far too large to trust: keep the percentiles
            probs = tuple(float(p) for p in stats.norm.cdf(z0 + (z0 + z) / denominator))
    elif method not in INTERVALS:
        raise ValueError(f"method must be one of {INTERVALS}; got {method!r}")
    return _quantile(boot, probs[0]), _quantile(boot, probs[1])


def line_weights(log_n: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (m,) with ``L @ w_slope``, ``L @ w_intercept`` = the least-squares line through ``index``."""
    x = log_n[index]
    xc = x - x.mean()
    w_slope, w_intercept = np.zeros(log_n.size), np.zeros(log_n.size)
    w_slope[index] = xc / (xc @ xc)
    w_intercept[index] = 1.0 / x.size - x.mean() * w_slope[index]
    return w_slope, w_intercept


def halves(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper halves of m sorted sizes: ceil(m/2) each (the middle size in both when m is odd)."""
    h = (m + 1) // 2
    return np.arange(h), np.arange(m - h, m)


@dataclass(frozen=True)
class LinearStat:
    """A statistic ``L @ w`` of one resampled data set: its estimate, resamples and jackknife values."""

    estimate: float
    boot: np.ndarray
    jack: np.ndarray


def linear_stat(res: Resampled, w: np.ndarray) -> LinearStat:
    return LinearStat(float(res.point @ w), res.boot @ w, res.jack @ w)


def interval_of(stat: LinearStat, res: Resampled, level: float, method: str) -> tuple[float, float]:
    return bootstrap_interval(stat.estimate, stat.boot, level, method, stat.jack, res.jack_group, res.counts)
