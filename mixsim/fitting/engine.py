"""The EM -> Newton driver: runs the engines on rows of theta, one row per data set and start.

A row's progress lives in one typed :class:`EngineState` that :func:`mixsim.fitting.em.run_em`
and :func:`mixsim.fitting.newton.run_newton` update in place; :func:`run_engine` returns an
:class:`EngineOutcome` per row. Rows are run in sub-batches of about :data:`BATCH_POINTS` data
points: large tensors stream from memory, small ones stay in cache, and a row's result does not
depend on its sub-batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..options import FitOptions, em_applies
from .bounds import VarianceBounds
from .em import run_em
from .layout import Layout
from .newton import measure, run_newton
from .state import EngineState

__all__ = ["BATCH_POINTS", "EngineState", "EngineOutcome", "run_engine"]

BATCH_POINTS = 2**18  # data points per sub-batch (rows x samples): cache-sized


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
