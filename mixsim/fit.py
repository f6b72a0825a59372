"""Batched maximum-likelihood fitting of Gaussian mixtures of experts.

Every routine carries a leading batch dimension ``B``: ``B`` data sets of the same size are fitted
at once, each with its own parameters, step sizes and stopping time, so a batched fit gives the
same estimates as fitting the data sets one by one (this is what makes studies fast).

Two engines share one stopping rule (the change of the **per-sample** log-likelihood between
accepted iterations is at most ``tol``, so ``tol`` means the same at every n):

``em``
    EM for softmax / top-K gates with linear experts: experts by weighted least squares, variances
    in closed form, the gate by one Newton (IRLS) step per iteration. The gate step is halved until
    the log-likelihood does not decrease, so the trace never decreases.
``newton``
    Levenberg-Marquardt damped Newton on the observed log-likelihood with exact Hessians
    (closed-form per-sample derivatives, autograd for the sigmoid gate), for every gate and
    expert (the competition gate shares its parameters with the experts, so it has no
    closed-form M-step). A step is accepted only if it does not decrease the log-likelihood;
    otherwise the damping grows.
``auto`` (default)
    ``em`` for up to ``em_warmup`` iterations where it applies, then ``newton``: plain EM crawls on
    over-fitted problems (thousands of iterations) where Newton needs tens.

Rows are fitted in sub-batches of about 2**18 data points (cache-sized); ``compile=True`` fuses the
EM pass with ``torch.compile``. Sections below: parameter layout, Newton, EM, starts, entry points.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .experts import EXPERT_DERIVATIVES, EXPERTS, check_expert
from .gates import PHI_DERIVATIVES, canonical_gate, check_phi, competition_logits, masked_log_softmax, top_k_mask
from .model import MoEParams, as_rng, check_data, free_param_sizes, log_terms, log_terms_local

__all__ = ["ConvergenceWarning", "NearTruthInit", "FitResult", "fit", "fit_batch", "METHODS"]

METHODS = ("auto", "em", "newton")


class ConvergenceWarning(UserWarning):
    """The best run of a fit did not meet its tolerance within ``max_iter`` iterations."""


@dataclass(frozen=True)
class NearTruthInit:
    """Noise of the near-truth start (THEORY.md section 2): sd = scale * n ** -exponent.

    Defaults are the reference protocol's. Exponents of 0 give noise that does not shrink with n.
    Variances get ``|N(0, sd^2)|`` added; gate and expert parameters get ``N(0, sd^2)``.
    ``assign`` maps each fitted expert to a true one (length = fitted k, covering every true
    expert); None puts fitted expert i on true expert i and every extra one on true expert 0, as
    the reference code does (there, the over-fitted cell is the expert with beta0 = -8).
    """

    gate_scale: float = 0.005
    expert_scale: float = 0.05
    variance_scale: float = 0.005
    gate_exponent: float = 0.083
    expert_exponent: float = 0.083
    variance_exponent: float = 0.25
    assign: tuple[int, ...] | None = None


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
        The per-sample log-likelihood changed by at most ``tol`` at the last accepted iteration.
    n_iter : int
        Iterations run (EM and Newton together) by the best start.
    trace : ndarray of shape (n_accepted + 1,)
        Per-sample log-likelihood after each accepted iteration (never decreasing).
    grad_norm : float
        Euclidean norm of the gradient of the per-sample log-likelihood at ``params``.
    status : str
        ``converged``, ``max_iter`` or ``stalled`` (no improving step could be found).
    variance_floor : float
        Lower bound applied to every variance (``variance_floor`` argument times var(y)).
    variance_floored : bool
        Some variance sits on the floor (a collapsed component: treat the estimate with care).
    seconds : float
        Wall time of the fit (a batch's time divided evenly over its data sets).
    method : str
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


# ---------------------------------------------------------------------------------------------
# layout: flat free parameters theta (B, P) <-> parameter tensors
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    gate: str
    top_k: int | None
    expert: str
    phi: str
    k: int
    d: int
    gate_bias: bool = True

    @property
    def gate_rows(self) -> int:  # free rows of the gate slope (softmax: last row fixed at 0)
        return self.sizes[0] // self.d

    @property
    def bias_len(self) -> int:  # free intercepts (shift-invariant gates: last one fixed at 0)
        return self.sizes[1]

    @property
    def sizes(self) -> list[int]:
        return list(free_param_sizes(self.gate, self.k, self.d, self.gate_bias).values())

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    def unpack(self, theta: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """theta (B, P) -> parameter tensors with leading dimension B (variances exponentiated)."""
        B, k, d = theta.shape[0], self.k, self.d
        gw, gb, ew, eb, logv = torch.split(theta, self.sizes, dim=-1)
        zeros = lambda *s: theta.new_zeros(B, *s)  # noqa: E731
        gate_weight = None
        if self.gate != "competition":
            gate_weight = gw.reshape(B, self.gate_rows, d)
            if self.gate_rows < k:
                gate_weight = torch.cat([gate_weight, zeros(1, d)], dim=1)
        gate_bias = None
        if self.gate == "sigmoid" or self.gate_bias:
            gate_bias = gb if self.bias_len == k else torch.cat([gb, zeros(1)], dim=1)
        return {
            "gate_weight": gate_weight,
            "gate_bias": gate_bias,
            "expert_weight": ew.reshape(B, k, d),
            "expert_bias": eb,
            "variance": torch.exp(logv),
        }

    def pack(self, p: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """Parameter tensors -> theta, removing the common gate shift where the gate has one."""
        B = p["expert_weight"].shape[0]
        parts = []
        if self.gate != "competition":
            gw = p["gate_weight"]
            if self.gate == "softmax":
                gw = (gw - gw[:, -1:])[:, :-1]
            parts.append(gw.reshape(B, -1))
        if self.bias_len:
            gb = p["gate_bias"]
            parts.append(gb if self.gate == "sigmoid" else (gb - gb[:, -1:])[:, :-1])
        parts += [p["expert_weight"].reshape(B, -1), p["expert_bias"], torch.log(p["variance"])]
        return torch.cat(parts, dim=1)

    def log_terms(self, p: dict[str, torch.Tensor | None], X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return log_terms(self.gate, self.expert, X, y, top_k=self.top_k, phi=self.phi, **p)

    # Every parameter acts through a few per-sample "local" quantities, each affine in the
    # features phi = [x, 1]: gate logits, expert pre-activations, log-variances, competition
    # intercepts. local_map gives, for each free parameter, its local quantity and its feature.
    @property
    def n_local(self) -> int:
        return self.k * (3 if self.gate != "competition" or self.gate_bias else 2)

    def local_map(self) -> tuple[list[int], list[int]]:
        k, d = self.k, self.d
        comp = self.gate == "competition"
        g0, e0 = 0, (0 if comp else k)
        v0 = e0 + k
        c0 = v0 + k
        loc, feat = [], []
        for j in range(self.gate_rows):
            loc += [g0 + j] * d
            feat += list(range(d))
        for j in range(self.bias_len):
            loc.append((c0 if comp else g0) + j)
            feat.append(d)
        for j in range(k):
            loc += [e0 + j] * d
            feat += list(range(d))
        loc += [e0 + j for j in range(k)] + [v0 + j for j in range(k)]
        feat += [d] * (2 * k)
        return loc, feat

    def locals_of(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """The local quantities (B, n, n_local) at theta."""
        p = self.unpack(theta)
        n = X.shape[1]
        parts = []
        if self.gate != "competition":
            parts.append(X @ p["gate_weight"].transpose(1, 2) + p["gate_bias"].unsqueeze(1))
        parts.append(X @ p["expert_weight"].transpose(1, 2) + p["expert_bias"].unsqueeze(1))
        parts.append(torch.log(p["variance"]).unsqueeze(1).expand(-1, n, -1))
        if self.gate == "competition" and self.gate_bias:
            parts.append(p["gate_bias"].unsqueeze(1).expand(-1, n, -1))
        return torch.cat(parts, dim=-1)

    def local_loglik(self, U: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample log-density (B, n) from the local quantities."""
        k = self.k
        parts = list(torch.split(U, k, dim=-1))
        gate_pre = None if self.gate == "competition" else parts.pop(0)
        expert_pre, log_var = parts[0], parts[1]
        comp_bias = parts[2] if len(parts) > 2 else None
        terms = log_terms_local(self.gate, self.expert, y, gate_pre, expert_pre, log_var, comp_bias, top_k=self.top_k, phi=self.phi)
        return torch.logsumexp(terms, dim=-1)

    def to_params(self, p: dict[str, np.ndarray | None], b: int) -> MoEParams:
        """Row ``b`` of parameter arrays (numpy, leading dimension B) as MoEParams (copies)."""
        get = lambda name: None if p[name] is None else p[name][b]  # noqa: E731
        return MoEParams(
            gate=self.gate, top_k=self.top_k, gate_weight=get("gate_weight"), gate_bias=get("gate_bias"),
            expert=self.expert, expert_weight=get("expert_weight"), expert_bias=get("expert_bias"),
            variance=get("variance"), phi=self.phi,
        )

    def from_params(self, params: MoEParams, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor | None]:
        t = params.tensors(dtype=dtype, device=device)
        return {name: None if v is None else v.unsqueeze(0) for name, v in t.items()}


def _mean_loglik(layout: _Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample log-likelihood of each data set, shape (B,)."""
    return torch.logsumexp(layout.log_terms(layout.unpack(theta), X, y), dim=-1).mean(-1)


def _project(theta: torch.Tensor, log_floor: torch.Tensor, k: int) -> torch.Tensor:
    """Clamp log-variances (the last k entries) at the floor."""
    return torch.cat([theta[:, :-k], torch.maximum(theta[:, -k:], log_floor[:, None])], dim=1)


# ---------------------------------------------------------------------------------------------
# Newton: gradient and exact Hessian by autograd, chunked over samples to bound memory
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# EM for softmax / top-K gates with linear experts
# ---------------------------------------------------------------------------------------------

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

    ``PhiT`` holds the features phi = [x, 1] transposed (B, q, n); ``prods`` the distinct
    products Psi_a Psi_b of Psi = [x, 1, y] (B, U, n), in :func:`_product_pairs` order. A pass
    then gets every sufficient statistic from one matrix product of its per-sample weights
    against ``prods``.
    """
    PhiT: torch.Tensor
    y: torch.Tensor
    prods: torch.Tensor
    scratch: dict = field(default_factory=dict)

    def buffer(self, name: str, rows: int) -> torch.Tensor:
        """A (B, rows, n) scratch tensor kept across passes: every fresh allocation of this size
        is a fresh mmap whose page faults cost more than the arithmetic done in it."""
        B, n = self.y.shape
        buf = self.scratch.get(name)
        if buf is None or buf.shape[0] < B or buf.shape[1] != rows:
            buf = self.scratch[name] = self.y.new_empty(B, rows, n)
        return buf[:B]

    @staticmethod
    def of(X: torch.Tensor, y: torch.Tensor) -> "_EMData":
        Psi = torch.cat([X.transpose(1, 2), torch.ones_like(y).unsqueeze(1), y.unsqueeze(1)], dim=1)  # (B, Q, n)
        pairs = _product_pairs(X.shape[-1])
        prods = Psi.new_empty(Psi.shape[0], len(pairs), Psi.shape[2])
        for i, (a, b) in enumerate(pairs):
            torch.mul(Psi[:, a], Psi[:, b], out=prods[:, i])
        return _EMData(Psi[:, :-1].contiguous(), y, prods)

    def take(self, idx: torch.Tensor) -> "_EMData":
        return _EMData(self.PhiT[idx], self.y[idx], self.prods[idx], self.scratch)


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


def _em_stats(layout: _Layout, p: dict, data: _EMData, ix: _EMIndex):
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
    B, n = data.y.shape
    coef = torch.cat([
        torch.cat([p["gate_weight"], p["gate_bias"].unsqueeze(-1)], -1),
        torch.cat([p["expert_weight"], p["expert_bias"].unsqueeze(-1)], -1),
    ], 1)  # (B, 2k, q)
    lin = torch.bmm(coef, data.PhiT, out=data.buffer("lin", 2 * k))  # gate logits, expert means
    logits, mean = lin[:, :k], lin[:, k:]
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
    # log(g_j N_j) + log(sg): z_j - log(2 pi v_j) / 2 - (y - mu_j)^2 / (2 v_j)
    var = p["variance"].unsqueeze(-1)
    torch.sub(data.y.unsqueeze(1), mean, out=e)
    e.mul_(e)
    torch.addcmul(logits, e, -0.5 / var, out=e)
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


def _em_stats_fused(gw, gb, ew, eb, var, PhiT, y, top_k: int | None):
    """:func:`_em_stats` written as broadcast reductions, for ``torch.compile``.

    Eagerly this would build (B, k, n, Q, Q) temporaries; compiled, inductor fuses the whole pass
    (E-step and every M-step statistic) into loops over the data that keep nothing per sample.
    Same outputs as :func:`_em_stats` (tested against it), the gate ones unflattened.
    """
    Psi = torch.cat([PhiT, y.unsqueeze(1)], 1).transpose(1, 2)  # (B, n, Q)
    X, Phi = Psi[..., :-2], Psi[..., :-1]
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


def _compiled_em_stats(layout: _Layout, p: dict, data: _EMData, ix: _EMIndex):
    """:func:`_em_stats_fused` through ``torch.compile`` (compiled once per process, any n)."""
    if "em" not in _COMPILED:
        _COMPILED["em"] = torch.compile(_em_stats_fused)
    args = (p["gate_weight"], p["gate_bias"], p["expert_weight"], p["expert_bias"], p["variance"], data.PhiT, data.y)
    # Batch size and n vary from call to call: dynamic. Experts and features stay static, so each
    # k gets its own specialised kernel instead of a slow generic one.
    for t in args:
        torch._dynamo.mark_dynamic(t, 0)
        for dim in range(1, t.dim()):
            torch._dynamo.mark_static(t, dim)
    torch._dynamo.mark_dynamic(data.PhiT, 2)
    torch._dynamo.mark_dynamic(data.y, 1)
    f, moments, grad, hess = _COMPILED["em"](*args, layout.top_k)
    B, m, q = grad.shape
    return f, moments, grad.reshape(B, m * q), hess.transpose(2, 3).reshape(B, m * q, m * q)


def _em_proposal(layout: _Layout, p: dict, moments, grad, hess, floor: torch.Tensor) -> dict:
    """M-step from the statistics: new experts and variances, and the gate's Newton direction.

    The statistics ride along (keys ``moments`` and ``gate_grad``): the gradient of the observed
    log-likelihood at ``p`` follows from them (:func:`_em_gradient`).
    """
    k, d = layout.k, layout.d
    q = d + 1
    S = moments[:, :, :q, :q]  # (B, k, q, q)
    t = moments[:, :, :q, q]  # (B, k, q)
    u = moments[:, :, q, q]  # (B, k)
    mass = moments[:, :, d, d]  # sum of responsibilities (B, k)
    ridge = (1e-10 * torch.diagonal(S, dim1=2, dim2=3).sum(-1)).clamp_min(1e-12)
    w = torch.linalg.solve(S + ridge[..., None, None] * torch.eye(q, dtype=S.dtype, device=S.device), t)
    rss = (u - 2 * (w * t).sum(-1) + (w.unsqueeze(-2) @ S @ w.unsqueeze(-1)).squeeze((-1, -2))).clamp_min(0.0)
    # An expert that holds (almost) no data keeps its parameters: its M-step is undetermined.
    alive = mass > 1e-8 * mass.sum(-1, keepdim=True)
    previous = torch.cat([p["expert_weight"], p["expert_bias"].unsqueeze(-1)], dim=-1)
    w = torch.where(alive.unsqueeze(-1), w, previous)
    var = torch.where(alive, rss / mass.clamp_min(1e-300), p["variance"])
    var = torch.maximum(var, floor[:, None])
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


def _em_gradient(layout: _Layout, p: dict, moments: torch.Tensor, gate_grad: torch.Tensor) -> torch.Tensor:
    """Gradient (B, P) of the per-sample observed log-likelihood at ``p``, in the layout's order,
    from the EM statistics at ``p`` (Fisher's identity: the gradient of the EM objective)."""
    B, d = moments.shape[0], layout.d
    q = d + 1
    S, t, u, mass = moments[:, :, :q, :q], moments[:, :, :q, q], moments[:, :, q, q], moments[:, :, d, d]
    w = torch.cat([p["expert_weight"], p["expert_bias"].unsqueeze(-1)], dim=-1)  # (B, k, q)
    Sw = (S @ w.unsqueeze(-1)).squeeze(-1)
    var = p["variance"]
    g_expert = (t - Sw) / var.unsqueeze(-1)
    g_logvar = 0.5 * ((u - 2 * (w * t).sum(-1) + (w * Sw).sum(-1)) / var - mass)
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


def _run_em(layout: _Layout, p: dict, X, y, floor, tol: float, n_steps: int, state: dict, stats_fn=None) -> dict:
    """EM on the data sets not yet done, for at most ``n_steps`` iterations; returns all params.

    Finished data sets are dropped from the working batch once half of it is done, carrying every
    per-data-set quantity along, so a data set follows the same path whatever its batch. Sets
    ``state["f"]`` and ``state["grad"]`` of the rows it ran; starts the trace if it is empty.
    """
    out = {name: v.clone() for name, v in p.items()}
    idx = torch.nonzero(~state["done"]).squeeze(1)
    if idx.numel() == 0 or n_steps <= 0:
        return out
    data, fl = _EMData.of(X[idx], y[idx]), floor[idx]
    ix = _EMIndex.of(layout.k, layout.d, X.device)
    accepted = _take(p, idx)
    stats_fn = stats_fn or _em_stats
    f_acc, *stats = stats_fn(layout, accepted, data, ix)
    prop = _em_proposal(layout, accepted, *stats, fl)
    step = torch.ones_like(f_acc)
    state["f"][idx] = f_acc
    if not state["trace"]:
        _record(state, idx, torch.ones_like(f_acc, dtype=torch.bool))

    def store(rows, acc, pr):
        for name in out:
            out[name][rows] = acc[name]
        state["grad"][rows] = _em_gradient(layout, acc, pr["moments"], pr["gate_grad"])

    for _ in range(n_steps):
        active = ~state["done"][idx]
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= idx.numel() // 2:  # compact the working batch
            store(idx, accepted, prop)
            keep = torch.nonzero(active).squeeze(1)
            idx, data, fl = idx[keep], data.take(keep), fl[keep]
            accepted, prop = _take(accepted, keep), _take(prop, keep)
            f_acc, step, active = f_acc[keep], step[keep], active[keep]
        cand = _em_candidate(accepted, prop, step)
        f_c, *stats_c = stats_fn(layout, cand, data, ix)
        ok = active & (f_c >= f_acc)
        conv = ok & (f_c - f_acc <= tol) & ((step == 1) | (step == 0))  # judge full steps only
        # A gate step of 0 is a pure EM step on experts and variances, which cannot lower the
        # likelihood; if even that is refused we are at machine precision: converged.
        stuck = active & ~ok & (step == 0) & torch.isfinite(f_acc)
        prop = _select(ok, _em_proposal(layout, cand, *stats_c, fl), prop)
        accepted = _select(ok, cand, accepted)
        f_acc = torch.where(ok, f_c, f_acc)
        halved = torch.where(step < 1e-6, torch.zeros_like(step), step * 0.5)
        step = torch.where(ok, torch.ones_like(step), torch.where(active, halved, step))
        state["n_iter"][idx] += active.long()
        state["f"][idx] = f_acc
        _record(state, idx, ok)
        state["converged"][idx] |= conv | stuck
        state["done"][idx] |= conv | stuck | (state["n_iter"][idx] >= state["max_iter"])
    store(idx, accepted, prop)
    return out


def _record(state: dict, idx: torch.Tensor, ok: torch.Tensor) -> None:
    """Append the per-sample log-likelihood of the data sets whose iteration was accepted."""
    flags = torch.zeros_like(state["done"])
    flags[idx] = ok
    state["trace"].append((state["f"].clone(), flags))


def _run_newton(layout: _Layout, theta: torch.Tensor, X, y, log_floor, tol: float, n_steps: int, state: dict) -> torch.Tensor:
    """Levenberg-Marquardt iterations on the data sets not yet done; returns theta.

    Sets ``state["f"]`` and ``state["grad"]`` of the rows it ran; starts the trace if it is empty.
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
    for _ in range(n_steps):
        idx = torch.nonzero(~state["done"]).squeeze(1)
        if idx.numel() == 0:
            break
        Xa, ya, th, fa, la = X[idx], y[idx], theta[idx], state["f"][idx], lam[idx]
        g, H = _grad_hess(layout, th, Xa, ya)
        pending = torch.ones_like(fa, dtype=torch.bool)
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
        accepted = ~pending
        conv = accepted & (new_f - fa <= tol)
        stalled = pending  # no improving step even under heavy damping
        flat = stalled & (g.norm(dim=1) <= 1e-8)  # at a stationary point already
        theta = theta.index_copy(0, idx, new_th)
        lam = lam.index_copy(0, idx, la)
        state["f"] = state["f"].index_copy(0, idx, new_f)
        state["n_iter"][idx] += 1
        _record(state, idx, accepted)
        state["converged"][idx] |= conv | flat
        state["stalled"][idx] |= stalled & ~flat
        state["done"][idx] |= conv | stalled | (state["n_iter"][idx] >= state["max_iter"])
    state["grad"][ran] = _gradient(layout, theta[ran], X[ran], y[ran])
    return theta


# ---------------------------------------------------------------------------------------------
# initialisation (numpy, one data set at a time, from that data set's own random stream)
# ---------------------------------------------------------------------------------------------

def _init_near_truth(truth: MoEParams, k: int, n: int, opts: NearTruthInit, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
    """Start near the truth (THEORY.md section 2): assign, split weights inside a cell, add noise."""
    k0 = truth.n_experts
    assign = np.asarray(opts.assign if opts.assign is not None else list(range(k0)) + [0] * (k - k0))
    if assign.shape != (k,) or set(assign.tolist()) != set(range(k0)):
        raise ValueError(f"init_options.assign must map the {k} fitted experts onto all {k0} true ones; got {assign.tolist()}")
    cell_size = np.bincount(assign, minlength=k0)[assign]
    sd = lambda scale, expo: scale * n ** (-expo)  # noqa: E731
    gs, es, vs = sd(opts.gate_scale, opts.gate_exponent), sd(opts.expert_scale, opts.expert_exponent), sd(opts.variance_scale, opts.variance_exponent)
    out: dict[str, np.ndarray | None] = {"gate_weight": None, "gate_bias": None}
    if truth.gate_weight is not None:
        out["gate_weight"] = truth.gate_weight[assign] + gs * rng.standard_normal((k, truth.dim))
    if truth.gate_bias is not None:
        out["gate_bias"] = truth.gate_bias[assign] - np.log(cell_size) + gs * rng.standard_normal(k)
    out["expert_weight"] = truth.expert_weight[assign] + es * rng.standard_normal((k, truth.dim))
    out["expert_bias"] = truth.expert_bias[assign] + es * rng.standard_normal(k)
    out["variance"] = truth.variance[assign] + np.abs(vs * rng.standard_normal(k))
    return out


def _init_auto(layout: _Layout, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
    """A data-driven start: k random centres in standardised (x, y), hard clusters, least squares.

    The gate starts nearly uniform; each expert is fitted by ridge least squares
    on its cluster (on arctanh of the clipped response for tanh experts).
    """
    n, d = X.shape
    k = layout.k
    Z = np.column_stack([X, y])
    Z = (Z - Z.mean(0)) / np.maximum(Z.std(0), 1e-12)
    centres = Z[rng.choice(n, size=k, replace=False)]
    label = ((Z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    target = y
    if layout.expert == "tanh":
        target = np.arctanh(np.clip(y / max(1.0, np.abs(y).max()) * 0.95, -0.95, 0.95))
    Phi = np.column_stack([X, np.ones(n)])
    W = np.empty((k, d + 1))
    var = np.empty(k)
    for j in range(k):
        m = label == j
        if m.sum() < d + 2:  # too few points: use everything with extra noise
            m = np.ones(n, dtype=bool)
        A = Phi[m]
        W[j] = np.linalg.solve(A.T @ A + 1e-6 * np.eye(d + 1), A.T @ target[m])
        if m.all():
            W[j] += 0.1 * rng.standard_normal(d + 1) * np.abs(W[j]).max()
        resid = y[m] - EXPERTS[layout.expert](torch.from_numpy(A @ W[j])).numpy()
        var[j] = max(resid.var(), 1e-3 * y.var())
    # Gate: nearly uniform, with small noise so that a top-K gate does not start on exact ties.
    out: dict[str, np.ndarray | None] = {"gate_weight": None, "gate_bias": None}
    if layout.gate != "competition":
        out["gate_weight"] = 0.1 * rng.standard_normal((k, d))
    if layout.gate == "sigmoid" or layout.gate_bias:
        out["gate_bias"] = 0.1 * rng.standard_normal(k)
    out.update(expert_weight=W[:, :d], expert_bias=W[:, d], variance=var)
    return out



# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------

def _rngs(rng: Any, B: int) -> list[np.random.Generator]:
    """One generator per data set: a sequence gives them directly; a seed or generator is split."""
    if isinstance(rng, (list, tuple)) or (isinstance(rng, np.ndarray) and rng.ndim == 1):
        if len(rng) != B:
            raise ValueError(f"rng must hold one seed or generator per data set ({B}); got {len(rng)}")
        return [as_rng(np.random.SeedSequence(int(r)) if isinstance(r, (int, np.integer)) else r) for r in rng]
    if isinstance(rng, np.random.Generator):
        return [np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(B)]
    seq = rng if isinstance(rng, np.random.SeedSequence) else np.random.SeedSequence(rng)
    return [np.random.default_rng(s) for s in seq.spawn(B)]


def _check_batch(Xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(Xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"ys must have shape (n_datasets, n_samples); got {y.shape}")
    if X.ndim == 2:
        X = X[..., None]
    if X.ndim != 3 or X.shape[:2] != y.shape:
        raise ValueError(f"Xs must have shape (n_datasets, n_samples, n_features) matching ys {y.shape}; got {X.shape}")
    for name, arr in (("Xs", X), ("ys", y)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
    if np.any(np.ptp(y, axis=1) == 0):
        raise ValueError("ys: a data set has all responses equal; its likelihood is unbounded (no variance to estimate)")
    return X, y


def fit_batch(
    Xs: Any,
    ys: Any,
    n_experts: int,
    *,
    gate: str = "softmax",
    top_k: int | None = None,
    expert: str = "linear",
    init: str = "auto",
    truth: MoEParams | None = None,
    init_options: NearTruthInit | None = None,
    n_init: int = 1,
    tol: float = 1e-6,
    max_iter: int = 2000,
    method: str = "auto",
    em_warmup: int = 50,
    variance_floor: float = 1e-6,
    gate_bias: bool = True,
    phi: str = "softplus",
    rng: Any = None,
    device: str | torch.device | None = None,
    warn: bool = True,
    compile: bool = False,
) -> list[FitResult]:
    """Fit ``B`` data sets of the same size at once by maximum likelihood.

    Parameters
    ----------
    Xs : array of shape (B, n, d) (or (B, n) when d = 1)
    ys : array of shape (B, n)
    n_experts : int
        Fitted number of experts k >= 1.
    gate : {"softmax", "competition", "sigmoid", "topk"}, default "softmax"
    top_k : int or None, default None
        Experts kept per input by the gate (None = dense).
    expert : {"linear", "tanh"}, default "linear"
    init : {"auto", "near_truth"}, default "auto"
        ``near_truth`` starts from ``truth`` perturbed as in THEORY.md section 2 (needs ``truth``);
        ``auto`` needs no truth: clustered least-squares starts, ``n_init`` of them.
    truth : MoEParams, optional
        The true model, for ``init="near_truth"``; same gate family, expert and dimension, with
        ``truth.n_experts <= n_experts``.
    init_options : NearTruthInit, optional
        Noise scales and their shrink exponents in n (defaults: the reference protocol).
    n_init : int, default 1
        Starts per data set; the one with the highest likelihood is kept.
    tol : float, default 1e-6
        Stop when an accepted iteration changes the per-sample log-likelihood by at most ``tol``.
    max_iter : int, default 2000
        Iteration cap per start (EM and Newton iterations together).
    method : {"auto", "em", "newton"}, default "auto"
        See the module docstring. ``em`` needs a softmax gate and linear experts.
    em_warmup : int, default 50
        With ``auto``: EM iterations before switching to Newton.
    variance_floor : float, default 1e-6
        Variances are kept >= ``variance_floor * var(y)``; results on the floor are flagged.
    gate_bias : bool, default True
        Competition gate only: include the intercepts beta0 (False fits a model without them).
    phi : {"softplus", "identity"}, default "softplus"
        Competition transform.
    rng : None, int, Generator, SeedSequence, or a sequence of B of these
        Randomness of the starts. Pass one seed per data set to make a data set's result
        independent of the batch it is fitted in.
    device : str or torch.device, optional
        Where to compute (default CPU); float64 throughout.
    warn : bool, default True
        Emit a :class:`ConvergenceWarning` when the best start of a data set did not converge.
    compile : bool, default False
        Run the EM pass through ``torch.compile`` (one fused loop over the data; about 2x faster
        per EM iteration at large n, measured). The first calls in a process compile (10-35 s,
        a few times: shapes are dynamic after the second n); a study amortises that over all
        the fits of a worker. Needs a C++ compiler. Results equal the eager ones to ~1e-12.

    Returns
    -------
    list of FitResult, one per data set.
    """
    t0 = time.perf_counter()
    X_np, y_np = _check_batch(Xs, ys)
    B, n, d = X_np.shape
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)) or n_experts < 1:
        raise ValueError(f"n_experts must be an int >= 1; got {n_experts!r}")
    k = int(n_experts)
    gate, top_k = canonical_gate(gate, top_k, k)
    layout = _Layout(gate, top_k, check_expert(expert), phi, k, d, bool(gate_bias))
    check_phi(phi)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if not gate_bias and gate != "competition":
        raise ValueError(f"gate_bias=False (a gate without intercepts) is for the competition gate only; got gate={gate!r}")
    em_ok = gate == "softmax" and expert == "linear"
    if method == "em" and not em_ok:
        raise ValueError(f"method='em' needs gate='softmax' and expert='linear'; got gate={gate!r}, expert={expert!r}; use 'newton'")
    if not (isinstance(n_init, (int, np.integer)) and n_init >= 1):
        raise ValueError(f"n_init must be an int >= 1; got {n_init!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1; got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol!r}")
    if n <= layout.n_params:
        raise ValueError(f"n_samples={n} is too small: the model has {layout.n_params} free parameters; need more samples than that")
    if init not in ("auto", "near_truth"):
        raise ValueError(f"unknown init {init!r}; expected 'auto' or 'near_truth'")
    if init == "near_truth":
        _check_truth(truth, layout)
    opts = init_options or NearTruthInit()
    gens = _rngs(rng, B)

    # Starts: data set b, start r -> row b * n_init + r.
    starts = []
    for b in range(B):
        for _ in range(n_init):
            if init == "near_truth":
                starts.append(_init_near_truth(truth, k, n, opts, gens[b]))
            else:
                starts.append(_init_auto(layout, X_np[b], y_np[b], gens[b]))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = torch.float64
    X = torch.as_tensor(X_np, dtype=dt, device=dev).repeat_interleave(n_init, dim=0)
    y = torch.as_tensor(y_np, dtype=dt, device=dev).repeat_interleave(n_init, dim=0)
    floor = torch.as_tensor(variance_floor * y_np.var(axis=1), dtype=dt, device=dev).repeat_interleave(n_init)
    p0 = {
        name: None if starts[0][name] is None else torch.as_tensor(np.stack([s[name] for s in starts]), dtype=dt, device=dev)
        for name in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")
    }
    p0["variance"] = torch.maximum(p0["variance"], floor[:, None])
    theta = layout.pack(p0)
    # Fit the rows in sub-batches of about _BATCH_POINTS data points: large tensors stream from
    # memory, small ones stay in cache. A row's result does not depend on its sub-batch.
    rows = max(1, _BATCH_POINTS // n)
    parts = [
        _engine(layout, theta[i:i + rows], X[i:i + rows], y[i:i + rows], floor[i:i + rows],
                tol=tol, max_iter=int(max_iter), method=method, em_ok=em_ok, em_warmup=em_warmup,
                compile_em=compile)
        for i in range(0, B * n_init, rows)
    ]
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "trace"}
    out["trace"] = [t for p in parts for t in p["trace"]]
    return _results(layout, out, floor, B, n, n_init, time.perf_counter() - t0, method, warn)


_BATCH_POINTS = 2**18


def _engine(layout: _Layout, theta, X, y, floor, *, tol, max_iter, method, em_ok, em_warmup, compile_em=False) -> dict:
    """Run EM and/or Newton on a batch of rows; per-row outcome tensors and traces."""
    BR = theta.shape[0]
    dev, dt = theta.device, theta.dtype
    state = {
        "done": torch.zeros(BR, dtype=torch.bool, device=dev),
        "converged": torch.zeros(BR, dtype=torch.bool, device=dev),
        "stalled": torch.zeros(BR, dtype=torch.bool, device=dev),
        "n_iter": torch.zeros(BR, dtype=torch.long, device=dev),
        "f": torch.zeros(BR, dtype=dt, device=dev),
        "grad": torch.zeros_like(theta),
        "trace": [],
        "max_iter": max_iter,
    }
    if em_ok and method in ("em", "auto"):
        steps = max_iter if method == "em" else min(em_warmup, max_iter)
        with torch.no_grad():
            stats_fn = _compiled_em_stats if compile_em else _em_stats
            p = _run_em(layout, layout.unpack(theta), X, y, floor, tol, steps, state, stats_fn)
        theta = layout.pack(p)
    if method in ("newton", "auto") or not em_ok:
        theta = _run_newton(layout, theta, X, y, torch.log(floor), tol, max_iter, state)
    values = torch.stack([v for v, _ in state["trace"]], 1).cpu().numpy()
    flags = torch.stack([m for _, m in state["trace"]], 1).cpu().numpy()
    return {
        "theta": theta.detach(), "f": state["f"], "converged": state["converged"], "stalled": state["stalled"],
        "n_iter": state["n_iter"], "grad_norm": state["grad"].norm(dim=1),
        "trace": [values[r][flags[r]] for r in range(BR)],
    }


def _check_truth(truth: Any, layout: _Layout) -> None:
    if not isinstance(truth, MoEParams):
        raise TypeError(f"init='near_truth' needs truth=MoEParams; got {type(truth).__name__}")
    if truth.gate != layout.gate or truth.expert != layout.expert or truth.dim != layout.d:
        raise ValueError(
            f"truth (gate={truth.gate!r}, expert={truth.expert!r}, d={truth.dim}) does not match the fitted model "
            f"(gate={layout.gate!r}, expert={layout.expert!r}, d={layout.d})"
        )
    if truth.n_experts > layout.k:
        raise ValueError(f"near_truth needs n_experts >= truth.n_experts={truth.n_experts}; got {layout.k}")
    if layout.gate == "competition" and (truth.gate_bias is not None) != layout.gate_bias:
        raise ValueError("truth and fit disagree on the competition intercepts: set gate_bias to match truth.gate_bias")


def _results(layout: _Layout, out: dict, floor, B: int, n: int, n_init: int, seconds: float, method: str, warn: bool) -> list[FitResult]:
    p = {name: None if v is None else v.detach().cpu().numpy() for name, v in layout.unpack(out["theta"]).items()}
    f, floor = out["f"].cpu().numpy(), floor.cpu().numpy()
    conv_all, stalled, n_iter, grad_norm = (out[key].cpu().numpy() for key in ("converged", "stalled", "n_iter", "grad_norm"))
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
            trace=out["trace"][best],
            grad_norm=float(grad_norm[best]),
            status=status,
            variance_floor=float(floor[best]),
            variance_floored=bool(floored[best]),
            seconds=seconds / B,
            method=method,
        )
        results.append(res)
        if warn and not conv:
            warnings.warn(
                f"data set {b}: the best of {n_init} start(s) did not converge ({status}) after "
                f"{res.n_iter} iterations (gradient norm {res.grad_norm:.2e}); "
                "raise max_iter, loosen tol or try more starts",
                ConvergenceWarning, stacklevel=3,
            )
    return results


def fit(
    X: Any,
    y: Any,
    n_experts: int,
    *,
    rng: Any = None,
    **kwargs: Any,
) -> FitResult:
    """Fit one data set by maximum likelihood; see :func:`fit_batch` for every option.

    ``X`` has shape (n, d) (or (n,) for d = 1), ``y`` shape (n,). ``rng`` seeds this data set's
    starts exactly as ``fit_batch(..., rng=[rng])`` would, so both give the same numbers.
    """
    Xt, yt = check_data(X, y)
    X, y = Xt.numpy(), yt.numpy()
    if rng is None:
        rng = np.random.SeedSequence().entropy
    return fit_batch(X[None], y[None], n_experts, rng=[rng], **kwargs)[0]
