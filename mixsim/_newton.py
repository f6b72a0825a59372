"""Levenberg-Marquardt Newton on the observed log-likelihood, for every gate and expert.

Gradients and exact Hessians in closed form from a few per-sample "local" quantities (softmax
and competition gates), by autograd for the sigmoid gate; chunked over samples to bound memory.
"""
from __future__ import annotations

import torch

from ._layout import _Layout, _mean_loglik, _project, _record
from .experts import EXPERT_DERIVATIVES
from .gates import PHI_DERIVATIVES, competition_logits, masked_log_softmax



_CHUNK_ELEMENTS = 2**21  # B * chunk * k elements per intermediate tensor (about 16 MB in float64)


def _chunks(n: int, B: int, k: int) -> list[slice]:
    size = max(256, _CHUNK_ELEMENTS // max(1, B * k))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _local_terms(layout: _Layout, U: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Closed-form pieces of the per-sample Hessian in the locals (softmax and competition gates).

    With a_j = log pi_j + log N_j and r = softmax_j(a_j), in the coordinates (scores s, expert
    pre-activations, log-variances) the per-sample Hessian of l = logsumexp(a) is
    ``Diag + pi~ pi~^T - g~ g~^T`` with g~ = (r, r D, r V), pi~ = (pi, 0, 0) and ``Diag`` diagonal
    over experts in each pair of coordinate types; the gradient is g~ - pi~. For competition the
    scores are s = phi(g(eta)) + c, and the chain rule keeps this form. Returns g~ (B, n, m),
    pi~ (B, n, m) and the diagonal bands {(type_a, type_b): (B, n, k)}, types indexing the locals
    in the layout's order.
    """
    k = layout.k
    parts = list(torch.split(U, k, dim=-1))
    comp = layout.gate == "competition"
    eta, lv = (parts[0], parts[1]) if comp else (parts[1], parts[2])
    mu, d1, d2 = EXPERT_DERIVATIVES[layout.expert](eta)
    if comp:
        scores = competition_logits(mu, None, layout.phi)
        if layout.gate_bias:
            scores = scores + parts[2]
    else:
        scores = parts[0]
    log_gate = masked_log_softmax(scores, layout.top_k)
    pi = torch.exp(log_gate)  # (B, n, k), 0 outside the top-K
    w = torch.exp(-lv)
    e = y.unsqueeze(-1) - mu
    r = torch.softmax(log_gate - 0.5 * (lv + e * e * w), dim=-1)
    D = e * w * d1  # d log N_j / d eta_j
    V = 0.5 * (e * e * w - 1)  # d log N_j / d lv_j
    rD, rV = r * D, r * V
    ss, se, sv = r - pi, rD, rV
    ee = rD * D + r * w * (e * d2 - d1 * d1)
    ev = rD * V - r * e * w * d1
    vv = rV * V - 0.5 * r * e * e * w
    if not comp:  # locals (s, eta, lv) = types 0, 1, 2
        bands = {(0, 0): ss, (0, 1): se, (0, 2): sv, (1, 1): ee, (1, 2): ev, (2, 2): vv}
        return torch.cat([r, rD, rV], -1), torch.cat([pi, torch.zeros_like(pi), torch.zeros_like(pi)], -1), bands
    p1, p2 = PHI_DERIVATIVES[layout.phi](mu)
    kap, kap2 = p1 * d1, p2 * d1 * d1 + p1 * d2  # d s / d eta and d2 s / d eta2
    # locals (eta, lv[, c]) = types 0, 1[, 2]; s = kap * eta + c to first order.
    bands = {(0, 0): kap * kap * ss + 2 * kap * se + ee + (r - pi) * kap2, (0, 1): kap * sv + ev, (1, 1): vv}
    g = [rD + kap * r, rV]
    p = [kap * pi, torch.zeros_like(pi)]
    if layout.gate_bias:
        bands |= {(0, 2): kap * ss + se, (1, 2): sv, (2, 2): ss}
        g.append(r)
        p.append(pi)
    return torch.cat(g, -1), torch.cat(p, -1), bands


def _local_derivatives_autograd(layout: _Layout, U: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gradient and Hessian in the locals by m Hessian-vector products (any gate)."""
    U = U.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(layout.local_loglik(U, y).sum(), U, create_graph=True)
        h = torch.stack([torch.autograd.grad(g[..., a].sum(), U, retain_graph=True)[0] for a in range(U.shape[-1])], -1)
    return g.detach(), h.detach()


def _grad_hess(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient (B, P) and Hessian (B, P, P) of the per-sample log-likelihood.

    The log-density of sample i depends on the parameters only through m local quantities u_i
    (``_Layout.locals_of``), each affine in phi_i = [x_i, 1]: parameter t acts through local
    ``loc[t]`` times feature ``feat[t]``. For softmax and competition gates the per-sample Hessian
    in the locals is ``Diag + pi~ pi~^T - g~ g~^T`` (``_local_terms``), so the parameter Hessian
    is three batched matrix products: the bands of ``Diag`` against phi phi^T, and the
    outer products of the lifted vectors g~[loc] * phi[feat] and pi~[loc] * phi[feat]. Other gates
    take per-sample Hessians from autograd. ``_grad_hess_autograd`` is the plain reference.
    """
    B, n = y.shape
    P, q, k = theta.shape[1], layout.d + 1, layout.k
    loc, feat = (torch.tensor(v, device=theta.device) for v in layout.local_map())
    grad = theta.new_zeros(B, P)
    hess = theta.new_zeros(B, P, P)
    closed = layout.gate in ("softmax", "competition")
    if closed:
        types, comps = loc // k, loc % k
        same = comps[:, None] == comps[None, :]
        pairs = sorted({(min(a, b), max(a, b)) for a in types.tolist() for b in types.tolist()})
    bands_sum: dict = {}
    for sl in _chunks(n, B, 3 * layout.n_local):
        Xc = X[:, sl]
        Phi = torch.cat([Xc, torch.ones_like(Xc[..., :1])], dim=-1)  # (B, c, q)
        U = layout.locals_of(theta.detach(), Xc)
        if closed:
            gt, pt, bands = _local_terms(layout, U, y[:, sl])
            G = gt[..., loc] * Phi[..., feat]  # (B, c, P)
            Q = pt[..., loc] * Phi[..., feat]
            grad += (G - Q).sum(1)
            hess += Q.transpose(1, 2) @ Q - G.transpose(1, 2) @ G
            PhiPhi = (Phi.unsqueeze(-1) * Phi.unsqueeze(-2)).reshape(B, -1, q * q)
            for key in pairs:
                if key in bands:
                    bands_sum[key] = bands_sum.get(key, 0) + bands[key].transpose(1, 2) @ PhiPhi  # (B, k, q*q)
        else:
            g, h = _local_derivatives_autograd(layout, U, y[:, sl])  # (B, c, m), (B, c, m, m)
            G = g[..., loc] * Phi[..., feat]
            grad += G.sum(1)
            Hl = h[..., loc[:, None], loc[None, :]] * (Phi[..., feat][..., :, None] * Phi[..., feat][..., None, :])
            hess += Hl.sum(1)
    if closed:  # scatter the band sums: H[t, s] += band[type t, type s][comp t, feat t, feat s] if same comp
        fidx = feat[:, None] * q + feat[None, :]
        for (a, b), val in bands_sum.items():
            for ta, tb in {(a, b), (b, a)}:
                sel = same & (types[:, None] == ta) & (types[None, :] == tb)
                rows, cols = torch.nonzero(sel, as_tuple=True)
                hess[:, rows, cols] += val[:, comps[rows], fidx[rows, cols]]
    return grad / n, 0.5 * (hess + hess.transpose(1, 2)) / n


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


def _lm_solve(g: torch.Tensor, H: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marquardt step: solve (-H + lam * D) delta = g; returns (delta, ok) with ok False where not PD."""
    A = -H
    diag = torch.diagonal(A, dim1=1, dim2=2).abs().clamp_min(1e-12)
    M = A + torch.diag_embed(lam[:, None] * diag + 1e-14)
    L, info = torch.linalg.cholesky_ex(M)
    ok = info == 0
    L = torch.where(ok[:, None, None], L, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device))
    delta = torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    return torch.where(ok[:, None], delta, torch.zeros_like(delta)), ok


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
    A = -H
    scale = torch.diagonal(A, dim1=1, dim2=2).abs()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).rsqrt()  # (B, P)
    As = A * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    lam, U = torch.linalg.eigh(0.5 * (As + As.transpose(1, 2)))
    c = (U.transpose(1, 2) @ (g * scale).unsqueeze(-1)).squeeze(-1)  # (B, P)
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


_FLAT = 1e-12  # curvature (in the unit-diagonal metric) below which a direction counts as flat


def _run_newton(layout: _Layout, theta: torch.Tensor, X, y, log_floor, tol: float, gtol: float, n_steps: int, state: dict) -> torch.Tensor:
    """Levenberg-Marquardt iterations on the data sets not yet done; returns theta.

    A row converges when it is stationary (Newton decrement per sample <= ``gtol``, measured at
    the point returned) and its last accepted iteration changed the per-sample log-likelihood by
    at most ``tol``. A row for which no improving step exists even under heavy damping is
    ``stalled`` unless it is already stationary. Sets ``state["f"]``, ``state["grad"]`` and
    ``state["stationarity"]`` of the rows it ran, all at the final theta; starts the trace if it
    is empty.
    """
    k = layout.k
    lam = torch.full_like(state["f"], 1e-3)
    ran = torch.nonzero(~state["done"]).squeeze(1)
    if ran.numel() == 0:
        return theta
    with torch.no_grad():
        state["f"][ran] = _mean_loglik(layout, theta[ran], X[ran], y[ran])
    if not state["trace"]:
        _record(state, ran, torch.ones_like(ran, dtype=torch.bool))
    for _ in range(n_steps + 1):
        idx = torch.nonzero(~state["done"]).squeeze(1)
        if idx.numel() == 0:
            break
        Xa, ya, th, fa, la = X[idx], y[idx], theta[idx], state["f"][idx], lam[idx]
        g, H = _grad_hess(layout, th, Xa, ya)
        dec = stationarity(g, H, th, log_floor[idx], k)
        state["grad"][idx], state["stationarity"][idx] = g, dec
        stationary = dec <= gtol
        conv = stationary & (state["last_change"][idx] <= tol)
        out_of_steps = state["n_iter"][idx] >= state["max_iter"]
        state["converged"][idx] |= conv
        stop = conv | out_of_steps
        state["done"][idx] |= stop
        if bool(stop.all()):
            break
        pending = ~stop
        new_th, new_f = th.clone(), fa.clone()
        for _try in range(16):
            delta, pd = _lm_solve(g, H, la)
            trial = _project(th + delta, log_floor[idx], k)
            with torch.no_grad():
                f_t = _mean_loglik(layout, trial, Xa, ya)
            ok = pending & pd & torch.isfinite(f_t) & (f_t >= fa)
            new_th = torch.where(ok[:, None], trial, new_th)
            new_f = torch.where(ok, f_t, new_f)
            la = torch.where(ok, (la / 3).clamp_min(1e-12), torch.where(pending, la * 10, la))
            pending &= ~ok
            if not bool(pending.any()):
                break
        ran_step = ~stop
        accepted = ran_step & ~pending
        refused = ran_step & pending  # no improving step even under heavy damping
        theta = theta.index_copy(0, idx, new_th)
        lam = lam.index_copy(0, idx, la)
        state["f"] = state["f"].index_copy(0, idx, new_f)
        state["last_change"][idx] = torch.where(accepted, new_f - fa, state["last_change"][idx])
        state["n_iter"][idx] += ran_step.long()
        _record(state, idx, accepted)
        # A refused step is never convergence: a stationary point is (the decrement at this
        # very theta, computed above); anything else has stalled.
        state["converged"][idx] |= refused & stationary
        state["stalled"][idx] |= refused & ~stationary
        state["done"][idx] |= refused
    return theta
