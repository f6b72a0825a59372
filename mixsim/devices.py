"""The one check of a ``device`` argument, shared by the fitter and the network layer."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_device"]


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` (a ``torch.device``, a string such as ``"cpu"`` or ``"cuda:0"``, or None for the
    CPU) as a ``torch.device`` that this torch build can allocate on.

    Raises
    ------
    TypeError
        ``device`` is neither a string, a ``torch.device`` nor None.
    ValueError
        It names no device torch knows, or one this build or machine does not have.
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a str, a torch.device or None; got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"{name}: {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1', 'mps')") from exc
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"{name}: {str(device)!r} is not available in this torch build or on this machine "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    return dev
