"""Units of the data: the scales of X and y the fitter works in, and the finite-result check.

The fitter squares its data (variances, Gram matrices), so values whose squares leave float64's
range are fitted in rescaled units and mapped back exactly:

- X: each feature of each data set is centred and divided by its spread
  (:func:`feature_scale`; a spread whose square underflows is measured without squaring it);
- y: a data set whose spread lies outside ``[2**-Y_BAND, 2**Y_BAND]`` is divided by the power of
  two nearest its spread (:func:`response_scale`): a power of two scales every number exactly,
  the expert slopes and intercepts scale with it and the variances with its square, and the
  total log-likelihood shifts by ``-n log(scale)`` (:func:`outcome_to_units_of_y`). Inside the
  band nothing is rescaled (so ordinary fits are unchanged to the bit).

"""
from __future__ import annotations

import dataclasses
import math

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .engine import EngineOutcome
    from .layout import Layout

__all__ = ["Y_BAND", "TINY_VARIANCE", "feature_scale", "response_scale", "scale_start", "outcome_to_units_of_y",
           "theta_to_units_of_y"]

Y_BAND = 64  # y is rescaled when its spread is below 2**-64 or above 2**64 (squares stay far inside float64)
TINY_VARIANCE = 2.0**-1038  # ~3e-313: below it a (subnormal) variance keeps fewer than 36 significant bits


def _spread(a: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 1 of ``a`` (B, n, ...) about ``centre`` (B, ...), computed
    without underflow: deviations are divided by their largest magnitude before being squared."""
    dev = a - centre[:, None]
    with np.errstate(under="ignore"):
        plain = np.sqrt(np.mean(dev * dev, axis=1))
    big = np.max(np.abs(dev), axis=1)
    unsafe = (plain < 1e-140) & (big > 0)  # the squares lost precision or underflowed to 0
    if not np.any(unsafe):
        return plain
    m = np.where(big > 0, big, 1.0)
    safe = np.sqrt(np.mean((dev / m[:, None]) ** 2, axis=1)) * m
    return np.where(unsafe, safe, plain)


def feature_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and spread of each feature of each data set, each (B, d); a constant feature gets
    spread 1. ``X`` has shape (B, n, d)."""
    centre = X.mean(axis=1)
    scale = _spread(X, centre)
    return centre, np.where(scale > 0, scale, 1.0)


def response_scale(y: np.ndarray, expert: str) -> np.ndarray:
    """The scale (B,) each data set of ``y`` (B, n) is divided by: 1 inside the band, else the
    power of two nearest its spread. Raises ValueError naming ``ys`` when the variance of y is
    too small for float64 (below :data:`TINY_VARIANCE`) or when tanh experts (means in [-1, 1],
    not scalable) meet responses far outside unit scale."""
    spread = _spread(y, y.mean(axis=1))
    with np.errstate(under="ignore"):
        too_small = spread * spread < TINY_VARIANCE
    if np.any(too_small):
        raise ValueError(f"ys: values too small (spread {float(spread[too_small][0]):.1e}: their variance underflows "
                         "float64); rescale y")
    log2 = np.round(np.log2(spread))
    outside = np.abs(log2) > Y_BAND
    if np.any(outside) and expert != "linear":
        raise ValueError(f"ys: responses of spread {float(spread[outside][0]):.1e} cannot be fitted by {expert!r} experts "
                         f"(their means lie in [-1, 1]); rescale y to a spread within 2**-{Y_BAND} .. 2**{Y_BAND}")
    return np.where(outside, np.exp2(log2), 1.0)


def scale_start(p: dict, scale: float) -> dict:
    """A start (or any parameter dict) in the units of y to the units of ``y / scale``."""
    if scale == 1.0:
        return p
    out = dict(p)
    out["expert_weight"] = np.asarray(p["expert_weight"]) / scale
    out["expert_bias"] = np.asarray(p["expert_bias"]) / scale
    out["variance"] = np.asarray(p["variance"]) / scale**2
    return out


def outcome_to_units_of_y(layout: Layout, out: EngineOutcome, floor: torch.Tensor,
                          scale: np.ndarray) -> tuple[EngineOutcome, torch.Tensor]:
    """The engines' outcome (rows fitted to ``y / scale``, ``scale`` (R,)) and the variance
    floors (R,) mapped back to the units of y: expert slopes and intercepts times ``scale``,
    log-variances plus ``2 log(scale)``, per-sample log-likelihood (and its trace) minus
    ``log(scale)``. ``grad_norm`` stays in the fitter's internal units; ``stationarity`` is
    scale-free."""
    if np.all(scale == 1.0):
        return out, floor
    s = torch.as_tensor(scale, dtype=out.theta.dtype, device=out.theta.device)
    trace = [t - math.log(float(v)) for t, v in zip(out.trace, scale)]
    mapped = dataclasses.replace(out, theta=theta_to_units_of_y(layout, out.theta, scale), f=out.f - torch.log(s), trace=trace)
    return mapped, floor * s * s


def theta_to_units_of_y(layout: Layout, theta: torch.Tensor, scale: np.ndarray) -> torch.Tensor:
    """Rows theta (R, P) fitted to ``y / scale`` (``scale`` (R,)) in the units of y."""
    if np.all(scale == 1.0):
        return theta
    s = torch.as_tensor(scale, dtype=theta.dtype, device=theta.device)
    gw, gb, ew, eb, logv = torch.split(theta, layout.sizes, dim=-1)
    return torch.cat([gw, gb, ew * s[:, None], eb * s[:, None], logv + 2 * torch.log(s)[:, None]], dim=1)
