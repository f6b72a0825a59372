"""Balancing options of token-choice routing, each off by default (issue 23).

``balance_bias_rate`` (auxiliary-loss-free balancing, DeepSeek-V3)
    A per-expert bias ``b`` is added to the router logits *for selecting* the top-K experts only;
    the combine weights stay the softmax of the unbiased logits. After every training router step
    ``b_e += rate * sign(mean load - load_e)``: an overloaded expert becomes harder to select, an
    idle one easier, with no auxiliary loss and no gradient. The bias is a buffer
    (``selection_bias``), saved in the state dict; under :class:`mixsim.nn.ExpertParallel` the load
    is summed over ranks, so every rank keeps the same bias.
``router_jitter`` (Switch Transformer)
    In training, the router sees ``x * u`` with ``u ~ U(1 - eps, 1 + eps)`` per element; the experts
    see ``x``. Drawn from torch's generator, as ``nn.Dropout`` does (seed with ``torch.manual_seed``).
``n_groups``, ``top_groups`` (group-limited routing, DeepSeek-V2/V3)
    The experts form ``n_groups`` equal groups of consecutive ids; a token first keeps its
    ``top_groups`` groups with the highest best logit, then takes its top-K experts among them, so
    its experts span at most ``top_groups`` groups (devices, when each group lives on one).

They apply where the router selects per token: ``token_choice`` and the router steps of
``competition`` (competition steps select by the experts' affinities).
"""
from __future__ import annotations

import torch

from ..checks import check_int, check_real

__all__ = ["check_balancing", "jitter", "update_selection_bias"]

TOKEN_SELECTING = ("token_choice", "competition")


def check_balancing(router: str, n_experts: int, top_k: int, balance_bias_rate: float, router_jitter: float,
                    n_groups: int, top_groups: int | None) -> tuple[float, float, int, int]:
    """The options checked (errors name the argument): ``(rate, jitter, n_groups, top_groups)``."""
    rate = check_real(balance_bias_rate, "balance_bias_rate", 0.0)
    eps = check_real(router_jitter, "router_jitter", 0.0)
    if eps >= 1.0:
        raise ValueError(f"router_jitter must be in [0, 1); got {router_jitter}")
    n_groups = check_int(n_groups, "n_groups", 1)
    if n_experts % n_groups:
        raise ValueError(f"n_groups={n_groups} must divide n_experts={n_experts}")
    top_groups = n_groups if top_groups is None else check_int(top_groups, "top_groups", 1)
    if top_groups > n_groups or top_groups * (n_experts // n_groups) < top_k:
        raise ValueError(f"top_groups={top_groups} must be <= n_groups={n_groups} and its groups must hold at least "
                         f"top_k={top_k} experts ({n_experts // n_groups} per group)")
    if (rate or top_groups < n_groups) and router not in TOKEN_SELECTING:
        raise ValueError(f"balance_bias_rate and top_groups apply to routers {TOKEN_SELECTING}; got router={router!r}")
    return rate, eps, n_groups, top_groups


def jitter(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * u``, ``u ~ U(1 - eps, 1 + eps)`` elementwise: (T, d) -> (T, d)."""
    return x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)


@torch.no_grad()
def update_selection_bias(bias: torch.Tensor, counts: torch.Tensor, rate: float) -> None:
    """``bias += rate * sign(mean(counts) - counts)`` in place (on device, no sync): bias (E,), counts (E,)."""
    load = counts.to(bias.dtype)
    bias.add_(torch.sign(load.mean() - load), alpha=rate)
