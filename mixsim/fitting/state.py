"""The per-row progress of a fit: :class:`EngineState`, which :func:`mixsim.fitting.em.run_em` and
:func:`mixsim.fitting.newton.run_newton` update in place and :mod:`mixsim.fitting.engine` starts.

Its own module so that the engines and their driver all import it from below (no import cycle).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["EngineState"]


@dataclass
class EngineState:
    """Per-row progress shared by the EM and Newton engines (R rows, P free parameters).

    Attributes
    ----------
    done : bool tensor of shape (R,)
        The row needs no more iterations (converged, stalled, or out of iterations).
    converged : bool tensor of shape (R,)
    stalled : bool tensor of shape (R,)
        No improving step was found at a point that is not stationary.
    n_iter : long tensor of shape (R,)
        Iterations run, EM and Newton together.
    f : tensor of shape (R,)
        Per-sample log-likelihood at the current estimate.
    last_change : tensor of shape (R,)
        Change of ``f`` at the last accepted iteration (inf before any).
    stationarity : tensor of shape (R,)
        Newton decrement per sample where last measured (NaN: not measured yet).
    grad : tensor of shape (R, P)
        Gradient of the per-sample log-likelihood where last measured.
    max_iter : int
        Iteration cap per row.
    trace : list of (tensor (R,), bool tensor (R,))
        ``f`` after each iteration of the engines, and the rows for which it was accepted.
    """

    done: torch.Tensor
    converged: torch.Tensor
    stalled: torch.Tensor
    n_iter: torch.Tensor
    f: torch.Tensor
    last_change: torch.Tensor
    stationarity: torch.Tensor
    grad: torch.Tensor
    max_iter: int
    trace: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def start(cls, theta: torch.Tensor, max_iter: int) -> "EngineState":
        """The state of rows ``theta`` (R, P) before any iteration."""
        R = theta.shape[0]
        dev, dt = theta.device, theta.dtype
        return cls(
            done=torch.zeros(R, dtype=torch.bool, device=dev),
            converged=torch.zeros(R, dtype=torch.bool, device=dev),
            stalled=torch.zeros(R, dtype=torch.bool, device=dev),
            n_iter=torch.zeros(R, dtype=torch.long, device=dev),
            f=torch.zeros(R, dtype=dt, device=dev),
            last_change=torch.full((R,), float("inf"), dtype=dt, device=dev),
            stationarity=torch.full((R,), float("nan"), dtype=dt, device=dev),
            grad=torch.zeros_like(theta),
            max_iter=max_iter,
        )

    def record(self, idx: torch.Tensor, ok: torch.Tensor) -> None:
        """Append ``f`` to the trace, flagged accepted for the rows ``idx[ok]``."""
        flags = torch.zeros_like(self.done)
        flags[idx] = ok
        self.trace.append((self.f.clone(), flags))

    def traces(self) -> list[np.ndarray]:
        """Per row: ``f`` after each of its accepted iterations (the start first)."""
        values = torch.stack([v for v, _ in self.trace], 1).cpu().numpy()
        flags = torch.stack([m for _, m in self.trace], 1).cpu().numpy()
        return [values[r][flags[r]] for r in range(values.shape[0])]
