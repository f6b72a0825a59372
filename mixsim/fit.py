"""Batched maximum-likelihood fitting (work in progress: contract only)."""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from .model import MoEParams


class ConvergenceWarning(UserWarning):
    """The best run of a fit did not meet its tolerance within ``max_iter`` iterations."""


@dataclass(frozen=True)
class NearTruthInit:
    """Noise of the near-truth start (THEORY.md section 2): sd = scale * n ** -exponent."""
    gate_scale: float = 0.005
    expert_scale: float = 0.05
    variance_scale: float = 0.005
    gate_exponent: float = 0.083
    expert_exponent: float = 0.083
    variance_exponent: float = 0.25


@dataclass(frozen=True, eq=False)
class FitResult:
    params: MoEParams
    log_likelihood: float
    converged: bool
    n_iter: int
    trace: np.ndarray
    grad_norm: float
    status: str
    variance_floor: float
    variance_floored: bool
    seconds: float


def fit(X, y, n_experts, **kwargs) -> FitResult:
    raise NotImplementedError


def fit_batch(Xs, ys, n_experts, **kwargs) -> list[FitResult]:
    raise NotImplementedError
