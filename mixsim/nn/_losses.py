"""Auxiliary losses of an MoE layer (THEORY.md section 6), each a small pure function.

The layer returns them by name, unweighted; the caller weighs them (``DEFAULT_AUX_WEIGHTS`` holds
the authors' coefficients) and adds them to the task loss.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_AUX_WEIGHTS", "LOSS_NAMES", "MoEAux", "routing_aux", "balance_loss", "z_loss", "distillation_loss",
           "diversity_loss"]

# Authors' coefficients: balance 0.01, z-loss 0.001, router distillation 0.01 (vision) or 0.001
# (language models). Diversity: the authors' code has a coefficient but no published value [C].
DEFAULT_AUX_WEIGHTS: dict[str, float] = {"balance": 0.01, "z_loss": 0.001, "distillation": 0.01, "diversity": 0.01}


def _loss_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # float32 at least; float64 stays float64


def balance_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch-style load balance ``E * sum_e f_e * P_e``; 1 when routing is uniform.

    Parameters
    ----------
    probs : Tensor of shape (T, E)
        The routing policy (softmax of router logits; softmax of affinities on competition steps).
    counts : Tensor of shape (E,)
        Pairs routed to each expert; ``f_e = counts_e / sum(counts)`` (all K choices count, not
        only the first as in the authors' code).
    """
    E = probs.shape[-1]
    if probs.shape[0] == 0:  # no tokens (empty or all-padding batch): nothing to balance
        return probs.new_zeros((), dtype=_loss_dtype(probs))
    f = counts.to(probs.dtype) / counts.sum().clamp_min(1).to(probs.dtype)  # (E,)
    return E * (f * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
    """Router z-loss ``mean_t logsumexp(logits_t)^2``: logits (T, E) -> scalar.

    ``lse`` of shape (T,) or (T, 1), optional: ``logsumexp(logits, -1)`` if the caller already has it.
    """
    if logits.shape[0] == 0:  # no tokens: 0, not the mean of nothing
        return logits.new_zeros((), dtype=_loss_dtype(logits))
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1)
    return lse.square().mean()


def distillation_loss(router_probs: torch.Tensor, target_probs: torch.Tensor, winners: torch.Tensor,
                      alpha: float = 1.0) -> torch.Tensor:
    """Router distillation ``MSE(p, q) + alpha * MSE(p[winners], q[winners])`` with ``q`` detached.

    Parameters
    ----------
    router_probs : Tensor of shape (T, E)
        Softmax of the router logits ``p``.
    target_probs : Tensor of shape (T, E)
        Softmax of the competition affinities ``q``; detached here, so no gradient reaches the experts.
    winners : LongTensor of shape (T, K)
        The competition winners.
    alpha : float, default 1.0
        Weight of the winners-only term (the authors' ``router_theta``) [C].
    """
    if router_probs.shape[0] == 0:  # no tokens: 0, not the mean of nothing
        return router_probs.new_zeros((), dtype=_loss_dtype(router_probs))
    q = target_probs.detach()
    loss = F.mse_loss(router_probs, q)
    if alpha:
        loss = loss + alpha * F.mse_loss(router_probs.gather(-1, winners), q.gather(-1, winners))
    return loss


def diversity_loss(y: torch.Tensor, token: torch.Tensor, n_tokens: int, per_token: int | None,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pairwise cosine similarity between the outputs of the experts that serve the same token.

    Computed without forming the pairs: with ``u`` the unit-normalised outputs and ``S_t`` their
    sum over token ``t``'s experts, ``sum_{i != j} u_i . u_j = |S_t|^2 - sum_i |u_i|^2``. The result
    is the mean over all ordered pairs (i != j) of all tokens; 0 when no token has two experts.

    Parameters
    ----------
    y : Tensor of shape (P, d_out)
        Expert output of each pair.
    token : LongTensor of shape (P,)
    n_tokens : int
    per_token : int or None
        ``K`` for token-major pairs (a dense sum), else a scatter-add over ``token``.
    keep : BoolTensor of shape (P,), optional
        Pairs that were not dropped; dropped pairs take no part.
    """
    if per_token is not None:
        return _diversity_token_major(y, n_tokens, per_token, keep)
    u = F.normalize(y.to(_loss_dtype(y)), dim=-1)  # (P, d_out)
    if keep is not None:
        u = u * keep.unsqueeze(-1)
    S = u.new_zeros(n_tokens, u.shape[-1]).index_add_(0, token, u)  # (T, d_out)
    sq = u.square().sum(-1)  # (P,), 1 or 0
    m = sq.new_zeros(n_tokens).index_add_(0, token, sq)  # (T,) experts per token
    cross = S.square().sum() - sq.sum()
    return cross / (m * (m - 1)).sum().clamp_min(1.0)


def _diversity_token_major(y: torch.Tensor, n_tokens: int, K: int, keep: torch.Tensor | None) -> torch.Tensor:
    # Per-token dot products of the K outputs: a few reductions over y and no full-size
    # normalised copy (batched K x K matrix products are slow on CPU for K this small).
    yk = y.view(n_tokens, K, y.shape[-1])  # (T, K, d_out)
    dt = _loss_dtype(y)
    inv = torch.linalg.vecdot(yk, yk).to(dt).clamp_min(1e-24).rsqrt()  # (T, K), 1 / |y|
    kk = None if keep is None else keep.view(n_tokens, K).to(dt)  # (T, K)
    total = inv.new_zeros(())
    pairs = inv.new_zeros(())
    for i in range(K):
        for j in range(i + 1, K):
            cos = torch.linalg.vecdot(yk[:, i], yk[:, j]).to(dt) * inv[:, i] * inv[:, j]  # (T,)
            if kk is None:
                total = total + cos.sum()
                pairs = pairs + n_tokens
            else:
                both = kk[:, i] * kk[:, j]  # (T,)
                total = total + (cos * both).sum()
                pairs = pairs + both.sum()
    return total / pairs.clamp_min(1.0)  # mean over unordered pairs = mean over ordered pairs i != j


def _finite_weight(w: object) -> bool:
    """A weight is a finite real number (Python or numpy), not a bool; a one-element float tensor is
    taken as it is (reading its value would sync the device every step)."""
    if isinstance(w, (bool, np.bool_)):
        return False
    if isinstance(w, torch.Tensor):
        return w.numel() == 1 and w.is_floating_point()
    return isinstance(w, numbers.Real) and math.isfinite(float(w))


LOSS_NAMES = ("balance", "z_loss", "distillation", "diversity")


@dataclass(frozen=True, eq=False)
class MoEAux:
    """What a forward pass reports besides its output.

    Attributes
    ----------
    losses : dict of str to scalar Tensor
        ``balance``, ``z_loss``, ``distillation`` (0 except on competition steps) and
        ``diversity``, unweighted, in float32 (float64 for float64 inputs).
    tokens_per_expert : LongTensor of shape (E,)
        Pairs each expert processed (after capacity drops).
    dropped : LongTensor, scalar
        Token-expert pairs dropped by the capacity limit.
    unrouted : LongTensor, scalar
        Tokens that no expert processed (expert choice, USMoE or drops can leave some out).
    competition : bool
        Whether this was a competition step.
    """

    losses: dict[str, torch.Tensor]
    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor
    unrouted: torch.Tensor
    competition: bool = False

    def total(self, weights: dict[str, float] | None = None) -> torch.Tensor:
        """Weighted sum of the losses; ``weights`` defaults to :data:`DEFAULT_AUX_WEIGHTS` (missing names weigh 0)."""
        weights = DEFAULT_AUX_WEIGHTS if weights is None else weights
        if not isinstance(weights, dict):
            raise TypeError(f"weights must be a dict of loss name to weight; got {type(weights).__name__}")
        for name, w in weights.items():
            if not _finite_weight(w):
                raise ValueError(f"weights[{name!r}] must be a finite number; got {w!r}")
        unknown = set(weights) - set(self.losses)
        if unknown:
            raise ValueError(f"weights: unknown loss names {sorted(unknown)}; expected some of {sorted(self.losses)}")
        return sum((float(w) * self.losses[name] for name, w in weights.items()), torch.zeros((), device=self.dropped.device))


def routing_aux(losses: dict[str, torch.Tensor], routing, keep: torch.Tensor | None, T: int, counts: torch.Tensor,
                competition: bool) -> MoEAux:
    """A step's :class:`MoEAux`: the losses and the statistics of its pairs (``routing``, a
    :class:`mixsim.nn.Routing`; ``keep`` (P,) the pairs within capacity or None; ``counts`` (E,))."""
    if keep is None and routing.per_token is not None:  # dropless, K pairs on every token
        return MoEAux(losses, counts, counts.new_zeros(()), counts.new_zeros(()), competition)
    served = torch.zeros(T, dtype=torch.long, device=counts.device)
    if keep is None:
        per_expert = counts
        served.index_add_(0, routing.token, torch.ones_like(routing.token))  # (T,) experts per token
    else:
        per_expert = torch.zeros_like(counts).index_add_(0, routing.expert, keep.long())  # (E,) after drops
        served.index_add_(0, routing.token, keep.long())
    return MoEAux(losses=losses, tokens_per_expert=per_expert, dropped=counts.sum() - per_expert.sum(),
                  unrouted=(served == 0).sum(), competition=competition)
