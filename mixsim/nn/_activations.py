"""Expert activations and their derivatives (for the hand-written backward passes)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "act_backward"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def act_backward(name: str, grad: torch.Tensor, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """``grad * act'(pre)`` for ``post = act(pre)``; all three tensors share one shape."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, pre)
    if name == "relu":
        return grad * (pre > 0)
    if name == "tanh":
        return grad * (1 - post * post)
    if name == "silu":
        sig = torch.sigmoid(pre)
        return grad * sig * (1 + pre * (1 - sig))
    raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")
