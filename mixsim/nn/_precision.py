"""Precision policy of the layer under autocast: routing in float32, experts in autocast's dtype."""
from __future__ import annotations

import contextlib

import torch


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type."""
    return device_type in ("cpu", "cuda", "xpu", "mps", "hpu") and torch.is_autocast_enabled(device_type)


def _compute_dtype(device_type: str, param_dtype: torch.dtype) -> torch.dtype:
    """The experts' compute dtype: autocast's when autocast is on for this device, else the parameters'."""
    if device_type in ("cpu", "cuda", "xpu", "mps", "hpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return param_dtype


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off (routing in float32; experts in the dtype chosen by :func:`_compute_dtype`)."""
    if device_type in ("cpu", "cuda", "xpu", "mps", "hpu") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
