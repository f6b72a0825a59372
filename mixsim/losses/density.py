"""Density distances E_X[ distance between p_hat(. | X) and p*(. | X) ]: expected Hellinger and total variation."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy.special import ndtr

from ..model import MoEParams, as_rng, log_gate_and_mean, sample_x
from .atoms import _check_params


# ---------------------------------------------------------------------------------------------
# density distances: E_X[ distance between p_hat(. | X) and p*(. | X) ]
# ---------------------------------------------------------------------------------------------

_TAIL_SD = 10.0  # integrate each component over mean +- 10 sd: the mass left out is < 2e-23
_PANELS_PER_SIDE = 5  # panels of two sds each on either side of every component mean
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)  # 8-point Gauss-Legendre per panel
_CHUNK = 256  # inputs per block, to bound memory


def conditional_mixture(params: MoEParams, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditional mixture of y given each input: log weights (n, k), means (n, k), sds (k,)."""
    log_w, mean = log_gate_and_mean(params, X)
    return log_w, mean, np.sqrt(np.asarray(params.variance))


def _z(y: np.ndarray, mean: np.ndarray, sd: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
    """Standardised distances (n, m, k) of the points ``anchor + y`` (or ``y``) from every component.

    A point is an anchor (a component mean) plus an offset, so that ``anchor - mean`` is exact for
    the anchor's own component and a component far narrower than the float spacing at its distance
    from the centre (variances 1e300 next to 1e-300) is still resolved.
    """
    if anchor is None:
        return (y[:, :, None] - mean[:, None, :]) / sd
    return ((anchor[:, :, None] - mean[:, None, :]) + y[:, :, None]) / sd


def _log_pdf(y: np.ndarray, log_w: np.ndarray, mean: np.ndarray, sd: np.ndarray, anchor: np.ndarray | None = None) -> np.ndarray:
    """log p(y) of a Gaussian mixture; y (n, m) (offsets from ``anchor`` if given), log_w and mean (n, k), sd (k,) -> (n, m)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # far from every component z * z may overflow: density 0
        z = _z(y, mean, sd, anchor)
        terms = (log_w - np.log(sd * np.sqrt(2.0 * np.pi)))[:, None, :] - 0.5 * z * z  # (n, m, k)
        top = terms.max(axis=-1)  # -inf only where every component's density underflows
        safe = np.where(np.isfinite(top), top, 0.0)
        return np.where(np.isfinite(top), safe + np.log(np.exp(terms - safe[..., None]).sum(axis=-1)), -np.inf)


def _cdf(y: np.ndarray, log_w: np.ndarray, mean: np.ndarray, sd: np.ndarray, anchor: np.ndarray | None = None) -> np.ndarray:
    """CDF of a Gaussian mixture; y (n, m) (offsets from ``anchor`` if given) -> (n, m)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.einsum("nk,nmk->nm", np.exp(log_w), ndtr(_z(y, mean, sd, anchor)))


def _quadrature_grid(mean: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights in y for each input: anchors, offsets and weights, all (n, m).

    Node ``i`` is ``anchor[:, i] + offset[:, i]`` (increasing in i), where the anchor is the mean of
    the component whose breakpoint starts the node's panel. Breakpoints are every component's
    ``mean + s * sd`` for ``s = -10, -8, ..., 10``; between consecutive breakpoints an 8-point rule
    is used. Inside any component's +-10 sd range a panel is at most two of its sds wide, so the
    integrand is resolved to ~1e-12 whatever the scales (checked against closed forms in the
    tests); outside every range the densities are below e^-50. Panel widths are computed from the
    anchors' differences, so a component narrower than the float spacing at its mean keeps its panels.
    """
    n, k = mean.shape
    steps = np.arange(-_PANELS_PER_SIDE, _PANELS_PER_SIDE + 1) * (_TAIL_SD / _PANELS_PER_SIDE)
    comp = np.broadcast_to(np.repeat(np.arange(k), steps.size), (n, k * steps.size))  # component of each breakpoint
    step = np.broadcast_to(np.tile(steps, k), comp.shape)  # its s
    # A breakpoint of a wider component inside a narrower one's +-10 sd range is not needed (the narrow
    # component's panels are finer) and, where the narrow range is below the float spacing, it cannot be
    # placed in it: it becomes a copy of the narrow component's first breakpoint (a panel of width 0).
    offset = (np.take_along_axis(mean, comp, axis=1)[:, :, None] - mean[:, None, :]) + (sd[comp] * step)[:, :, None]  # (n, k * S, k)
    inside = (np.abs(offset) < _TAIL_SD * sd) & (sd < sd[comp][:, :, None])
    narrowest = np.argmin(np.where(inside, sd, np.inf), axis=-1)
    moved = inside.any(axis=-1)
    comp, step = np.where(moved, narrowest, comp), np.where(moved, -_TAIL_SD, step)
    value = np.take_along_axis(mean, comp, axis=1) + sd[comp] * step  # (n, k * S)
    order = np.lexsort((comp, step, value), axis=-1)
    c, s = np.take_along_axis(comp, order, axis=1), np.take_along_axis(step, order, axis=1)  # sorted along the line
    anchor = np.take_along_axis(mean, c, axis=1)
    lo_c, hi_c, lo_s, hi_s = c[:, :-1], c[:, 1:], s[:, :-1], s[:, 1:]
    lo_off = lo_s * sd[lo_c]
    width = (anchor[:, 1:] - anchor[:, :-1]) + hi_s * sd[hi_c] - lo_off  # exact within one component
    half = 0.5 * np.maximum(width, 0.0)[:, :, None]  # (n, panels, 1)
    # Nodes are offsets from the panel end of the narrower component (so that near a narrow
    # component they are resolved at its scale, not at the float spacing of a far anchor).
    hi_end = (sd[hi_c] < sd[lo_c])[:, :, None]
    hi_off = (hi_s * sd[hi_c])[:, :, None]
    offset = np.where(hi_end, hi_off - half * (1.0 - _GL_NODES), lo_off[:, :, None] + half * (_GL_NODES + 1.0)).reshape(n, -1)
    weights = (half * _GL_WEIGHTS).reshape(n, -1)
    anchors = np.where(hi_end, anchor[:, 1:, None], anchor[:, :-1, None]) * np.ones_like(_GL_NODES)
    return anchors.reshape(n, -1), offset, weights


def _hellinger_rows(p: tuple, q: tuple) -> np.ndarray:
    """Hellinger distance per input between two conditional mixtures (each (log_w, mean, sd))."""
    anchor, nodes, weights = _quadrature_grid(np.concatenate([p[1], q[1]], axis=1), np.concatenate([p[2], q[2]]))
    root_p = np.exp(0.5 * _log_pdf(nodes, *p, anchor=anchor))
    root_q = np.exp(0.5 * _log_pdf(nodes, *q, anchor=anchor))
    h2 = 0.5 * np.sum(weights * (root_p - root_q) ** 2, axis=1)
    return np.sqrt(np.clip(h2, 0.0, 1.0))


def _bisect_roots(lo: np.ndarray, hi: np.ndarray, f_lo: np.ndarray, diff: Callable, n_iter: int = 40) -> np.ndarray:
    """Vectorised bisection for roots of ``diff`` bracketed by [lo, hi] (sign change).

    Brackets are a fraction of an sd wide, so 40 halvings locate a root to ~1e-12 sd; an error delta in
    a crossing changes the CDF difference there by O(delta^2) only (p - q vanishes at it).
    """
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        f_mid = diff(mid)
        left = (f_mid >= 0) == (f_lo >= 0)
        lo, f_lo = np.where(left, mid, lo), np.where(left, f_mid, f_lo)
        hi = np.where(left, hi, mid)
    return 0.5 * (lo + hi)


def _tv_rows(p: tuple, q: tuple) -> np.ndarray:
    """Total-variation distance per input between two conditional mixtures.

    ``p - q`` is evaluated on the quadrature grid; every sign change is refined by bisection to a
    crossing point r, and with ``D = F_p - F_q`` (mixture CDFs, closed form)
    ``TV = 1/2 sum over sign-constant intervals |D(r_{m+1}) - D(r_m)|`` (``D = 0`` at +-inf), exact
    up to crossings closer together than the grid spacing.
    """
    anchor, nodes, weights = _quadrature_grid(np.concatenate([p[1], q[1]], axis=1), np.concatenate([p[2], q[2]]))
    f = np.exp(_log_pdf(nodes, *p, anchor=anchor)) - np.exp(_log_pdf(nodes, *q, anchor=anchor))  # (n, m)
    s = f >= 0  # a node where p == q exactly counts as positive, so no crossing is missed
    bracket = s[:, :-1] != s[:, 1:]  # (n, m - 1)
    rows, cols = np.nonzero(bracket)
    d_at = np.zeros(bracket.shape)
    if rows.size:
        sub = lambda part: tuple(a[rows] if a.ndim == 2 else a for a in part)  # noqa: E731
        p_r, q_r = sub(p), sub(q)
        a = anchor[rows, cols][:, None]  # offsets below are from the bracket's left anchor
        diff = lambda y: (np.exp(_log_pdf(y[:, None], *p_r, anchor=a)) - np.exp(_log_pdf(y[:, None], *q_r, anchor=a)))[:, 0]  # noqa: E731
        hi = nodes[rows, cols + 1] + (anchor[rows, cols + 1] - anchor[rows, cols])
        root = _bisect_roots(nodes[rows, cols], hi, f[rows, cols], diff)
        d_at[rows, cols] = (_cdf(root[:, None], *p_r, anchor=a) - _cdf(root[:, None], *q_r, anchor=a))[:, 0]
    # forward-fill D between crossings, so that |diff| is non-zero only at crossings
    vals = np.concatenate([np.zeros((bracket.shape[0], 1)), d_at], axis=1)
    idx = np.where(np.concatenate([np.ones((bracket.shape[0], 1), bool), bracket], axis=1), np.arange(vals.shape[1]), 0)
    filled = np.take_along_axis(vals, np.maximum.accumulate(idx, axis=1), axis=1)
    seq = np.concatenate([filled, np.zeros((bracket.shape[0], 1))], axis=1)
    return np.clip(0.5 * np.abs(np.diff(seq, axis=1)).sum(axis=1), 0.0, 1.0)


def _inputs(est: Any, truth: Any, X: Any, n_mc: int, rng: Any, x_dist: str) -> np.ndarray:
    _check_params(est, "est")
    _check_params(truth, "truth")
    if est.dim != truth.dim:
        raise ValueError(f"est and truth must have the same input dimension; got est.dim={est.dim}, truth.dim={truth.dim}")
    if X is None:
        if isinstance(n_mc, bool) or not isinstance(n_mc, (int, np.integer)) or n_mc < 1:
            raise ValueError(f"n_mc must be a positive int; got {n_mc!r}")
        return sample_x(int(n_mc), truth.dim, x_dist, as_rng(0 if rng is None else rng))
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1 and truth.dim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[1] != truth.dim or X.shape[0] < 1:
        raise ValueError(f"X must have shape (n_samples, {truth.dim}); got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    return X


def _centred(p: tuple, q: tuple) -> tuple[tuple, tuple]:
    """Both conditional mixtures shifted by the mean of the truth's heaviest component, per input.

    The distances are translation invariant; working relative to a centre keeps the quadrature
    grid resolved when the means share a large offset (intercepts 1e17 + b): the difference of
    two close floats is exact (Sterbenz), while ``1e17 + 0.3`` is not.
    """
    centre = np.take_along_axis(q[1], np.argmax(q[0], axis=1)[:, None], axis=1)  # (n, 1)
    with np.errstate(invalid="ignore"):
        return (p[0], p[1] - centre, p[2]), (q[0], q[1] - centre, q[2])


def _shift_intercepts(est: MoEParams, truth: MoEParams) -> tuple[MoEParams, MoEParams]:
    """Subtract a common offset (the truth's mean intercept) from both models' expert intercepts.

    With linear experts and a gate that does not read the experts' outputs this shifts every
    conditional density in y by the same amount, which leaves the distances unchanged, and it keeps
    ``a x + b`` exact when the intercepts share a large offset (1e17 + b rounds b to a multiple of 16).
    """
    if est.expert != "linear" or truth.expert != "linear" or "competition" in (est.gate, truth.gate):
        return est, truth
    offset = float(np.mean(truth.expert_bias))
    if offset == 0.0:
        return est, truth
    return est.replace(expert_bias=est.expert_bias - offset), truth.replace(expert_bias=truth.expert_bias - offset)


def _expected_distance(rows_fn: Callable, est: MoEParams, truth: MoEParams, X: np.ndarray) -> float:
    est, truth = _shift_intercepts(est, truth)
    total = 0.0
    for start in range(0, X.shape[0], _CHUNK):
        block = X[start:start + _CHUNK]
        total += float(rows_fn(*_centred(conditional_mixture(est, block), conditional_mixture(truth, block))).sum())
    return total / X.shape[0]


def hellinger(
    est: MoEParams, truth: MoEParams, X: Any = None, n_mc: int = 1000, rng: Any = None, *, x_dist: str = "uniform"
) -> float:
    """Expected Hellinger distance ``E_X[h(p_est(. | X), p_truth(. | X))]``.

    ``h(p, q)^2 = 1/2 int (sqrt p - sqrt q)^2 dy`` (so ``0 <= h <= 1``), computed for each input by
    composite 8-point Gauss-Legendre quadrature in y on panels no wider than two component sds over
    every component's mean +- 10 sd (accurate to ~1e-11); the expectation is the plain average of
    ``h`` (not of ``h^2``) over the inputs.

    Parameters
    ----------
    est, truth : MoEParams
        Any two models on the same input dimension (gate families may differ).
    X : array of shape (n, d), optional
        Inputs to average over (a grid, or held-out data). Default: ``n_mc`` draws from ``x_dist``.
    n_mc : int, default 1000
        Number of Monte Carlo inputs when ``X`` is None.
    rng : numpy Generator, int seed or None
        Source of the Monte Carlo inputs. None (default) means seed 0, so that the distance is a
        deterministic function of the models (common random numbers across replicates).
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
        Input distribution when ``X`` is None (see :func:`mixsim.model.sample_x`).

    Returns
    -------
    float in [0, 1]
    """
    return _expected_distance(_hellinger_rows, est, truth, _inputs(est, truth, X, n_mc, rng, x_dist))


def total_variation(
    est: MoEParams, truth: MoEParams, X: Any = None, n_mc: int = 1000, rng: Any = None, *, x_dist: str = "uniform"
) -> float:
    """Expected total-variation distance ``E_X[1/2 int |p_est(y | X) - p_truth(y | X)| dy]``.

    For each input the crossings of the two conditional densities are located (sign changes on the
    quadrature grid of :func:`hellinger`, refined by bisection) and the integral is assembled from
    the mixtures' closed-form CDFs between crossings, so it is exact up to rounding (~1e-12)
    unless two crossings are closer than the grid spacing. Parameters and defaults as in
    :func:`hellinger`.

    Returns
    -------
    float in [0, 1]
    """
    return _expected_distance(_tv_rows, est, truth, _inputs(est, truth, X, n_mc, rng, x_dist))
