"""The per-sample log-likelihood of a batch of models, its gradient and its exact Hessian.

Closed forms from a few per-sample "local" quantities (softmax and competition gates), autograd
for the sigmoid gate; chunked over samples (a fixed number per chunk, so a row's sums do not
depend on its batch). The closed forms work expert-major, on (B, locals, samples) tensors, so
every reduction runs over contiguous samples. :func:`grad_hess_autograd` and
:func:`gradient_autograd` are the plain references they are tested against.
"""
from __future__ import annotations

import torch

from ..experts import EXPERT_DERIVATIVES
from ..gates import PHI_DERIVATIVES, competition_logits, masked_log_softmax
from ..model import LOG_2PI
from .layout import Layout, mean_loglik

__all__ = ["loglik", "grad_hess", "value_and_gradient", "features", "has_closed_form", "grad_hess_autograd",
           "gradient_autograd"]

_CHUNK = 2**13  # samples per chunk: temporaries stay in cache, and a row's sums do not depend on its batch


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(n, i + _CHUNK)) for i in range(0, n, _CHUNK)]


def features(X: torch.Tensor) -> torch.Tensor:
    """phi = [x, 1] feature-major: (B, q, n), contiguous (what the closed forms read)."""
    return torch.cat([X.transpose(1, 2), X.new_ones(X.shape[0], 1, X.shape[1])], 1).contiguous()


def _coefficients(layout: Layout, theta: torch.Tensor) -> torch.Tensor:
    """Local coefficients (B, m, q): local u_a = C[a] . phi, with theta[t] at (loc[t], feat[t])."""
    B, q, m = theta.shape[0], layout.d + 1, layout.n_local
    loc, feat, *_ = _Bands.of(layout, theta.device)
    return theta.new_zeros(B, m * q).index_copy_(1, loc * q + feat, theta).reshape(B, m, q)


def _n_varying(layout: Layout) -> int:
    """Locals that vary with x (gate logits, expert pre-activations) come first in the layout's
    order; the rest (log-variances, competition intercepts) are constants."""
    return layout.k * (1 if layout.gate == "competition" else 2)


def _local_terms(layout: Layout, C: torch.Tensor, Phi: torch.Tensor, y: torch.Tensor, order: int = 2):
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
    loglik = (torch.log(s) + top).squeeze(1) - 0.5 * LOG_2PI
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


def has_closed_form(layout: Layout) -> bool:
    """Whether the layout's gate has closed-form derivatives (softmax, competition)."""
    return layout.gate in ("softmax", "competition")


def loglik(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, Phi: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample log-likelihood (B,) of each row: the closed form where it exists, chunked."""
    if not has_closed_form(layout):
        return mean_loglik(layout, theta, X, y)
    Phi = features(X) if Phi is None else Phi
    C = _coefficients(layout, theta)
    total = theta.new_zeros(theta.shape[0])
    for sl in _chunks(y.shape[1]):
        total += _local_terms(layout, C, Phi[..., sl], y[:, sl], order=0).sum(1)
    return total / y.shape[1]


def _local_derivatives_autograd(layout: Layout, U: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    def of(cls, layout: Layout, device: torch.device):
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


def grad_hess(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, Phi: torch.Tensor | None = None,
               value: bool = False):
    """Gradient (B, P) and Hessian (B, P, P) of the per-sample log-likelihood.

    The log-density of sample i depends on the parameters only through m local quantities u_i
    (``Layout.locals_of``), each affine in phi_i = [x_i, 1]: parameter t acts through local
    ``loc[t]`` times feature ``feat[t]``. For softmax and competition gates the per-sample Hessian
    in the locals is ``Diag + pi~ pi~^T - g~ g~^T`` (``_local_terms``), so the parameter Hessian
    is three batched matrix products over the samples: the bands of ``Diag`` against phi phi^T,
    and the Gram matrices of the lifted vectors g~[loc] * phi[feat] and pi~[loc] * phi[feat]
    (expert-major, so every product runs over contiguous samples). Other gates take per-sample
    Hessians from autograd. ``grad_hess_autograd`` is the plain reference.
    """
    B, n = y.shape
    P, q, k = theta.shape[1], layout.d + 1, layout.k
    grad = theta.new_zeros(B, P)
    hess = theta.new_zeros(B, P, P)
    theta = theta.detach()
    if not has_closed_form(layout):
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
        return (*out, mean_loglik(layout, theta, X, y)) if value else out
    loc, feat, pairs, rows, cols, src = _Bands.of(layout, theta.device)
    Phi = features(X) if Phi is None else Phi
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


def grad_hess_autograd(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: gradient and Hessian by differentiating through the parameters directly."""
    B, n = y.shape
    P = theta.shape[1]
    theta = theta.detach().requires_grad_(True)
    f = mean_loglik(layout, theta, X, y).sum()
    (g,) = torch.autograd.grad(f, theta, create_graph=True)
    H = torch.stack([torch.autograd.grad(g[:, p].sum(), theta, retain_graph=True)[0] for p in range(P)], dim=1)
    return g.detach(), H.detach()


def gradient_autograd(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: gradient (B, P) of the per-sample log-likelihood by autograd."""
    theta = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(mean_loglik(layout, theta, X, y).sum(), theta)
    return g


def value_and_gradient(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                        Phi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample log-likelihood (B,) and its gradient (B, P): closed form (one pass, no Hessian)
    for softmax and competition gates, autograd otherwise."""
    if not has_closed_form(layout):
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            f = mean_loglik(layout, theta, X, y)
            (g,) = torch.autograd.grad(f.sum(), theta)
        return f.detach(), g
    loc, feat, *_ = _Bands.of(layout, theta.device)
    Phi = features(X) if Phi is None else Phi
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
