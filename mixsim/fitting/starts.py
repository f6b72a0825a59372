"""Starts of a fit: near the truth (THEORY.md section 2) or from the data alone.

numpy, one data set at a time, each from that data set's own random stream. Each returns the
parameter arrays of one start (``gate_weight``, ``gate_bias``, ``expert_weight``, ``expert_bias``,
``variance``; a gate field is None where the model has none).
"""
from __future__ import annotations

import numpy as np
import torch

from ..experts import EXPERTS
from ..model import MoEParams
from ..options import NearTruthInit
from .layout import Layout

__all__ = ["init_near_truth", "init_auto"]


def init_near_truth(truth: MoEParams, k: int, n: int, opts: NearTruthInit, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
    """Start near the truth (THEORY.md section 2): assign, split weights inside a cell, add noise."""
    k0 = truth.n_experts
    assign = np.asarray(opts.assign if opts.assign is not None else list(range(k0)) + [0] * (k - k0))
    if assign.shape != (k,) or set(assign.tolist()) != set(range(k0)):
        raise ValueError(f"init_options.assign must map the {k} fitted experts onto all {k0} true ones; got {assign.tolist()}")
    cell_size = np.bincount(assign, minlength=k0)[assign]
    sd = lambda scale, expo: scale * n ** (-expo)  # noqa: E731
    gs, es, vs = sd(opts.gate_scale, opts.gate_exponent), sd(opts.expert_scale, opts.expert_exponent), sd(opts.variance_scale, opts.variance_exponent)
    out: dict[str, np.ndarray | None] = {"gate_weight": None, "gate_bias": None}
    if truth.gate_weight is not None:
        out["gate_weight"] = truth.gate_weight[assign] + gs * rng.standard_normal((k, truth.dim))
    if truth.gate_bias is not None:
        out["gate_bias"] = truth.gate_bias[assign] - np.log(cell_size) + gs * rng.standard_normal(k)
    out["expert_weight"] = truth.expert_weight[assign] + es * rng.standard_normal((k, truth.dim))
    out["expert_bias"] = truth.expert_bias[assign] + es * rng.standard_normal(k)
    out["variance"] = truth.variance[assign] + np.abs(vs * rng.standard_normal(k))
    return out


def init_auto(layout: Layout, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
    """A data-driven start: k random centres in standardised (x, y), hard clusters, least squares.

    The gate starts nearly uniform; each expert is fitted by ridge least squares
    on its cluster (on arctanh of the clipped response for tanh experts).
    """
    n, d = X.shape
    k = layout.k
    Z = np.column_stack([X, y])
    Z = (Z - Z.mean(0)) / np.maximum(Z.std(0), 1e-12)
    centres = Z[rng.choice(n, size=k, replace=False)]
    label = ((Z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    target = y
    if layout.expert == "tanh":
        target = np.arctanh(np.clip(y / max(1.0, np.abs(y).max()) * 0.95, -0.95, 0.95))
    Phi = np.column_stack([X, np.ones(n)])
    W = np.empty((k, d + 1))
    var = np.empty(k)
    for j in range(k):
        m = label == j
        if m.sum() < d + 2:  # too few points: use everything with extra noise
            m = np.ones(n, dtype=bool)
        A = Phi[m]
        W[j] = np.linalg.solve(A.T @ A + 1e-6 * np.eye(d + 1), A.T @ target[m])
        if m.all():
            W[j] += 0.1 * rng.standard_normal(d + 1) * np.abs(W[j]).max()
        resid = y[m] - EXPERTS[layout.expert](torch.from_numpy(A @ W[j])).numpy()
        var[j] = max(resid.var(), 1e-3 * y.var())
    # Gate: nearly uniform, with small noise so that a top-K gate does not start on exact ties.
    out: dict[str, np.ndarray | None] = {"gate_weight": None, "gate_bias": None}
    if layout.gate != "competition":
        out["gate_weight"] = 0.1 * rng.standard_normal((k, d))
    if layout.gate == "sigmoid" or layout.gate_bias:
        out["gate_bias"] = 0.1 * rng.standard_normal(k)
    out.update(expert_weight=W[:, :d], expert_bias=W[:, d], variance=var)
    return out
