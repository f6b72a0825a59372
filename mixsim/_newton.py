"""Trust-region Newton on the observed log-likelihood, for every gate and expert.

Gradients and exact Hessians in closed form from a few per-sample "local" quantities (softmax
and competition gates), by autograd for the sigmoid gate; chunked over samples (a fixed number
per chunk, so a row's sums do not depend on its batch). The closed forms work expert-major,
on (B, locals, samples) tensors, so every reduction runs over contiguous samples.
"""
from __future__ import annotations

import torch

from ._layout import _Layout, _mean_loglik, _project, _record
from .experts import EXPERT_DERIVATIVES
from .gates import PHI_DERIVATIVES, competition_logits, masked_log_softmax
from .model import _LOG_2PI

_CHUNK = 2**13  # samples per chunk: temporaries stay in cache, and a row's sums do not depend on its batch


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(n, i + _CHUNK)) for i in range(0, n, _CHUNK)]


def _features(X: torch.Tensor) -> torch.Tensor:
    """phi = [x, 1] feature-major: (B, q, n), contiguous."""
    return torch.cat([X.transpose(1, 2), X.new_ones(X.shape[0], 1, X.shape[1])], 1).contiguous()


def _coefficients(layout: _Layout, theta: torch.Tensor) -> torch.Tensor:
    """Local coefficients (B, m, q): local u_a = C[a] . phi, with theta[t] at (loc[t], feat[t])."""
    B, q, m = theta.shape[0], layout.d + 1, layout.n_local
    loc, feat, *_ = _Bands.of(layout, theta.device)
    return theta.new_zeros(B, m * q).index_copy_(1, loc * q + feat, theta).reshape(B, m, q)


def _n_varying(layout: _Layout) -> int:
    """Locals that vary with x (gate logits, expert pre-activations) come first in the layout's
    order; the rest (log-variances, competition intercepts) are constants."""
    return layout.k * (1 if layout.gate == "competition" else 2)


def _local_terms(layout: _Layout, C: torch.Tensor, Phi: torch.Tensor, y: torch.Tensor, order: int = 2):
    """Per-sample log-density and closed-form derivative pieces, expert-major (softmax, competition).

    ``C`` (B, m, q) are the local coefficients, ``Phi`` (B, q, c) the features, ``y`` (B, c).
    With a_j = log pi_j + log N_j and r = softmax_j(a_j), in the locals (scores s, expert
    pre-activations, log-variances) the per-sample Hessian of l = logsumexp(a) is
    ``Diag + pi~ pi~^T - g~ g~^T`` with g~ = (r, r D, r V), pi~ = (pi, 0, 0) and ``Diag`` diagonal
    over experts in each pair of local types; the gradient is g~ - pi~. For competition the
    scores are s = phi(g(eta)) + c, and the chain rule keeps this form. Returns the log-density
    (B, c), then for ``order`` >= 1 g~ (B, m, c) and pi~ (B, m, c), and for ``order`` 2 the
    diagonal bands {(type_a, type_b): (B, k, c or 1)} (else {}), types indexing the locals in the
    layout's order.
    """
    k, nv, d = layout.k, _n_varying(layout), layout.d
    comp = layout.gate == "competition"
    V = C[:, :nv] @ Phi  # (B, nv, c)
    const = C[:, nv:, d:]  # (B, m - nv, 1)
    eta = V[:, :k] if comp else V[:, k:]
    lv = const[:, :k]
    mu, d1, d2 = EXPERT_DERIVATIVES[layout.expert](eta)
    if comp:
        scores = competition_logits(mu, None, layout.phi)
        if layout.gate_bias:
            scores = scores + const[:, k:]
    else:
        scores = V[:, :k]
    log_gate = masked_log_softmax(scores, layout.top_k, dim=1)  # (B, k, c)
    w = torch.exp(-lv)  # (B, k, 1)
    e = y.unsqueeze(1) - mu
    ew = e * w
    a = log_gate - 0.5 * (lv + e * ew)
    top = a.amax(1, keepdim=True)
    r = torch.exp(a - top)
    s = r.sum(1, keepdim=True)
    loglik = (torch.log(s) + top).squeeze(1) - 0.5 * _LOG_2PI
    if order == 0:
        return loglik
    r = r / s
    pi = torch.exp(log_gate)  # 0 outside the top-K
    D = ew * d1  # d log N_j / d eta_j
    V2 = 0.5 * (e * ew - 1)  # d log N_j / d lv_j
    rD, rV = r * D, r * V2
    zero = torch.zeros_like(pi)
    if not comp:  # locals (s, eta, lv) = types 0, 1, 2
        gt, pt = torch.cat([r, rD, rV], 1), torch.cat([pi, zero, zero], 1)
    else:  # locals (eta, lv[, c]) = types 0, 1[, 2]; s = kap * eta + c to first order
        p1, p2 = PHI_DERIVATIVES[layout.phi](mu)
        kap = p1 * d1  # d s / d eta
        gt, pt = [rD + kap * r, rV] + [r] * layout.gate_bias, [kap * pi, zero] + [pi] * layout.gate_bias
        gt, pt = torch.cat(gt, 1), torch.cat(pt, 1)
    if order == 1:
        return loglik, gt, pt, {}
    ss, sv = r - pi, rV
    ee = rD * D + r * w * (e * d2 - d1 * d1)
    ev = rD * V2 - r * ew * d1
    vv = rV * V2 - 0.5 * r * e * ew
    if not comp:
        return loglik, gt, pt, {(0, 0): ss, (0, 1): rD, (0, 2): sv, (1, 1): ee, (1, 2): ev, (2, 2): vv}
    kap2 = p2 * d1 * d1 + p1 * d2  # d2 s / d eta2
    bands = {(0, 0): kap * kap * ss + 2 * kap * rD + ee + ss * kap2, (0, 1): kap * sv + ev, (1, 1): vv}
    if layout.gate_bias:
        bands |= {(0, 2): kap * ss + rD, (1, 2): sv, (2, 2): ss}
    return loglik, gt, pt, bands


def _closed(layout: _Layout) -> bool:
    return layout.gate in ("softmax", "competition")


def _loglik(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, Phi: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample log-likelihood (B,) of each row: the closed form where it exists, chunked."""
    if not _closed(layout):
        return _mean_loglik(layout, theta, X, y)
    Phi = _features(X) if Phi is None else Phi
    C = _coefficients(layout, theta)
    total = theta.new_zeros(theta.shape[0])
    for sl in _chunks(y.shape[1]):
        total += _local_terms(layout, C, Phi[..., sl], y[:, sl], order=0).sum(1)
    return total / y.shape[1]


def _local_derivatives_autograd(layout: _Layout, U: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gradient and Hessian in the locals by m Hessian-vector products (any gate)."""
    U = U.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(layout.local_loglik(U, y).sum(), U, create_graph=True)
        h = torch.stack([torch.autograd.grad(g[..., a].sum(), U, retain_graph=True)[0] for a in range(U.shape[-1])], -1)
    return g.detach(), h.detach()


class _Bands:
    """Where the diagonal bands of the per-sample Hessian land in the parameter Hessian (cached per layout)."""

    _cache: dict = {}

    @classmethod
    def of(cls, layout: _Layout, device: torch.device):
        key = (layout, str(device))
        if key not in cls._cache:
            k, q = layout.k, layout.d + 1
            loc, feat = (torch.tensor(v, device=device) for v in layout.local_map())
            types, comps = loc // k, loc % k
            same = comps[:, None] == comps[None, :]
            fidx = feat[:, None] * q + feat[None, :]
            n_types = layout.n_local // k
            pairs = [(a, b) for a in range(n_types) for b in range(a, n_types)]
            rows, cols, src = [], [], []
            for i, (a, b) in enumerate(pairs):
                for ta, tb in {(a, b), (b, a)}:
                    r_, c_ = torch.nonzero(same & (types[:, None] == ta) & (types[None, :] == tb), as_tuple=True)
                    rows.append(r_)
                    cols.append(c_)
                    src.append((i * k + comps[r_]) * q * q + fidx[r_, c_])
            cls._cache[key] = (loc, feat, pairs, torch.cat(rows), torch.cat(cols), torch.cat(src))
        return cls._cache[key]


def _grad_hess(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, Phi: torch.Tensor | None = None,
               value: bool = False):
    """Gradient (B, P) and Hessian (B, P, P) of the per-sample log-likelihood.

    The log-density of sample i depends on the parameters only through m local quantities u_i
    (``_Layout.locals_of``), each affine in phi_i = [x_i, 1]: parameter t acts through local
    ``loc[t]`` times feature ``feat[t]``. For softmax and competition gates the per-sample Hessian
    in the locals is ``Diag + pi~ pi~^T - g~ g~^T`` (``_local_terms``), so the parameter Hessian
    is three batched matrix products over the samples: the bands of ``Diag`` against phi phi^T,
    and the Gram matrices of the lifted vectors g~[loc] * phi[feat] and pi~[loc] * phi[feat]
    (expert-major, so every product runs over contiguous samples). Other gates take per-sample
    Hessians from autograd. ``_grad_hess_autograd`` is the plain reference.
    """
    B, n = y.shape
    P, q, k = theta.shape[1], layout.d + 1, layout.k
    grad = theta.new_zeros(B, P)
    hess = theta.new_zeros(B, P, P)
    theta = theta.detach()
    if not _closed(layout):
        loc, feat = (torch.tensor(v, device=theta.device) for v in layout.local_map())
        for sl in [slice(i, min(n, i + _CHUNK)) for i in range(0, n, _CHUNK)]:
            Xc = X[:, sl]
            Phic = torch.cat([Xc, torch.ones_like(Xc[..., :1])], dim=-1)  # (B, c, q)
            U = layout.locals_of(theta, Xc)
            g, h = _local_derivatives_autograd(layout, U, y[:, sl])  # (B, c, m), (B, c, m, m)
            G = g[..., loc] * Phic[..., feat]
            grad += G.sum(1)
            Hl = h[..., loc[:, None], loc[None, :]] * (Phic[..., feat][..., :, None] * Phic[..., feat][..., None, :])
            hess += Hl.sum(1)
        out = (grad / n, 0.5 * (hess + hess.transpose(1, 2)) / n)
        return (*out, _mean_loglik(layout, theta, X, y)) if value else out
    loc, feat, pairs, rows, cols, src = _Bands.of(layout, theta.device)
    Phi = _features(X) if Phi is None else Phi
    C = _coefficients(layout, theta)
    band_sum = theta.new_zeros(B, len(pairs) * k, q * q)
    total = theta.new_zeros(B)
    for sl in _chunks(n):
        Pc = Phi[..., sl]  # (B, q, c)
        ll, gt, pt, bands = _local_terms(layout, C, Pc, y[:, sl])
        total += ll.sum(1)
        Pf = Pc[:, feat]  # (B, P, c)
        G = gt[:, loc] * Pf
        Q = pt[:, loc] * Pf
        grad += G.sum(-1) - Q.sum(-1)
        hess += torch.baddbmm(Q @ Q.transpose(1, 2), G, G.transpose(1, 2), alpha=-1)
        c = Pc.shape[-1]
        PhiPhi = (Pc.unsqueeze(1) * Pc.unsqueeze(2)).reshape(B, q * q, c)
        stacked = torch.cat([bands[key].expand(B, k, c) for key in pairs], 1)  # (B, n_pairs * k, c)
        band_sum += stacked @ PhiPhi.transpose(1, 2)
    hess[:, rows, cols] += band_sum.reshape(B, -1)[:, src]
    out = (grad / n, 0.5 * (hess + hess.transpose(1, 2)) / n)
    return (*out, total / n) if value else out


def _grad_hess_autograd(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: gradient and Hessian by differentiating through the parameters directly."""
    B, n = y.shape
    P = theta.shape[1]
    theta = theta.detach().requires_grad_(True)
    f = _mean_loglik(layout, theta, X, y).sum()
    (g,) = torch.autograd.grad(f, theta, create_graph=True)
    H = torch.stack([torch.autograd.grad(g[:, p].sum(), theta, retain_graph=True)[0] for p in range(P)], dim=1)
    return g.detach(), H.detach()


def _gradient(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_mean_loglik(layout, theta, X, y).sum(), theta)
    return g


def _value_and_gradient(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                        Phi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample log-likelihood (B,) and its gradient (B, P): closed form (one pass, no Hessian)
    for softmax and competition gates, autograd otherwise."""
    if not _closed(layout):
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            f = _mean_loglik(layout, theta, X, y)
            (g,) = torch.autograd.grad(f.sum(), theta)
        return f.detach(), g
    loc, feat, *_ = _Bands.of(layout, theta.device)
    Phi = _features(X) if Phi is None else Phi
    C = _coefficients(layout, theta.detach())
    n = y.shape[1]
    total = theta.new_zeros(theta.shape[0])
    acc = theta.new_zeros(theta.shape[0], layout.n_local, layout.d + 1)
    for sl in _chunks(n):
        Pc = Phi[..., sl]
        ll, gt, pt, _ = _local_terms(layout, C, Pc, y[:, sl], order=1)
        total += ll.sum(1)
        acc += (gt - pt) @ Pc.transpose(1, 2)
    return total / n, acc[:, loc, feat] / n


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


def _free_of_floor(g: torch.Tensor, H: torch.Tensor, theta: torch.Tensor, log_floor: torch.Tensor, k: int):
    """Gradient and Hessian restricted to the parameters free to move: a log-variance held at
    the variance floor whose gradient pushes it below the floor is fixed (its gradient entry is
    zeroed and its Hessian row and column decoupled), as the KKT conditions of the bound ask."""
    held = torch.zeros_like(g, dtype=torch.bool)
    held[:, -k:] = (theta[:, -k:] <= log_floor[:, None] + 1e-9) & (g[:, -k:] < 0)
    free = (~held).to(g.dtype)
    eye = torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
    H = H * (free.unsqueeze(-1) * free.unsqueeze(-2)) + torch.diag_embed(torch.diagonal(H, dim1=1, dim2=2)) * (1 - free).unsqueeze(-1) * eye
    return g * free, H


def stationarity(g: torch.Tensor, H: torch.Tensor, theta: torch.Tensor, log_floor: torch.Tensor, k: int) -> torch.Tensor:
    """Newton decrement per sample (:func:`newton_decrement`) of the problem with variance floor."""
    return newton_decrement(*_free_of_floor(g, H, theta, log_floor, k))


def measure(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, log_floor: torch.Tensor):
    """Gradient (B, P) and :func:`stationarity` (B,) at ``theta``: what certifies a fit."""
    g, H = _grad_hess(layout, theta, X, y)
    return g, stationarity(g, H, theta, log_floor, layout.k)


_FLAT = 1e-12  # curvature (in the unit-diagonal metric) below which a direction counts as flat


_LEAP = True  # extrapolate along valleys (False: plain trust region, for comparisons)
_RADIUS_MAX = 1e6  # trust radius bounds, in the metric of -H's diagonal (a step of radius r
_RADIUS_START = 1.0  # changes the quadratic model by about r^2 / 2 nats per sample)


def _run_newton(layout: _Layout, theta: torch.Tensor, X, y, log_floor, tol: float, gtol: float, n_steps: int, state: dict) -> torch.Tensor:
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
    a tiny region is ``stalled`` unless it is already stationary. Sets ``state["f"]``,
    ``state["grad"]`` and ``state["stationarity"]`` of the rows it ran, all at the final theta;
    starts the trace if it is empty.
    """
    k = layout.k
    radius = torch.full_like(state["f"], _RADIUS_START)
    leap = torch.zeros_like(state["done"])  # the next iteration starts from 2 theta_k - theta_{k-1}
    previous = theta.clone()  # the accepted theta before the current one
    ran = torch.nonzero(~state["done"]).squeeze(1)
    if ran.numel() == 0:
        return theta
    Phi = _features(X) if _closed(layout) else None
    with torch.no_grad():
        state["f"][ran] = _loglik(layout, theta[ran], X[ran], y[ran], None if Phi is None else Phi[ran])
    if not state["trace"]:
        _record(state, ran, torch.ones_like(ran, dtype=torch.bool))
    for _ in range(n_steps + 1):
        idx = torch.nonzero(~state["done"]).squeeze(1)
        if idx.numel() == 0:
            break
        Xa, ya, th, fa, rad = X[idx], y[idx], theta[idx], state["f"][idx], radius[idx]
        Pa = None if Phi is None else Phi[idx]
        plain = ~leap[idx]
        base = torch.where(plain[:, None], th, _project(2 * th - previous[idx], log_floor[idx], k))
        g, H, fb = _grad_hess(layout, base, Xa, ya, Pa, value=True)
        finite = torch.isfinite(fb) & torch.isfinite(g).all(1) & torch.isfinite(H).all(2).all(1)
        g = torch.where(finite[:, None], g, torch.zeros_like(g))
        H = torch.where(finite[:, None, None], H, -torch.eye(H.shape[1], dtype=H.dtype, device=H.device))
        gf, Hf = _free_of_floor(g, H, base, log_floor[idx], k)
        scale, lam, U, c = _scaled_eigen(gf, Hf)
        dec = _decrement(lam, c)
        state["grad"][idx] = torch.where(plain[:, None], g, state["grad"][idx])
        state["stationarity"][idx] = torch.where(plain, dec, state["stationarity"][idx])
        stationary = plain & (dec <= gtol)
        conv = stationary & (state["last_change"][idx] <= tol)
        out_of_steps = plain & (state["n_iter"][idx] >= state["max_iter"])
        state["converged"][idx] |= conv
        stop = conv | out_of_steps
        state["done"][idx] |= stop
        if bool(stop.all()):
            break
        pending = ~stop & (finite | plain)
        new_th, new_f = th.clone(), fa.clone()
        boundary, took = torch.zeros_like(plain), torch.zeros_like(plain)
        for attempt in range(24):
            w, pred, mu = _trust_step(lam, c, rad)
            trial = _project(base + scale * (U @ w.unsqueeze(-1)).squeeze(-1), log_floor[idx], k)
            with torch.no_grad():
                f_t = _loglik(layout, trial, Xa, ya, Pa)
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
        leap[idx] = _LEAP & accepted & (dec > gtol) & (boundary | ~plain) & (state["n_iter"][idx] + 2 < state["max_iter"])
        state["f"] = state["f"].index_copy(0, idx, new_f)
        state["last_change"][idx] = torch.where(accepted, change, state["last_change"][idx])
        state["n_iter"][idx] += ran_step.long()
        _record(state, idx, accepted)
        # A refused step is never convergence: a stationary point is (the decrement at this
        # very theta, computed above); anything else has stalled.
        state["converged"][idx] |= refused & stationary
        state["stalled"][idx] |= refused & ~stationary
        state["done"][idx] |= refused
    return theta
