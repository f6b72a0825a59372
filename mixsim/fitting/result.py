"""What a fit returns: :class:`FitResult` per data set, and :class:`ConvergenceWarning`."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model import MoEParams
from .engine import EngineOutcome
from .layout import Layout, affine
from .scaling import refuse_non_finite

__all__ = ["ConvergenceWarning", "FitResult", "assemble_results"]


class ConvergenceWarning(UserWarning):
    """The best run of a fit did not meet its tolerance within ``max_iter`` iterations."""


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
        ``non_finite`` (the log-likelihood or the estimate is not finite: never converged).
    variance_floor : float
        Lower bound applied to every variance (``variance_floor`` argument times var(y)).
    variance_floored : bool
        Some variance sits on the floor (a collapsed component: treat the estimate with care).
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


def assemble_results(layout: Layout, out: EngineOutcome, floor: torch.Tensor, B: int, n: int, n_init: int, seconds: float,
                     method: str, warn: bool, gtol: float, standardised: tuple[np.ndarray, np.ndarray]) -> list[FitResult]:
    """One :class:`FitResult` per data set from the engines' rows (data set b, start r -> row
    b * n_init + r): the start with the highest likelihood, mapped back to the units of X
    (``standardised``: the per-row centre and scale of X, (R, d) each). Warns
    (:class:`ConvergenceWarning`, pointing at the caller of the caller) when ``warn`` and a data
    set's best start did not converge.
    """
    p = {name: None if v is None else v.detach().cpu().numpy() for name, v in layout.unpack(out.theta).items()}
    p = affine(p, *standardised, inverse=True)
    f, floor = out.f.cpu().numpy(), floor.cpu().numpy()
    conv_all, stalled, n_iter, grad_norm, stat = (
        getattr(out, key).cpu().numpy() for key in ("converged", "stalled", "n_iter", "grad_norm", "stationarity"))
    floored = (p["variance"] <= floor[:, None] * (1 + 1e-9)).any(1)
    results = []
    for b in range(B):
        rows = list(range(b * n_init, (b + 1) * n_init))
        best = max(rows, key=lambda r: float(f[r]))
        conv = bool(conv_all[best])
        status = "converged" if conv else ("stalled" if bool(stalled[best]) else "max_iter")
        res = FitResult(
            params=layout.to_params(p, best),
            log_likelihood=float(f[best]) * n,
            converged=conv,
            n_iter=int(n_iter[best]),
            trace=out.trace[best],
            grad_norm=float(grad_norm[best]),
            status=status,
            variance_floor=float(floor[best]),
            variance_floored=bool(floored[best]),
            seconds=seconds / B,
            method=method,
            stationarity=float(stat[best]),
        )
        res = refuse_non_finite(res)  # never "converged" with a non-finite likelihood or estimate
        results.append(res)
        if warn and not res.converged:
            warnings.warn(
                f"data set {b}: the best of {n_init} start(s) did not converge ({res.status}) after "
                f"{res.n_iter} iterations (Newton decrement {res.stationarity:.2e} nats per sample, "
                f"gtol {gtol:.0e}); raise max_iter or try more starts",
                ConvergenceWarning, stacklevel=3,
            )
    return results
