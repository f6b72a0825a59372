"""What a fit returns: :class:`FitResult` per data set, and :class:`ConvergenceWarning`."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..model import MoEParams
from ..options import FitOptions
from .bounds import VarianceBounds
from .engine import EngineOutcome
from .layout import Layout, affine

__all__ = ["ConvergenceWarning", "FitResult", "SearchRecord", "assemble_results", "refuse_non_finite"]


class ConvergenceWarning(UserWarning):
    """The best run of a fit did not meet its tolerance within ``max_iter`` iterations."""


@dataclass(frozen=True)
class SearchRecord:
    """How the returned optimum was found, and how often: the search half of a fit's certificate.

    Attributes
    ----------
    init : str
        The start rule (``auto``, ``near_truth`` or ``search``).
    n_starts : int
        Starts run for this data set (with ``search``: the candidates screened plus the
        protocol's starts).
    n_continued : int
        Starts run to the end (certification).
    n_failed : int
        Starts dropped because they diverged (a non-finite likelihood or estimate).
    hits : int
        Continued starts whose optimum lies within ``hit_tol`` nats (total) of the best: 1 means
        the best optimum was reached once (treat it as found by luck).
    hit_tol : float
    winner : str
        Kind of the start that reached the returned optimum: ``protocol`` (reference near-truth
        start), ``near_truth`` (wide near-truth start), ``split`` (SMEM split of a fit with one
        expert fewer), ``auto`` (data-driven).
    protocol_loglik : float or None
        With ``init="search"`` and a truth: the best total log-likelihood reached from the
        reference protocol's near-truth starts alone; else None.
    protocol : FitResult or None
        That fit (the reference protocol's estimate), with its own status and certificate.
    """

    init: str
    n_starts: int
    n_continued: int
    n_failed: int
    hits: int
    hit_tol: float
    winner: str
    protocol_loglik: float | None = None
    protocol: "FitResult | None" = None


@dataclass(frozen=True, eq=False)
class FitResult:
    """Outcome of one maximum-likelihood fit.

    Attributes
    ----------
    params : MoEParams
        The estimate (softmax-type gates canonicalised: last expert's gate parameters are 0).
    log_likelihood : float
        Total log-likelihood at ``params``.
    converged : bool
        The fit is at a stationary point: its Newton decrement per sample (``stationarity``) is
        at most ``gtol`` at ``params``, and its last accepted iteration changed the per-sample
        log-likelihood by at most ``tol``. A refused step is never read as convergence.
    n_iter : int
        Iterations run (EM and Newton together) by the best start.
    trace : ndarray of shape (n_accepted + 1,)
        Per-sample log-likelihood after each accepted iteration (never decreasing).
    grad_norm : float
        Euclidean norm of the gradient of the per-sample log-likelihood at ``params``, in the
        fitter's internal coordinates (standardised X, log-variances): depends on units; prefer
        ``stationarity``.
    status : str
        ``converged``, ``max_iter`` (iteration cap reached first), ``stalled`` (neither EM nor
        trust-region Newton found an improving step, and the point is not stationary) or
        ``failed`` (every start diverged; ``params`` is then the best start, unfitted), or
        ``non_finite`` (the log-likelihood or the estimate is not finite: never converged).
    variance_floor : float
        Lower bound applied to every variance (``variance_floor`` argument times var(y)).
    variance_floored : bool
        Some variance sits on the floor (a collapsed component: treat the estimate with care).
    variance_bounded : bool
        Some bound of the declared parameter space is active at ``params`` (``bounds_active``
        says which): the estimate is a maximum over the bounded space, not an interior one.
    bounds_active : tuple of str
        The active bounds among ``floor``, ``cap`` and ``ratio`` (:mod:`mixsim.fitting.bounds`).
    excess_loglik : float or None
        Total log-likelihood at ``params`` minus the truth's on the same data, when the fit was
        given a truth: the basic inequality of maximum-likelihood rate proofs asks for >= 0
        (THEORY.md section 9). None without a truth.
    search : SearchRecord or None
        How many starts ran, failed and reached the returned optimum; the protocol's optimum.
    seconds : float
        Wall time of the fit (a batch's time divided evenly over its data sets).
    method : str
    stationarity : float
        Newton decrement per sample at ``params``: ``g^T (-H)^-1 g / 2`` with g and H the gradient
        and Hessian of the per-sample log-likelihood, i.e. the gain (nats per sample) a full Newton
        step predicts. Scale-free: the same in any units or parametrisation.
    """

    params: MoEParams
    log_likelihood: float
    converged: bool
    n_iter: int
    trace: np.ndarray
    grad_norm: float
    status: str
    variance_floor: float
    variance_floored: bool
    seconds: float
    method: str = field(default="auto")
    stationarity: float = field(default=float("nan"))
    variance_bounded: bool = False
    bounds_active: tuple[str, ...] = ()
    excess_loglik: float | None = None
    search: SearchRecord | None = None


@dataclass(frozen=True)
class Rows:
    """Which data set each engine row fits, and the kind of its start (:data:`mixsim.fitting.search.KINDS`)."""

    owner: np.ndarray  # (R,) int
    kind: list[str]
    init: str
    n_starts: np.ndarray  # (B,) starts run per data set
    n_failed: np.ndarray  # (B,) starts dropped before the rows (in screening)


def assemble_results(layout: Layout, out: EngineOutcome, theta0: torch.Tensor, bounds: VarianceBounds, rows: Rows,
                     n: int, seconds: float, opts: FitOptions, warn: bool,
                     standardised: tuple[np.ndarray, np.ndarray]) -> list[FitResult]:
    """One :class:`FitResult` per data set from the engines' rows: the row with the highest
    likelihood among those that did not diverge, mapped back to the units of X (``standardised``:
    the per-row centre and scale of X, (R, d) each). A diverged row (non-finite likelihood or
    estimate) is dropped and counted; if every row of a data set diverged, its start ``theta0``
    is returned with status ``failed``. Warns (:class:`ConvergenceWarning`, pointing at the caller
    of the caller) when ``warn`` and a data set's best row did not converge.
    """
    theta = out.theta
    finite = torch.isfinite(out.f) & torch.isfinite(theta).all(1) & (theta[:, -layout.k:] < 700).all(1)
    theta = torch.where(finite[:, None], theta, theta0)
    unpacked = layout.unpack(theta)
    p = affine({name: None if v is None else v.detach().cpu().numpy() for name, v in unpacked.items()}, *standardised, inverse=True)
    active = {key: v.cpu().numpy() for key, v in bounds.active(unpacked["variance"]).items()}
    ok = finite.cpu().numpy()
    f = np.where(ok, out.f.cpu().numpy(), -np.inf)
    lower = bounds.lower.cpu().numpy()
    results = []
    for b in range(len(rows.n_starts)):
        mine = np.flatnonzero(rows.owner == b)
        best = max(mine, key=lambda r: (bool(ok[r]), f[r]))
        res = _result(layout, out, p, active, lower, best, n, f, seconds / len(rows.n_starts), opts, ok[best])
        good = [r for r in mine if ok[r]]
        protocol = [r for r in good if rows.kind[r] == "protocol"] if rows.init == "search" else []
        proto = None
        if protocol:
            top = max(protocol, key=lambda r: f[r])
            proto = _result(layout, out, p, active, lower, top, n, f, 0.0, opts, True)
        record = SearchRecord(
            init=rows.init, n_starts=int(rows.n_starts[b]), n_continued=len(mine),
            n_failed=int(rows.n_failed[b]) + len(mine) - len(good),
            hits=int(sum(f[best] * n - f[r] * n <= opts.hit_tol for r in good)), hit_tol=opts.hit_tol,
            winner=rows.kind[best], protocol_loglik=None if proto is None else proto.log_likelihood, protocol=proto)
        res = replace(res, search=record)
        results.append(res)
        if warn and not res.converged:
            warnings.warn(
                f"data set {b}: the best of {len(mine)} start(s) did not converge ({res.status}) after "
                f"{res.n_iter} iterations (Newton decrement {res.stationarity:.2e} nats per sample, "
                f"gtol {opts.gtol:.0e}); raise max_iter or try more starts",
                ConvergenceWarning, stacklevel=3,
            )
    return results


def _result(layout: Layout, out: EngineOutcome, p: dict, active: dict, lower: np.ndarray, r: int, n: int, f: np.ndarray,
            seconds: float, opts: FitOptions, ok: bool) -> FitResult:
    """The FitResult of engine row ``r``."""
    conv = bool(out.converged[r]) and ok
    status = "converged" if conv else ("failed" if not ok else ("stalled" if bool(out.stalled[r]) else "max_iter"))
    on = tuple(key for key in ("floor", "cap", "ratio") if active[key][r]) if ok else ()
    return refuse_non_finite(FitResult(
        params=layout.to_params(p, r),
        log_likelihood=float(f[r]) * n if ok else float(out.trace[r][0]) * n,
        converged=conv,
        n_iter=int(out.n_iter[r]),
        trace=out.trace[r],
        grad_norm=float(out.grad_norm[r]),
        status=status,
        variance_floor=float(lower[r]),
        variance_floored="floor" in on,
        seconds=seconds,
        method=opts.method,
        stationarity=float(out.stationarity[r]),
        variance_bounded=bool(on),
        bounds_active=on,
    ))  # never "converged" with a non-finite likelihood or estimate


def refuse_non_finite(res: FitResult) -> FitResult:
    """``res`` (a FitResult), or a copy with ``converged=False`` and status ``non_finite`` when its
    log-likelihood or any parameter is not finite, or a variance is not positive."""
    p = res.params
    values = [p.gate_weight, p.gate_bias, p.expert_weight, p.expert_bias, p.variance]
    finite = math.isfinite(res.log_likelihood) and all(v is None or bool(np.all(np.isfinite(v))) for v in values)
    if finite and bool(np.all(np.asarray(p.variance) > 0)):
        return res
    return replace(res, converged=False, status="non_finite")
