"""Trust-region Newton on the observed log-likelihood, for every gate and expert, and the
certificate of a fit.

Each iteration takes the gradient and exact Hessian (:mod:`mixsim.fitting.derivatives`) and
solves the trust-region problem exactly in the Hessian's eigenbasis. :func:`run_newton` is the
entry point (called by :mod:`mixsim.fitting.engine`); :func:`measure` certifies a fit
(:func:`stationarity`, the Newton decrement of :func:`newton_decrement`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .derivatives import features, grad_hess, has_closed_form, loglik
from .bounds import VarianceBounds, restrict
from .layout import Layout

if TYPE_CHECKING:
    from .state import EngineState

__all__ = ["run_newton", "measure", "stationarity", "newton_decrement"]


def _scaled_eigen(g: torch.Tensor, H: torch.Tensor):
    """The quadratic model g.s + s.H.s/2 in the metric of -H's diagonal: s = scale * (U @ w) turns
    it into c.w - sum(lam w^2)/2 with lam ascending. Returns (scale, lam, U, c)."""
    A = -H
    scale = torch.diagonal(A, dim1=1, dim2=2).abs()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).rsqrt()  # (B, P)
    As = A * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    lam, U = torch.linalg.eigh(0.5 * (As + As.transpose(1, 2)))
    c = (U.transpose(1, 2) @ (g * scale).unsqueeze(-1)).squeeze(-1)  # (B, P)
    return scale, lam, U, c


def _trust_step(lam: torch.Tensor, c: torch.Tensor, radius: torch.Tensor, n_iter: int = 12):
    """Exact trust-region step in eigen-coordinates (More and Sorensen): maximise
    ``c.w - sum(lam w^2)/2`` over ``|w| <= radius``, for any curvature ``lam`` (B, P), ascending.

    The Newton step where the model is concave and the step fits; otherwise w = c / (lam + mu)
    on the boundary, mu >= max(0, -lam_min) found by Newton's method on the secular equation
    ``1/|w(mu)| = 1/radius`` (concave in mu, so iterates from the left never overshoot); in the
    hard case (no gradient along the most negative curvature) the step is completed along that
    eigenvector to the boundary. A fixed number of iterations: no host synchronisation.
    Returns w (B, P) and the predicted gain (B,).
    """
    tiny = 1e-12 * lam.abs().amax(1).clamp_min(1e-300)
    low = (-lam[:, 0]).clamp_min(0) + tiny  # (B,)
    norm = lambda mu: (c / (lam + mu[:, None])).square().sum(1).sqrt()  # noqa: E731
    newton = (lam[:, 0] > tiny) & (norm(torch.zeros_like(low)) <= radius)
    hard = ~newton & (norm(low) <= radius)
    mu = low
    for _ in range(n_iter):  # mu <- mu - phi / phi' with phi = 1/|w| - 1/radius
        inv = (lam + mu[:, None]).reciprocal()
        w2 = (c * inv).square()
        s2, s3 = w2.sum(1), (w2 * inv).sum(1).clamp_min(1e-300)
        mu = torch.maximum(mu + s2 * (s2.sqrt() - radius) / (radius * s3), low)
    mu = torch.where(newton, torch.zeros_like(mu), mu)
    w = c / (lam + mu[:, None])
    w[:, 0] = torch.where(hard, torch.zeros_like(mu), w[:, 0])
    tau = (radius**2 - (w * w).sum(1)).clamp_min(0).sqrt()
    sign = torch.where(c[:, 0] < 0, -1.0, 1.0).to(c.dtype)
    w[:, 0] = torch.where(hard, tau * sign, w[:, 0])
    gain = (c * w).sum(1) - 0.5 * (lam * w * w).sum(1)
    return w, gain, mu


def newton_decrement(g: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per-sample Newton decrement ``g^T (-H)^+ g / 2`` of each row, shape (B,).

    ``g`` (B, P) and ``H`` (B, P, P) are the gradient and Hessian of the per-sample
    log-likelihood. The decrement is the gain a full Newton step predicts, in nats per sample: it
    does not depend on the units or the parametrisation (any invertible linear change of the
    parameters leaves it unchanged), so one tolerance means the same for every model and n.
    Computed in the metric of the Hessian's diagonal: ``-H`` scaled to unit diagonal is
    eigendecomposed, and directions of curvature below ``1e-12`` (flat: an atom whose mass has
    vanished, an over-fitted model's degenerate directions; or of negative curvature: not a
    maximum) count with curvature ``1e-12``, so a gradient along them is never read as small.
    """
    _, lam, _, c = _scaled_eigen(g, H)
    return _decrement(lam, c)


def _decrement(lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The decrement from the eigen-form of the model (:func:`_scaled_eigen`), flat directions floored."""
    return 0.5 * (c * c / lam.clamp_min(_FLAT)).sum(-1)


def stationarity(g: torch.Tensor, H: torch.Tensor, theta: torch.Tensor, bounds: VarianceBounds, k: int) -> torch.Tensor:
    """Newton decrement per sample (:func:`newton_decrement`) of the problem with variance bounds:
    in the directions free to move at ``theta`` (:meth:`VarianceBounds.free_basis`, the KKT
    conditions of the bounds)."""
    return newton_decrement(*restrict(g, H, bounds.free_basis(theta, g, k)))


def measure(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds):
    """Gradient (B, P) and :func:`stationarity` (B,) at ``theta``: what certifies a fit."""
    g, H = grad_hess(layout, theta, X, y)
    return g, stationarity(g, H, theta, bounds, layout.k)


_FLAT = 1e-12  # curvature (in the unit-diagonal metric) below which a direction counts as flat


_LEAP = True  # extrapolate along valleys (False: plain trust region, for comparisons)
_RADIUS_MAX = 1e6  # trust radius bounds, in the metric of -H's diagonal (a step of radius r
_RADIUS_START = 1.0  # changes the quadratic model by about r^2 / 2 nats per sample)


def run_newton(layout: Layout, theta: torch.Tensor, X, y, bounds: VarianceBounds, tol: float, gtol: float, n_steps: int,
               state: EngineState) -> torch.Tensor:
    """Trust-region Newton iterations on the data sets not yet done; returns theta.

    Each iteration solves the exact trust-region problem of the quadratic model in the metric of
    the Hessian's diagonal (:func:`_trust_step`): indefinite Hessians (an over-fitted model away
    from its optimum) give steps along negative curvature instead of heavy damping. The radius
    follows the ratio of the actual to the predicted gain; a step is accepted only if it does not
    decrease the log-likelihood, and a refused one is retried with a quarter of its length.

    Over-fitted models have long, narrow, nearly straight valleys (an atom losing its mass or
    shrinking onto a few points) along which the trust region crawls. After a step that hit the
    trust-region boundary (or a paying extrapolation) the next iteration is taken from the
    extrapolated point ``2 theta_k - theta_{k-1}`` instead of ``theta_k``; its trust-region step
    pulls it back into the valley, so while this pays the step length doubles every iteration.
    Its result is accepted only if it beats ``theta_k``; otherwise the next iteration starts
    from ``theta_k`` again.

    A row converges when it is stationary (Newton decrement per sample <= ``gtol``, measured at
    the point returned, never at an extrapolated one) and its last accepted iteration changed the
    per-sample log-likelihood by at most ``tol``. A row for which no improving step exists even in
    a tiny region is ``stalled`` unless it is already stationary. Sets ``state.f``,
    ``state.grad`` and ``state.stationarity`` of the rows it ran, all at the final theta;
    starts the trace if it is empty.
    """
    k = layout.k
    radius = torch.full_like(state.f, _RADIUS_START)
    leap = torch.zeros_like(state.done)  # the next iteration starts from 2 theta_k - theta_{k-1}
    previous = theta.clone()  # the accepted theta before the current one
    ran = torch.nonzero(~state.done).squeeze(1)
    if ran.numel() == 0:
        return theta
    Phi = features(X) if has_closed_form(layout) else None
    with torch.no_grad():
        state.f[ran] = loglik(layout, theta[ran], X[ran], y[ran], None if Phi is None else Phi[ran])
    if not state.trace:
        state.record(ran, torch.ones_like(ran, dtype=torch.bool))
    for _ in range(n_steps + 1):
        idx = torch.nonzero(~state.done).squeeze(1)
        if idx.numel() == 0:
            break
        Xa, ya, th, fa, rad = X[idx], y[idx], theta[idx], state.f[idx], radius[idx]
        Pa = None if Phi is None else Phi[idx]
        plain = ~leap[idx]
        bnd = bounds.take(idx)
        base = torch.where(plain[:, None], th, bnd.project(2 * th - previous[idx], k))
        g, H, fb = grad_hess(layout, base, Xa, ya, Pa, value=True)
        finite = torch.isfinite(fb) & torch.isfinite(g).all(1) & torch.isfinite(H).all(2).all(1)
        g = torch.where(finite[:, None], g, torch.zeros_like(g))
        H = torch.where(finite[:, None, None], H, -torch.eye(H.shape[1], dtype=H.dtype, device=H.device))
        Z = bnd.free_basis(base, g, k)
        gf, Hf = restrict(g, H, Z)
        scale, lam, U, c = _scaled_eigen(gf, Hf)
        dec = _decrement(lam, c)
        state.grad[idx] = torch.where(plain[:, None], g, state.grad[idx])
        state.stationarity[idx] = torch.where(plain, dec, state.stationarity[idx])
        stationary = plain & (dec <= gtol)
        conv = stationary & (state.last_change[idx] <= tol)
        out_of_steps = plain & (state.n_iter[idx] >= state.max_iter)
        state.converged[idx] |= conv
        stop = conv | out_of_steps
        state.done[idx] |= stop
        if bool(stop.all()):
            break
        pending = ~stop & (finite | plain)
        new_th, new_f = th.clone(), fa.clone()
        boundary, took = torch.zeros_like(plain), torch.zeros_like(plain)
        for attempt in range(24):
            w, pred, mu = _trust_step(lam, c, rad)
            trial = bnd.project(base + (Z @ (scale * (U @ w.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1), k)
            with torch.no_grad():
                f_t = loglik(layout, trial, Xa, ya, Pa)
            ok = pending & finite & torch.isfinite(f_t) & (f_t >= fa)
            new_th = torch.where(ok[:, None], trial, new_th)
            new_f = torch.where(ok, f_t, new_f)
            boundary |= ok & (mu > 0)
            took |= ok
            # Radius: shrink where the model overpromised (or the step failed), grow where it held
            # at the boundary.
            size = w.norm(dim=1)
            gain = f_t - fb
            rho = torch.where(torch.isfinite(gain), gain, torch.full_like(gain, -1.0)) / pred.clamp_min(1e-300)
            grown = torch.where((rho > 0.75) & (size > 0.9 * rad), 2 * rad, rad)
            shrunk = torch.where(rho < 0.25, 0.25 * size, grown)
            rad = torch.where(pending, shrunk.clamp(1e-12, _RADIUS_MAX), rad)
            pending &= ~ok
            if attempt >= 1:  # an extrapolated start that does not pay soon is dropped
                pending &= plain
            if not bool(pending.any()):
                break
        ran_step = ~stop
        accepted = took
        refused = ran_step & plain & pending  # no improving step even in a tiny region
        theta = theta.index_copy(0, idx, new_th)
        radius = radius.index_copy(0, idx, rad)
        previous = previous.index_copy(0, idx, torch.where(accepted[:, None], th, previous[idx]))
        change = new_f - fa
        # Leap next time after an accepted boundary step or leap, away from stationarity; the
        # last iteration allowed is plain, so that the decrement is measured at the result.
        leap[idx] = _LEAP & accepted & (dec > gtol) & (boundary | ~plain) & (state.n_iter[idx] + 2 < state.max_iter)
        state.f = state.f.index_copy(0, idx, new_f)
        state.last_change[idx] = torch.where(accepted, change, state.last_change[idx])
        state.n_iter[idx] += ran_step.long()
        state.record(idx, accepted)
        # A refused step is never convergence: a stationary point is (the decrement at this
        # very theta, computed above); anything else has stalled.
        state.converged[idx] |= refused & stationary
        state.stalled[idx] |= refused & ~stationary
        state.done[idx] |= refused
    return theta
