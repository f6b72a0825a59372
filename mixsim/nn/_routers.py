"""Routers: pure functions from scores to token-expert pairs and their combine weights.

Every router returns the pairs it selects, so one dispatch serves them all:

==================  ====================================================  =========================
router              selection                                             pairs
==================  ====================================================  =========================
``token_choice``    each token: top-K of its router logits                exactly T * K
``expert_choice``   each expert: top-C tokens by softmax-over-experts     exactly E * C
``usmoe``           top-(T*K) of the whole unified score matrix           exactly T * K (budget)
``competition``     each token: top-K of the experts' affinities          exactly T * K
==================  ====================================================  =========================

Weights: token choice uses the softmax over the K selected logits (what :func:`mixsim.gates.masked_log_softmax`
gives on them, computed on the (T, K) winners only);
competition the winners' affinities divided by their sum (:func:`mixsim.gates.top_k_normalise`);
expert choice the softmax-over-experts probabilities of the chosen pairs (Zhou et al. 2022);
USMoE either the token-choice probabilities renormalised over each token's selected experts
(``"token"``, default: identical to token choice whenever the selections agree, which is what
makes it a training-free swap) or the unified score itself (``"score"``); that weighting is [C].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..gates import masked_normalise, top_k_normalise

__all__ = [
    "ROUTERS",
    "Routing",
    "route_token_choice",
    "limit_to_groups",
    "route_expert_choice",
    "route_usmoe",
    "route_competition",
    "usmoe_scores",
    "expert_capacity",
]

ROUTERS = ("token_choice", "expert_choice", "usmoe", "competition")
USMOE_WEIGHTINGS = ("token", "score")


@dataclass(frozen=True, eq=False)
class Routing:
    """Token-expert pairs chosen by a router.

    Attributes
    ----------
    token : LongTensor of shape (P,)
        Token of each pair.
    expert : LongTensor of shape (P,)
        Expert of each pair.
    weight : Tensor of shape (P,)
        Combine weight of each pair (float32 or wider).
    per_token : int or None
        ``K`` when the pairs are token-major with exactly ``K`` per token (``token = p // K``);
        lets the combine be a dense, deterministic weighted sum instead of a scatter-add.
    sorted_by_expert : bool
        The pairs already come grouped by expert in increasing order (expert choice).
    """

    token: torch.Tensor
    expert: torch.Tensor
    weight: torch.Tensor
    per_token: int | None = None
    sorted_by_expert: bool = False


def _token_major(expert: torch.Tensor, weight: torch.Tensor) -> Routing:
    T, K = expert.shape
    token = torch.arange(T, device=expert.device).repeat_interleave(K)  # (T*K,)
    return Routing(token, expert.reshape(-1), weight.reshape(-1), per_token=K)


def route_token_choice(logits: torch.Tensor, top_k: int, bias: torch.Tensor | None = None, n_groups: int = 1,
                       top_groups: int | None = None) -> Routing:
    """Token choice: each token takes its ``top_k`` largest logits, softmax over those K.

    Parameters
    ----------
    logits : Tensor of shape (T, E)
    top_k : int
    bias : Tensor of shape (E,), optional
        Added to the logits for the selection only (auxiliary-loss-free balancing); the weights
        are the softmax of the selected experts' unbiased logits.
    n_groups, top_groups : int, default 1 and None
        Group-limited routing: experts in ``n_groups`` groups of consecutive ids; each token
        selects among the experts of its ``top_groups`` groups with the highest best score.

    Returns
    -------
    Routing with T * K token-major pairs.
    """
    if bias is None and (top_groups is None or top_groups >= n_groups):
        top, expert = logits.topk(top_k, dim=-1)  # (T, K): one top-K, no (T, E) mask
        return _token_major(expert, torch.softmax(top, dim=-1))  # = masked_log_softmax(logits, top_k).exp() on the winners
    scores = logits if bias is None else logits + bias.to(logits.dtype)  # (T, E), for selecting only
    if top_groups is not None and top_groups < n_groups:
        scores = limit_to_groups(scores, n_groups, top_groups)
    expert = scores.topk(top_k, dim=-1).indices  # (T, K)
    return _token_major(expert, torch.softmax(logits.gather(-1, expert), dim=-1))


def limit_to_groups(scores: torch.Tensor, n_groups: int, top_groups: int) -> torch.Tensor:
    """``scores`` (T, E) with the experts outside each token's ``top_groups`` best groups (by their
    best score; groups of E / n_groups consecutive experts) set to -inf."""
    T, E = scores.shape
    best = scores.view(T, n_groups, E // n_groups).amax(-1)  # (T, G)
    chosen = torch.zeros_like(best, dtype=torch.bool).scatter_(1, best.topk(top_groups, dim=-1).indices, True)  # (T, G)
    return scores.masked_fill(~chosen.repeat_interleave(E // n_groups, dim=1), float("-inf"))


def route_competition(affinity: torch.Tensor, top_k: int) -> Routing:
    """Competition: winners = top-K affinities; weights = affinities / sum of the winners'.

    Parameters
    ----------
    affinity : Tensor of shape (T, E)
        Non-negative affinities (mean softplus of each expert's output).
    top_k : int
    """
    weights = top_k_normalise(affinity, top_k)  # (T, E)
    expert = affinity.topk(top_k, dim=-1).indices  # (T, K), the same winners as inside top_k_normalise
    return _token_major(expert, weights.gather(-1, expert))


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float = 1.0) -> int:
    """Tokens per expert ``C = min(T, ceil(capacity_factor * T * K / E))`` (at least 1 when T > 0)."""
    if n_tokens == 0:
        return 0
    return max(1, min(n_tokens, math.ceil(capacity_factor * n_tokens * top_k / n_experts)))


def route_expert_choice(logits: torch.Tensor, capacity: int) -> Routing:
    """Expert choice: each expert takes the ``capacity`` tokens with the highest softmax-over-experts score.

    Parameters
    ----------
    logits : Tensor of shape (T, E)
    capacity : int
        Tokens per expert ``C`` (1 <= C <= T); exactly ``E * C`` pairs are selected.
    """
    T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)  # (T, E)
    weight, token = probs.t().topk(capacity, dim=-1)  # (E, C)
    expert = torch.arange(E, device=logits.device).repeat_interleave(capacity)  # (E*C,)
    return Routing(token.reshape(-1), expert, weight.reshape(-1), per_token=None, sorted_by_expert=True)


def usmoe_scores(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """USMoE unified score ``alpha * softmax over tokens + (1 - alpha) * softmax over experts``: (T, E) -> (T, E)."""
    # A NaN token takes no share of the softmax over tokens (so it leaves the other tokens' scores
    # alone); its own row stays NaN, so it is selected and its output is NaN, as with token choice.
    over_tokens = torch.softmax(logits.masked_fill(torch.isnan(logits), -math.inf), dim=0)
    return alpha * over_tokens + (1.0 - alpha) * torch.softmax(logits, dim=1)


def route_usmoe(logits: torch.Tensor, budget: int, alpha: float = 0.5, weighting: str = "token") -> Routing:
    """USMoE: the ``budget`` best token-expert pairs of the unified score matrix, chosen globally.

    Parameters
    ----------
    logits : Tensor of shape (T, E)
    budget : int
        Number of pairs, normally T * K (the compute of token choice); at most T * E.
    alpha : float in [0, 1], default 0.5
        Weight of the expert-choice normalisation (1 = pure expert-choice score, 0 = token choice).
    weighting : {"token", "score"}, default "token"
        Combine weights: token-choice probabilities renormalised over each token's selected
        experts, or the unified score of the pair. A token selected by no expert gets no output.
    """
    T, E = logits.shape
    score = usmoe_scores(logits, alpha)  # (T, E)
    flat = score.reshape(-1).topk(budget).indices  # (B,)
    token, expert = flat // E, flat % E  # (B,), (B,)
    if weighting == "score":
        weight = score.reshape(-1).index_select(0, flat)  # (B,)
    else:
        mask = torch.zeros(T * E, dtype=torch.bool, device=logits.device).index_fill_(0, flat, True).view(T, E)
        weight = masked_normalise(torch.softmax(logits, dim=-1), mask).reshape(-1).index_select(0, flat)  # (B,)
    return Routing(token, expert, weight)
