"""Two rates compared (competition minus softmax): slope difference, n-to-eps ratio and the verdict
(:func:`compare_rates`, :func:`verdict`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import check_bool
from ..model import as_rng
from .bootstrap import (Resampled, as_groups, bootstrap_interval, canonical_average, check_replicates, draw_indices, halves,
                        line_weights, linear_stat, resample)
from .estimate import RateEstimate, _check_common, _check_window, _estimate


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
    n_ref : array of shape (r,)
        Reference sample sizes of the **n-to-eps ratio**: ``b``'s fitted line at ``n_ref`` sets the
        error level ``eps_ref``, and ``a``'s fitted line says how many samples ``a`` needs for it.
    eps_ref, n_a_ref : arrays of shape (r,)
        That error level and that sample size (inf when ``a``'s slope is >= 0).
    ref_ratio, ref_ratio_low, ref_ratio_high : arrays of shape (r,)
        ``n_a_ref / n_ref`` with its interval, from the same resamples: each resample refits both
        lines, so the level ``eps_ref`` moves with ``b``'s resample (< 1: ``a`` reaches ``b``'s
        error with fewer samples). NaN where a side has no rate.
    ref_reached : bool array of shape (r,)
        Whether ``n_ref`` lies in ``b``'s fitted sizes and ``n_a_ref`` in ``a``'s (no extrapolation).
    ref_efficiency : tuple of str, length r
        :func:`verdict` on the log ratio's interval ("faster": ``a`` needs fewer samples).
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
    n_ref: np.ndarray
    eps_ref: np.ndarray
    n_a_ref: np.ndarray
    ref_ratio: np.ndarray
    ref_ratio_low: np.ndarray
    ref_ratio_high: np.ndarray
    ref_reached: np.ndarray
    ref_efficiency: tuple[str, ...]

    def to_row(self) -> dict[str, Any]:
        """The scalar results as one flat dict; the ratios at the middle ``eps`` and the middle ``n_ref``
        (NaN if there is none)."""
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
        } | self._reference_row()

    def _reference_row(self) -> dict[str, Any]:
        mid = self.n_ref.size // 2
        pick = lambda arr: float(arr[mid]) if self.n_ref.size else float("nan")  # noqa: E731
        return {"n_ref": pick(self.n_ref), "ref_ratio": pick(self.ref_ratio), "ref_ratio_low": pick(self.ref_ratio_low),
                "ref_ratio_high": pick(self.ref_ratio_high),
                "ref_efficiency": self.ref_efficiency[mid] if self.n_ref.size else "cannot tell"}


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


def _reference_ratio(res_a: Resampled, res_b: Resampled, line_a: tuple | None, line_b: tuple | None, n_ref: Any,
                     paired: bool, level: float, interval: str) -> dict[str, Any]:
    """The n-to-eps ratio ``n_a(eps_b(n_ref)) / n_ref`` with its interval (fields of RateComparison)."""
    if n_ref is None:  # default: the geometric middle of the sizes b's rate line was fitted on
        n_ref = np.empty(0) if line_b is None else np.exp([np.mean(res_b.log_n[line_b[2]])])
    q = n_ref.size
    out = {"n_ref": n_ref, "eps_ref": np.full(q, np.nan), "n_a_ref": np.full(q, np.nan), "ref_ratio": np.full(q, np.nan),
           "ref_ratio_low": np.full(q, np.nan), "ref_ratio_high": np.full(q, np.nan), "ref_reached": np.zeros(q, dtype=bool),
           "ref_efficiency": ("cannot tell",) * q}
    if not q or line_a is None or line_b is None:
        return out
    log_ref = np.log(n_ref)
    log_eps = lambda Lb: (Lb @ line_b[1])[..., None] + (Lb @ line_b[0])[..., None] * log_ref  # noqa: E731  b's line at n_ref
    stat = lambda La, Lb: _log_n_needed(La, line_a, log_eps(Lb)) - log_ref  # noqa: E731  (..., q)
    with np.errstate(invalid="ignore"):
        point, boot = stat(res_a.point, res_b.point), stat(res_a.boot, res_b.boot)
        if paired:  # leave replicate r out of both sides at once
            jack, groups, counts = stat(res_a.jack, res_b.jack), res_a.jack_group, res_a.counts
        else:
            jack = np.concatenate([stat(res_a.jack, res_b.point), stat(res_a.point, res_b.jack)])
            groups = np.concatenate([res_a.jack_group, res_b.jack_group + res_a.counts.size])
            counts = np.concatenate([res_a.counts, res_b.counts])
    ci = np.array([bootstrap_interval(point[j], boot[:, j], level, interval, jack[:, j], groups, counts) for j in range(q)])
    span = lambda res, line: (res.log_n[line[2]].min() - 1e-12, res.log_n[line[2]].max() + 1e-12)  # noqa: E731
    (a_lo, a_hi), (b_lo, b_hi) = span(res_a, line_a), span(res_b, line_b)
    return out | {
        "eps_ref": np.exp(log_eps(res_b.point)), "n_a_ref": np.exp(point + log_ref), "ref_ratio": np.exp(point),
        "ref_ratio_low": np.exp(ci[:, 0]), "ref_ratio_high": np.exp(ci[:, 1]),
        "ref_reached": (log_ref >= b_lo) & (log_ref <= b_hi) & (point + log_ref >= a_lo) & (point + log_ref <= a_hi),
        "ref_efficiency": tuple(verdict(low, high) for low, high in ci),
    }


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
    n_ref: Any = None,
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

    With ``paired=True`` on matched truths sampled with common random numbers (the same data seed
    per replicate index, :func:`mixsim.matched_truth`, ``sampling="crn"``), the error *levels*
    compare too, and the **n-to-eps ratio** says how many samples ``a`` needs to reach the error
    ``b`` reaches at a reference size ``n_ref``: ``n_a(eps_b(n_ref)) / n_ref`` from the two fitted
    lines, with an interval from the same (joint) resamples (computed for independent sides too).

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
    n_ref : float or array-like of float > 0, optional
        Reference sizes of the n-to-eps ratio (``b``'s error at ``n_ref``). Default: one, the
        geometric middle of the sizes ``b``'s rate line was fitted on (none when ``b`` has no rate).

    Returns
    -------
    RateComparison
    """
    average = canonical_average(average)
    _check_common(level, n_boot, interval, fallback)
    if n_ref is not None:
        n_ref = np.atleast_1d(np.asarray(n_ref, dtype=np.float64))
        if n_ref.ndim != 1 or not np.all(np.isfinite(n_ref)) or np.any(n_ref <= 0):
            raise ValueError(f"n_ref must be finite sample sizes > 0; got {n_ref}")
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
    paired = check_bool(paired, "paired")
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
        **_reference_ratio(res_a, res_b, line_a, line_b, n_ref, paired, float(level), interval),
    )
