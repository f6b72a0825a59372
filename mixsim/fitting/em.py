"""EM for softmax / top-K gates with linear experts, batched over data sets.

Experts by weighted least squares, variances in closed form, the gate by one Newton (IRLS) step
per iteration, halved until the log-likelihood does not decrease. One pass over the data per
iteration computes the E-step and every statistic the M-step needs (``_em_stats``, or its
``torch.compile`` twin ``_compiled_em_stats``). :func:`run_em` is the entry point (called by
:mod:`mixsim.fitting.engine`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..gates import masked_log_softmax, top_k_mask
from .bounds import VarianceBounds
from .layout import Layout
from .newton import measure

if TYPE_CHECKING:
    from .state import EngineState

__all__ = ["run_em"]

# Arguments of exp() are floored at -700 (exp(-700) ~ 1e-304, an absolute error no sum of
# weights notices): below, exp() underflows through denormals, about 20x slower.
_EXP_FLOOR = -700.0


def _product_pairs(d: int) -> list[tuple[int, int]]:
    """The distinct products Psi_a Psi_b (a <= b) of Psi = [x (d), 1, y]; those within phi = [x, 1] first."""
    q = d + 1
    return [(a, b) for a in range(q) for b in range(a, q)] + [(a, q) for a in range(q + 1)]


@dataclass(frozen=True)
class _EMData:
    """What every EM pass reads, built once per fit.

    ``Psi`` holds [x, 1, y] transposed (B, Q, n); ``prods`` the distinct products Psi_a Psi_b
    (B, U, n), in :func:`_product_pairs` order. A pass gets its linear predictors from one
    matrix product of coefficients with ``Psi``, and every sufficient statistic from matrix
    products of its per-sample weights with ``prods``.
    """
    Psi: torch.Tensor
    prods: torch.Tensor
    rows: torch.Tensor | None = None  # Psi (B, n, Q), row-major: the compiled pass reads this
    scratch: dict = field(default_factory=dict)

    def buffer(self, name: str, rows: int) -> torch.Tensor:
        """A (B, rows, n) scratch tensor kept across passes: every fresh allocation of this size
        is a fresh mmap whose page faults cost more than the arithmetic done in it."""
        B, _, n = self.Psi.shape
        buf = self.scratch.get(name)
        if buf is None or buf.shape[0] < B or buf.shape[1] != rows:
            buf = self.scratch[name] = self.Psi.new_empty(B, rows, n)
        return buf[:B]

    @staticmethod
    def of(X: torch.Tensor, y: torch.Tensor, rows: bool = False) -> "_EMData":
        Psi = torch.cat([X.transpose(1, 2), torch.ones_like(y).unsqueeze(1), y.unsqueeze(1)], dim=1)  # (B, Q, n)
        pairs = _product_pairs(X.shape[-1])
        prods = Psi.new_empty(Psi.shape[0], len(pairs), Psi.shape[2])
        for i, (a, b) in enumerate(pairs):
            torch.mul(Psi[:, a], Psi[:, b], out=prods[:, i])
        return _EMData(Psi, prods, Psi.transpose(1, 2).contiguous() if rows else None)

    def take(self, idx: torch.Tensor) -> "_EMData":
        rows = None if self.rows is None else self.rows[idx]
        return _EMData(self.Psi[idx], self.prods[idx], rows, self.scratch)


@dataclass(frozen=True)
class _EMIndex:
    """Where each statistic sits among the reduced products (columns) and weights (rows)."""
    full: torch.Tensor  # (Q*Q,) column of Psi_a Psi_b
    phi: torch.Tensor  # (q,) column of phi_a * 1
    phiphi: torch.Tensor  # (q*q,) column of phi_a phi_b
    pair: torch.Tensor  # (m*m,) row, among the gate products, of g_j g_l
    pairs: tuple[tuple[int, int], ...]  # the distinct pairs j <= l < m, in row order

    @staticmethod
    def of(k: int, d: int, device: torch.device) -> "_EMIndex":
        q, Q, m = d + 1, d + 2, k - 1
        col = {}
        for i, (a, b) in enumerate(_product_pairs(d)):
            col[(a, b)] = col[(b, a)] = i
        pairs = [(j, l) for j in range(m) for l in range(j, m)]
        row = {}
        for i, (j, l) in enumerate(pairs):
            row[(j, l)] = row[(l, j)] = i
        t = lambda v: torch.tensor(v, dtype=torch.long, device=device).reshape(-1)  # noqa: E731
        return _EMIndex(
            full=t([col[(a, b)] for a in range(Q) for b in range(Q)]),
            phi=t([col[(a, d)] for a in range(q)]),
            phiphi=t([col[(a, b)] for a in range(q) for b in range(q)]),
            pair=t([row[(j, l)] for j in range(m) for l in range(m)]),
            pairs=tuple(pairs),
        )


def _em_stats(layout: Layout, p: dict, data: _EMData, ix: _EMIndex):
    """One pass over the data: per-sample log-likelihood and every statistic the M-step needs.

    Works expert-major, on (B, k, n) tensors: reductions over the few experts are elementwise
    over contiguous rows. Gate logits and expert means come from one matrix product; the
    responsibilities r_j, gate weights g_j (j < m = k - 1) and products g_j g_l are written as
    rows of one weight matrix, and products of it against ``data.prods`` reduce them all. The
    large temporaries are few and overwritten in place: at batch sizes of 1e5 points and more,
    every fresh allocation is a fresh mmap and its page faults cost more than the arithmetic.
    Returns f (B,), expert moments (B, k, Q, Q) of Psi = [x, 1, y], the gradient (B, m*q) of
    sum_i sum_j r_ij log g_ij in the free gate rows and its negative Hessian (B, m*q, m*q).
    """
    k, m, d = layout.k, layout.k - 1, layout.d
    q, Q = d + 1, d + 2
    B, _, n = data.Psi.shape
    # Coefficients on Psi = [x, 1, y]: the gate logits, and u_j = (y - mu_j) / sqrt(2 v_j).
    var = p["variance"].unsqueeze(-1)
    zero, one = var.new_zeros(B, k, 1), var.new_ones(B, k, 1)
    coef = torch.cat([
        torch.cat([p["gate_weight"], p["gate_bias"].unsqueeze(-1), zero], -1),
        torch.cat([-p["expert_weight"], -p["expert_bias"].unsqueeze(-1), one], -1) * torch.rsqrt(2 * var),
    ], 1)  # (B, 2k, Q)
    lin = torch.bmm(coef, data.Psi, out=data.buffer("lin", 2 * k))
    logits, u = lin[:, :k], lin[:, k:]
    mask = top_k_mask(logits, layout.top_k, dim=1)
    if mask is not None:
        logits.masked_fill_(~mask, float("-inf"))
    top, s, sg = data.buffer("top", 1), data.buffer("s", 1), data.buffer("sg", 1)
    e = data.buffer("e", k)
    W = data.buffer("W", k + m + len(ix.pairs))  # weight rows: r, g_j (j < m), g_j g_l
    torch.amax(logits, 1, keepdim=True, out=top)
    logits.sub_(top)  # z = logits - max
    torch.clamp(logits, min=_EXP_FLOOR, out=e).exp_()
    torch.sum(e, 1, keepdim=True, out=sg)
    torch.div(e[:, :m], sg, out=W[:, k:k + m])
    for i, (j, l) in enumerate(ix.pairs):
        torch.mul(W[:, k + j], W[:, k + l], out=W[:, k + m + i])
    # log(g_j N_j) + log(sg) = z_j - u_j^2 - log(2 pi v_j) / 2
    torch.addcmul(logits, u, u, value=-1.0, out=e)
    e.sub_(0.5 * torch.log(2 * math.pi * var))
    torch.amax(e, 1, keepdim=True, out=top)
    e.sub_(top).clamp_(min=_EXP_FLOOR).exp_()
    torch.sum(e, 1, keepdim=True, out=s)
    torch.div(e, s, out=W[:, :k])
    f = s.div_(sg).log_().add_(top).mean((1, 2))  # per-sample log-likelihood, averaged
    # Moments of r against every product; of the gate terms against the products within phi.
    moments = (W[:, :k] @ data.prods.transpose(1, 2))[:, :, ix.full].reshape(B, k, Q, Q)
    S = W[:, k:] @ data.prods[:, :q * (q + 1) // 2].transpose(1, 2)  # (B, m + P, q(q+1)/2)
    grad = (moments[:, :m, d, :q] - S[:, :m, ix.phi]).reshape(B, m * q)
    G = S[:, :m, ix.phiphi].reshape(B, m, 1, q, q)
    GG = S[:, m:][:, ix.pair][:, :, ix.phiphi].reshape(B, m, m, q, q)
    eye = torch.eye(m, dtype=S.dtype, device=S.device).reshape(1, m, m, 1, 1)
    hess = (eye * G - GG).transpose(2, 3).reshape(B, m * q, m * q)
    return f, moments, grad, hess


def _em_stats_fused(gw, gb, ew, eb, var, Psi, top_k: int | None):
    """:func:`_em_stats` written as broadcast reductions, for ``torch.compile``.

    Eagerly this would build (B, k, n, Q, Q) temporaries; compiled, inductor fuses the whole pass
    (E-step and every M-step statistic) into loops over the rows of ``Psi`` (B, n, Q) that keep
    nothing per sample. Same outputs as :func:`_em_stats` (tested against it), the gate ones
    unflattened.
    """
    X, y, Phi = Psi[..., :-2], Psi[..., -1], Psi[..., :-1]
    logits = (X.unsqueeze(1) * gw.unsqueeze(2)).sum(-1) + gb.unsqueeze(-1)  # (B, k, n)
    log_gate = masked_log_softmax(logits, top_k, dim=1)
    mean = (X.unsqueeze(1) * ew.unsqueeze(2)).sum(-1) + eb.unsqueeze(-1)
    v = var.unsqueeze(-1)
    terms = log_gate - 0.5 * (math.log(2 * math.pi) + torch.log(v) + (y.unsqueeze(1) - mean) ** 2 / v)
    ll = torch.logsumexp(terms, dim=1)
    r = torch.exp(terms - ll.unsqueeze(1))
    moments = (r[:, :, :, None, None] * Psi[:, None, :, :, None] * Psi[:, None, :, None, :]).sum(2)
    gate = torch.exp(log_gate)
    m = gate.shape[1] - 1
    grad = ((r - gate)[:, :m, :, None] * Phi[:, None]).sum(2)  # (B, m, q)
    eye = torch.eye(m, dtype=gate.dtype, device=gate.device)
    w = gate[:, :m, None, :] * (eye[None, :, :, None] - gate[:, None, :m, :])  # (B, m, m, n)
    hess = (w[..., None, None] * Phi[:, None, None, :, :, None] * Phi[:, None, None, :, None, :]).sum(3)
    return ll.mean(-1), moments, grad, hess


_COMPILED: dict = {}


def _compiled_em_stats(layout: Layout, p: dict, data: _EMData, ix: _EMIndex):
    """:func:`_em_stats_fused` through ``torch.compile`` (compiled once per process, any n);
    ``data`` must hold ``rows``."""
    if "em" not in _COMPILED:
        _COMPILED["em"] = torch.compile(_em_stats_fused)
    args = (p["gate_weight"], p["gate_bias"], p["expert_weight"], p["expert_bias"], p["variance"], data.rows)
    # Batch size and n vary from call to call: dynamic. Experts and features stay static, so each
    # k gets its own specialised kernel instead of a slow generic one.
    for t in args:
        torch._dynamo.mark_dynamic(t, 0)
        for dim in range(1, t.dim()):
            torch._dynamo.mark_static(t, dim)
    torch._dynamo.mark_dynamic(data.rows, 1)
    f, moments, grad, hess = _COMPILED["em"](*args, layout.top_k)
    B, m, q = grad.shape
    return f, moments, grad.reshape(B, m * q), hess.transpose(2, 3).reshape(B, m * q, m * q)


def _moment_blocks(moments: torch.Tensor, d: int):
    """Blocks of the expert moments of Psi = [x, 1, y]: S = sum r phi phi^T (B, k, q, q),
    t = sum r y phi (B, k, q), u = sum r y^2 (B, k) and the mass sum r (B, k)."""
    q = d + 1
    return moments[:, :, :q, :q], moments[:, :, :q, q], moments[:, :, q, q], moments[:, :, d, d]


def _rss(S: torch.Tensor, t: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted residual sum of squares sum_i r_ij (y_i - w_j . phi_i)^2 (B, k), and S w (B, k, q)."""
    Sw = (S @ w.unsqueeze(-1)).squeeze(-1)
    return u - 2 * (w * t).sum(-1) + (w * Sw).sum(-1), Sw


def _em_proposal(layout: Layout, p: dict, moments, grad, hess, bounds: VarianceBounds) -> dict:
    """M-step from the statistics: new experts and variances, and the gate's Newton direction.

    The statistics ride along (keys ``moments`` and ``gate_grad``): the gradient of the observed
    log-likelihood at ``p`` follows from them (:func:`_em_gradient`).
    """
    k, d = layout.k, layout.d
    q = d + 1
    S, t, u, mass = _moment_blocks(moments, d)
    ridge = (1e-10 * torch.diagonal(S, dim1=2, dim2=3).sum(-1)).clamp_min(1e-12)
    w = torch.linalg.solve(S + ridge[..., None, None] * torch.eye(q, dtype=S.dtype, device=S.device), t)
    rss = _rss(S, t, u, w)[0].clamp_min(0.0)
    # An expert that holds (almost) no data keeps its parameters: its M-step is undetermined.
    alive = mass > 1e-8 * mass.sum(-1, keepdim=True)
    previous = torch.cat([p["expert_weight"], p["expert_bias"].unsqueeze(-1)], dim=-1)
    w = torch.where(alive.unsqueeze(-1), w, previous)
    var = torch.where(alive, rss / mass.clamp_min(1e-300), p["variance"])
    var = bounds.clamp(var)
    # Gate: Newton direction of sum_i sum_j r_ij log pi_j on the free rows (0 .. k-2).
    B, m = grad.shape[0], k - 1
    direction = grad.new_zeros(B, k, q)
    if m > 0:
        scale = torch.diagonal(hess, dim1=1, dim2=2).mean(-1).clamp_min(1e-300)
        H = hess + (1e-10 * scale)[:, None, None] * torch.eye(m * q, dtype=hess.dtype, device=hess.device)
        direction[:, :m] = torch.linalg.solve(H, grad).reshape(B, m, q)
    return {
        "expert_weight": w[..., :d],
        "expert_bias": w[..., d],
        "variance": var,
        "gate_dir_w": direction[..., :d],
        "gate_dir_b": direction[..., d],
        "moments": moments,
        "gate_grad": grad,
    }


def _em_gradient(layout: Layout, p: dict, moments: torch.Tensor, gate_grad: torch.Tensor) -> torch.Tensor:
    """Gradient (B, P) of the per-sample observed log-likelihood at ``p``, in the layout's order,
    from the EM statistics at ``p`` (Fisher's identity: the gradient of the EM objective)."""
    B, d = moments.shape[0], layout.d
    q = d + 1
    S, t, u, mass = _moment_blocks(moments, d)
    w = torch.cat([p["expert_weight"], p["expert_bias"].unsqueeze(-1)], dim=-1)  # (B, k, q)
    rss, Sw = _rss(S, t, u, w)
    var = p["variance"]
    g_expert = (t - Sw) / var.unsqueeze(-1)
    g_logvar = 0.5 * (rss / var - mass)
    g_gate = gate_grad.reshape(B, -1, q)
    g = torch.cat([g_gate[..., :d].reshape(B, -1), g_gate[..., d], g_expert[..., :d].reshape(B, -1), g_expert[..., d], g_logvar], 1)
    return g / mass.sum(-1, keepdim=True)


def _em_candidate(accepted: dict, prop: dict, step: torch.Tensor) -> dict:
    s = step[:, None]
    return {
        "gate_weight": accepted["gate_weight"] + s[..., None] * prop["gate_dir_w"],
        "gate_bias": accepted["gate_bias"] + s * prop["gate_dir_b"],
        "expert_weight": prop["expert_weight"],
        "expert_bias": prop["expert_bias"],
        "variance": prop["variance"],
    }


def _select(mask: torch.Tensor, a: dict, b: dict) -> dict:
    """Per data set: a where mask else b."""
    out = {}
    for name, va in a.items():
        m = mask.reshape(-1, *([1] * (va.dim() - 1)))
        out[name] = torch.where(m, va, b[name])
    return out


def _take(d: dict, idx: torch.Tensor) -> dict:
    return {name: v[idx] for name, v in d.items()}


def run_em(layout: Layout, p: dict, X, y, bounds: VarianceBounds, tol: float, gtol: float, n_steps: int, state: EngineState,
           compiled: bool = False, certify: bool = False) -> dict:
    """EM on the data sets not yet done, for at most ``n_steps`` iterations; returns all params.

    A data set leaves EM when an accepted full iteration changes its per-sample log-likelihood by
    at most ``tol`` or when even a pure EM step (gate step 0) is refused. EM never declares
    convergence by itself: with ``certify=False`` (``method="auto"``) every data set leaves
    undone, for Newton to take over and certify; with ``certify=True`` (``method="em"``) a data
    set whose small change comes with a Newton decrement <= ``gtol`` is converged, one whose step
    was refused is left for Newton, and the others go on with EM.

    Finished data sets are dropped from the working batch once half of it is done, carrying every
    per-data-set quantity along, so a data set follows the same path whatever its batch. Sets
    ``state.f``, ``state.grad`` and ``state.last_change`` of the rows it ran; starts the trace if
    it is empty. ``compiled`` runs each pass through ``torch.compile`` (:func:`_compiled_em_stats`).
    """
    out = {name: v.clone() for name, v in p.items()}
    idx = torch.nonzero(~state.done).squeeze(1)
    if idx.numel() == 0 or n_steps <= 0:
        return out
    stats_fn = _compiled_em_stats if compiled else _em_stats
    data, fl = _EMData.of(X[idx], y[idx], rows=compiled), bounds.take(idx)
    ix = _EMIndex.of(layout.k, layout.d, X.device)
    accepted = _take(p, idx)
    f_acc, *stats = stats_fn(layout, accepted, data, ix)
    prop = _em_proposal(layout, accepted, *stats, fl)
    step = torch.ones_like(f_acc)
    left = torch.zeros_like(f_acc, dtype=torch.bool)  # left EM for Newton
    state.f[idx] = f_acc
    if not state.trace:
        state.record(idx, torch.ones_like(f_acc, dtype=torch.bool))

    def store(rows, acc, pr):
        for name in out:
            out[name][rows] = acc[name]
        state.grad[rows] = _em_gradient(layout, acc, pr["moments"], pr["gate_grad"])

    for _ in range(n_steps):
        active = ~state.done[idx] & ~left
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= idx.numel() // 2:  # compact the working batch
            store(idx, accepted, prop)
            keep = torch.nonzero(active).squeeze(1)
            idx, data, fl = idx[keep], data.take(keep), fl.take(keep)
            accepted, prop = _take(accepted, keep), _take(prop, keep)
            f_acc, step, left, active = f_acc[keep], step[keep], left[keep], active[keep]
        cand = _em_candidate(accepted, prop, step)
        f_c, *stats_c = stats_fn(layout, cand, data, ix)
        ok = active & (f_c >= f_acc)
        small = ok & (f_c - f_acc <= tol) & ((step == 1) | (step == 0))  # judge full steps only
        # A gate step of 0 is a pure EM step on experts and variances, which cannot lower the
        # likelihood in exact arithmetic; if even that is refused, EM can go no further here.
        stuck = active & ~ok & (step == 0) & torch.isfinite(f_acc)
        state.last_change[idx] = torch.where(ok, f_c - f_acc, state.last_change[idx])
        prop = _select(ok, _em_proposal(layout, cand, *stats_c, fl), prop)
        accepted = _select(ok, cand, accepted)
        f_acc = torch.where(ok, f_c, f_acc)
        halved = torch.where(step < 1e-6, torch.zeros_like(step), step * 0.5)
        step = torch.where(ok, torch.ones_like(step), torch.where(active, halved, step))
        state.n_iter[idx] += active.long()
        state.f[idx] = f_acc
        state.record(idx, ok)
        if certify and bool(small.any()):
            rows = torch.nonzero(small).squeeze(1)
            theta = layout.pack(_take(accepted, rows))
            g, dec = measure(layout, theta, data.Psi[rows, :-2].transpose(1, 2), data.Psi[rows, -1], fl.take(rows))
            state.grad[idx[rows]], state.stationarity[idx[rows]] = g, dec
            conv = torch.zeros_like(small)
            conv[rows] = dec <= gtol
            state.converged[idx] |= conv
            state.done[idx] |= conv
            left |= stuck
        else:
            left |= small | stuck
        state.done[idx] |= state.n_iter[idx] >= state.max_iter
    store(idx, accepted, prop)
    return out
