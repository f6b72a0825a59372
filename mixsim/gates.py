"""Gate families, written once in torch and shared by the statistical model and :mod:`mixsim.nn`.

Every gate maps inputs to **log** gate weights of shape ``(..., n, k)``; the weights of one input
sum to one over the ``k`` experts (experts outside a top-K selection get weight 0, log weight -inf).

===============  =======================================================  =======================
name             pi_i(x)                                                  own parameters
===============  =======================================================  =======================
``softmax``      softmax_i(beta1_i . x + beta0_i), over the top-K if set  beta1 (k, d), beta0 (k)
``competition``  softmax_i over the top-K of phi(h_i(x)) + beta0_i        beta0 (k) or none
``sigmoid``      sigmoid(beta1_i . x + beta0_i) / sum_j sigmoid(...)      beta1 (k, d), beta0 (k)
===============  =======================================================  =======================

``topk`` is accepted as an alias of ``softmax`` with ``top_k`` required. The competition gate has
no slope of its own: expert ``i`` is preferred where its own response ``h_i(x)`` is large. ``phi``
(softplus by default, identity as an option) is a modelling choice (THEORY.md tag [C]).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "GATES",
    "PHI",
    "PHI_DERIVATIVES",
    "check_phi",
    "canonical_gate",
    "linear_logits",
    "top_k_mask",
    "masked_log_softmax",
    "log_gate_weights",
    "competition_logits",
    "normalise_scores",
    "masked_normalise",
    "top_k_normalise",
]

GATES = ("softmax", "competition", "sigmoid")
_ALIASES = {"topk": "softmax", "top_k": "softmax", "top_k_softmax": "softmax"}

PHI: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softplus": F.softplus,
    "identity": lambda t: t,
}
# (phi'(m), phi''(m)) for each competition transform: the fitter's closed-form Newton steps use them.
PHI_DERIVATIVES: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "softplus": lambda m: (lambda s: (s, s * (1 - s)))(torch.sigmoid(m)),
    "identity": lambda m: (torch.ones_like(m), torch.zeros_like(m)),
}


def check_phi(phi: str) -> str:
    """Return ``phi`` if it names a known competition transform, else raise ValueError."""
    if phi not in PHI:
        raise ValueError(f"unknown phi {phi!r}; expected one of {tuple(PHI)}")
    return phi


def canonical_gate(gate: str, top_k: int | None, n_experts: int) -> tuple[str, int | None]:
    """Validate a gate name and its ``top_k``; return ``(name, top_k)`` in canonical form.

    Parameters
    ----------
    gate : str
        One of ``softmax``, ``competition``, ``sigmoid`` or the alias ``topk`` (softmax with
        ``top_k`` required).
    top_k : int or None
        Number of experts kept per input; ``None`` or ``n_experts`` means dense.
    n_experts : int
        Number of experts ``k``.

    Returns
    -------
    name : str
    top_k : int or None
        ``None`` when the gate is dense (``top_k`` was ``None`` or equal to ``n_experts``).
    """
    if not isinstance(gate, str):
        raise TypeError(f"gate must be a string, one of {GATES + tuple(_ALIASES)}; got {type(gate).__name__}")
    name = _ALIASES.get(gate, gate)
    if name not in GATES:
        raise ValueError(f"unknown gate {gate!r}; expected one of {GATES + tuple(_ALIASES)}")
    if gate in _ALIASES and top_k is None:
        raise ValueError(f"gate {gate!r} needs top_k (an int in 1..n_experts)")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TypeError(f"top_k must be an int or None; got {type(top_k).__name__}")
        top_k = int(top_k)
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..n_experts={n_experts}; got {top_k}")
        if top_k == n_experts:
            top_k = None
    return name, top_k


def linear_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Affine scores ``x @ weight.T + bias``: x (..., n, d), weight (..., k, d), bias (..., k) -> (..., n, k)."""
    out = x @ weight.transpose(-1, -2)
    return out if bias is None else out + bias.unsqueeze(-2)


def top_k_mask(scores: torch.Tensor, top_k: int | None, dim: int = -1) -> torch.Tensor | None:
    """Boolean mask of the ``top_k`` largest scores along ``dim`` (exactly ``top_k`` per row).

    Ties are broken by :func:`torch.topk`. Returns ``None`` when ``top_k`` is ``None`` or covers
    every expert, so that callers can skip masking and stay bit-identical to the dense gate.
    """
    if top_k is None or top_k >= scores.shape[dim]:
        return None
    idx = scores.topk(top_k, dim=dim).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, idx, True)


def masked_log_softmax(logits: torch.Tensor, top_k: int | None = None, dim: int = -1) -> torch.Tensor:
    """Log-softmax along ``dim`` restricted to the ``top_k`` largest logits (others -inf)."""
    mask = top_k_mask(logits, top_k, dim)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(logits, dim=dim)


def competition_logits(response: torch.Tensor, bias: torch.Tensor | None = None, phi: str = "softplus") -> torch.Tensor:
    """Competition scores ``phi(response) + bias`` of shape (..., n, k).

    ``response`` is the experts' own output ``h_i(x)`` (..., n, k); a network layer passes the mean
    of ``phi`` over output features instead and uses ``phi="identity"``.
    """
    scores = PHI[check_phi(phi)](response)
    return scores if bias is None else scores + bias.unsqueeze(-2)


def _log_sigmoid_normalised(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    # Normalised sigmoid gate; the top-K set is that of the logits (sigmoid is monotone).
    scores = F.logsigmoid(logits)
    mask = top_k_mask(logits, top_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores - torch.logsumexp(scores, dim=-1, keepdim=True)


def normalise_scores(gate: str, scores: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Log gate weights (..., n, k) from a gate's scores: the logits beta1 . x + beta0 for
    ``softmax`` and ``sigmoid``, ``phi(h(x)) + beta0`` for ``competition`` (softmax over the top-K)."""
    if gate == "sigmoid":
        return _log_sigmoid_normalised(scores, top_k)
    return masked_log_softmax(scores, top_k)


def log_gate_weights(
    gate: str,
    x: torch.Tensor,
    *,
    gate_weight: torch.Tensor | None = None,
    gate_bias: torch.Tensor | None = None,
    expert_mean: torch.Tensor | None = None,
    top_k: int | None = None,
    phi: str = "softplus",
) -> torch.Tensor:
    """Log gate weights of shape (..., n, k) for any gate family.

    Parameters
    ----------
    gate : {"softmax", "competition", "sigmoid", "topk"}
    x : Tensor of shape (..., n, d)
    gate_weight : Tensor of shape (..., k, d), optional
        Gate slopes beta1 (softmax, sigmoid); must be None for competition.
    gate_bias : Tensor of shape (..., k), optional
        Gate intercepts beta0; optional for competition.
    expert_mean : Tensor of shape (..., n, k), optional
        The experts' responses h_i(x); required for competition.
    top_k : int or None
        Keep the ``top_k`` largest scores per input; None means dense.
    phi : {"softplus", "identity"}
        Competition transform of the expert response.

    Returns
    -------
    Tensor of shape (..., n, k)
        Log weights; ``exp`` sums to one over the last axis.
    """
    if gate == "competition" and expert_mean is None:
        raise ValueError("the competition gate needs expert_mean (the experts' responses)")
    k = expert_mean.shape[-1] if gate == "competition" else gate_weight.shape[-2]
    name, top_k = canonical_gate(gate, top_k, k)
    if name == "competition":
        if gate_weight is not None:
            raise ValueError("the competition gate has no slope of its own: gate_weight must be None")
        scores = competition_logits(expert_mean, gate_bias, phi)
    else:
        scores = linear_logits(x, gate_weight, gate_bias)
    return normalise_scores(name, scores, top_k)


# ---------------------------------------------------------------------------------------------
# weights normalised by their sum (CompeteSMoE's competition weights, USMoE's token weights)
# ---------------------------------------------------------------------------------------------

def masked_normalise(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Non-negative scores divided by their sum over the ``True`` entries of ``mask`` (others 0).

    Parameters
    ----------
    scores : Tensor of shape (..., k)
        Non-negative scores (e.g. mean softplus responses); not checked, to stay sync-free.
    mask : bool Tensor of shape (..., k), optional
        Entries that take part; None means all. A row with no ``True`` entry (or a zero sum)
        gets weight 0 everywhere instead of NaN.

    Returns
    -------
    Tensor of shape (..., k)
        Weights in [0, 1]; each row with a positive masked sum adds up to one.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, 0.0)
    total = scores.sum(dim=-1, keepdim=True)  # (..., 1)
    return scores / torch.where(total > 0, total, torch.ones_like(total))


def top_k_normalise(scores: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Weights ``s_i / sum_{j in top-K} s_j`` on the ``top_k`` largest scores, 0 elsewhere.

    This is CompeteSMoE's competition weight (THEORY.md section 6): with ``s`` the mean softplus
    response of each expert the weights are the winners' affinities renormalised by their sum,
    not a softmax. ``scores`` has shape (..., k) and must be non-negative.
    """
    return masked_normalise(scores, top_k_mask(scores, top_k))
