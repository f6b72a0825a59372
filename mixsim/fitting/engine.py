"""The EM -> Newton driver: runs the engines on rows of theta, one row per data set and start.

A row's progress lives in one typed :class:`EngineState` that :func:`mixsim.fitting.em.run_em`
and :func:`mixsim.fitting.newton.run_newton` update in place; :func:`run_engine` returns an
:class:`EngineOutcome` per row. Rows are run in sub-batches of about :data:`BATCH_POINTS` data
points: large tensors stream from memory, small ones stay in cache, and a row's result does not
depend on its sub-batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..options import FitOptions, em_applies
from .bounds import VarianceBounds
from .em import run_em
from .layout import Layout
from .newton import measure, run_newton

__all__ = ["BATCH_POINTS", "EngineState", "EngineOutcome", "run_engine"]

BATCH_POINTS = 2**18  # data points per sub-batch (rows x samples): cache-sized


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


@dataclass(frozen=True)
class EngineOutcome:
    """What the engines leave per row: estimate, per-sample log-likelihood, status, certificate.

    ``theta`` has shape (R, P); ``f``, ``converged``, ``stalled``, ``n_iter``, ``grad_norm`` and
    ``stationarity`` shape (R,); ``trace`` holds one array per row (:meth:`EngineState.traces`).
    """

    theta: torch.Tensor
    f: torch.Tensor
    converged: torch.Tensor
    stalled: torch.Tensor
    n_iter: torch.Tensor
    grad_norm: torch.Tensor
    stationarity: torch.Tensor
    trace: list[np.ndarray]

    @staticmethod
    def concat(parts: list["EngineOutcome"]) -> "EngineOutcome":
        """The outcomes of consecutive sub-batches as one."""
        tensors = {name: torch.cat([getattr(p, name) for p in parts])
                   for name in ("theta", "f", "converged", "stalled", "n_iter", "grad_norm", "stationarity")}
        return EngineOutcome(**tensors, trace=[t for p in parts for t in p.trace])


def run_engine(layout: Layout, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, bounds: VarianceBounds,
               options: FitOptions) -> EngineOutcome:
    """Fit rows ``theta`` (R, P) to data ``X`` (R, n, d), ``y`` (R, n) within variance ``bounds``
    (:class:`~mixsim.fitting.bounds.VarianceBounds`, one row each).

    ``options.method``: ``em`` runs EM to the end (Newton takes the rows whose EM step was
    refused), ``auto`` hands over from EM to Newton after ``options.em_warmup`` iterations (EM
    only for softmax / top-K gates with linear experts), ``newton`` runs Newton alone.
    """
    rows = max(1, BATCH_POINTS // X.shape[1])
    parts = [_run_rows(layout, theta[i:i + rows], X[i:i + rows], y[i:i + rows], bounds.rows(i, i + rows), options)
             for i in range(0, theta.shape[0], rows)]
    return EngineOutcome.concat(parts)


def _run_rows(layout: Layout, theta, X, y, bounds: VarianceBounds, options: FitOptions) -> EngineOutcome:
    """Run EM and/or Newton on one sub-batch of rows."""
    method, max_iter = options.method, options.max_iter
    state = EngineState.start(theta, max_iter)
    if em_applies(layout.gate, layout.expert) and method in ("em", "auto"):
        steps = max_iter if method == "em" else min(options.em_warmup, max_iter)
        with torch.no_grad():
            p = run_em(layout, layout.unpack(theta), X, y, bounds, options.tol, options.gtol, steps, state,
                       compiled=options.compile, certify=method == "em")
        theta = layout.pack(p)
    # Newton takes over whatever EM left undone (in "em" mode: the rows whose EM step was refused).
    theta = run_newton(layout, theta, X, y, bounds, options.tol, options.gtol, max_iter, state)
    missing = torch.nonzero(torch.isnan(state.stationarity)).squeeze(1)
    if missing.numel():  # rows that ran out of EM iterations: measure where they stopped
        state.grad[missing], state.stationarity[missing] = measure(
            layout, theta[missing], X[missing], y[missing], bounds.take(missing))
    return EngineOutcome(
        theta=theta.detach(), f=state.f, converged=state.converged, stalled=state.stalled, n_iter=state.n_iter,
        grad_norm=state.grad.norm(dim=1), stationarity=state.stationarity, trace=state.traces(),
    )
