"""Expert activations and their derivatives (for the hand-written backward passes)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "GATED", "act_backward", "hidden_in"]


def swiglu(pre: torch.Tensor) -> torch.Tensor:
    """SwiGLU on a concatenated pre-activation ``[gate | up]``: (..., 2h) -> (..., h)."""
    gate, up = pre.chunk(2, dim=-1)
    return F.silu(gate) * up


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "swiglu": swiglu,
}
GATED = frozenset({"swiglu"})  # pre-activation twice as wide as the hidden layer: [gate | up]


def hidden_in(name: str, d_hidden: int) -> int:
    """Width of the first product's output for hidden width ``d_hidden`` (2 * d_hidden for gated units)."""
    return 2 * d_hidden if name in GATED else d_hidden


def act_backward(name: str, grad: torch.Tensor, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """``grad * act'(pre)`` for ``post = act(pre)``; all three share one shape except for gated
    units, where ``pre`` and the result are (..., 2h) and ``grad``, ``post`` (..., h)."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, pre)
    if name == "relu":
        return grad * (pre > 0)
    if name == "tanh":
        return grad * (1 - post * post)
    if name == "silu":
        sig = torch.sigmoid(pre)
        return grad * sig * (1 + pre * (1 - sig))
    if name == "swiglu":
        gate, up = pre.chunk(2, dim=-1)
        sig = torch.sigmoid(gate)
        return torch.cat([grad * up * sig * (1 + gate * (1 - sig)), grad * gate * sig], dim=-1)
    raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")
