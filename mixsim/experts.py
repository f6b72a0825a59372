"""Expert mean functions h_i(x) = g(a_i . x + b_i), batched in torch.

``linear`` (g = identity) is the reference expert (THEORY.md tag [A]); ``tanh`` is a nonlinear,
strongly identifiable alternative (tag [C]).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["EXPERTS", "EXPERT_DERIVATIVES", "check_expert", "expert_mean"]

EXPERTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda t: t,
    "tanh": torch.tanh,
}

# (g(t), g'(t), g''(t)) for each expert transform g: the fitter's closed-form Newton steps use them.
EXPERT_DERIVATIVES: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "linear": lambda t: (t, torch.ones_like(t), torch.zeros_like(t)),
    "tanh": lambda t: (lambda m: (m, 1 - m * m, -2 * m * (1 - m * m)))(torch.tanh(t)),
}


def check_expert(expert: str) -> str:
    """Return ``expert`` if it names a known expert family, else raise ValueError."""
    if expert not in EXPERTS:
        raise ValueError(f"unknown expert {expert!r}; expected one of {tuple(EXPERTS)}")
    return expert


def expert_mean(expert: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Expert means of shape (..., n, k).

    Parameters
    ----------
    expert : {"linear", "tanh"}
    x : Tensor of shape (..., n, d)
    weight : Tensor of shape (..., k, d)
    bias : Tensor of shape (..., k)
    """
    eta = x @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
    return EXPERTS[check_expert(expert)](eta)
