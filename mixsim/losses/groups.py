"""Per-group errors (exponent 1, by cell type and weighting) and the diagnosis of over-fitted cells."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ..model import MoEParams
from .atoms import GATE_SYMMETRY, GROUPS, _aligned_log_weights, aligned_atoms
from .voronoi import _abs_diffs, _cell_weight_errors, _cells


# ---------------------------------------------------------------------------------------------
# per-group errors
# ---------------------------------------------------------------------------------------------


#: Weightings of the per-group errors (:func:`group_errors`), in key order.
WEIGHTINGS = ("weighted", "unweighted", "share", "centre")


def group_error_keys(gate: str) -> tuple[str, ...]:
    """The keys :func:`group_errors` returns for a gate family, in a fixed order."""
    if gate not in GATE_SYMMETRY:
        raise ValueError(f"unknown gate {gate!r}; expected one of {tuple(GATE_SYMMETRY)}")
    groups = [g for g in GROUPS if not (g == "gate_slope" and gate == "competition")]
    return tuple(f"{g}_{c}_{w}" for g in groups for c in ("single", "multi") for w in WEIGHTINGS)


def _cell_shares(log_weights: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Each atom's share ``w_i / W_j`` of its cell's mass, from the log weights (no underflow)."""
    log_w = log_weights[cell]
    return np.exp(log_w - logsumexp(log_w))


def group_errors(est: MoEParams, truth: MoEParams) -> dict[str, float]:
    """Per-parameter-group errors with exponent 1, split by cell type and weighting.

    Cells and aligned weights are those of :func:`voronoi_loss`. Keys are
    ``f"{group}_{cells}_{weighting}"`` (see :func:`group_error_keys`; the set depends only on the
    gate family: ``gate_slope`` is absent for competition):

    * ``cells = "single"`` sums over cells with exactly one fitted atom; ``"multi"`` over all other
      cells (two or more atoms, and empty cells, which contribute to ``weight_*`` only).
    * ``gate_slope`` (``|D beta1|``), ``expert_slope`` (``|D a|``), ``expert_intercept``
      (``|D b|``), ``variance`` (``|D sigma2|``), with ``W_j = sum_{i in A_j} w_i`` the mass of
      cell j, summed over the cells:

      - ``weighted``: ``sum_i w_i |theta_i - theta*_j|`` (the terms of D1);
      - ``unweighted``: ``sum_i |theta_i - theta*_j|``. **Ill-defined when over-fitted**: the
        MLE often gives one atom of a two-atom cell a vanishing mass (shares down to 1e-17); that
        atom's parameters are then unconstrained and dominate this sum, which need not fall with n.
        Kept for comparison with earlier results;
      - ``share``: ``sum_i (w_i / W_j) |theta_i - theta*_j|``, each atom weighted by its share of
        the cell's mass: scale-free like ``unweighted``, and an atom of vanishing mass counts for
        nothing (THEORY.md section 8);
      - ``centre``: ``|sum_i (w_i / W_j) theta_i - theta*_j|``, the error of the cell's
        mass-weighted mean parameter (<= ``share`` by the triangle inequality).

      Vector groups use the Euclidean norm over the d inputs.
    * ``weight``: per cell ``|W_j - w*_j|`` (``weighted``, the weight term of the losses), or the
      relative error ``|W_j - w*_j| / w*_j`` (``unweighted``, ``share`` and ``centre`` alike).

    A sum over no cells is 0.0. The ``*_weighted`` values add up to D1 (for any k). Every value
    is unchanged by relabelling either model's experts and by the gate's shift symmetry.

    Parameters
    ----------
    est, truth : MoEParams
        Fitted (k experts) and true (k* experts) models; same gate family, expert family and dim.

    Returns
    -------
    dict[str, float]
    """
    a_est, a_true = aligned_atoms(est, truth)
    cells, owner = _cells(a_est, a_true)
    diffs = _abs_diffs(a_est, a_true, owner)
    weight_err = _cell_weight_errors(a_est, a_true, cells)
    log_est, log_true = _aligned_log_weights(est), _aligned_log_weights(truth)
    out = dict.fromkeys(group_error_keys(est.gate), 0.0)
    for j, cell in enumerate(cells):
        kind = "single" if len(cell) == 1 else "multi"
        out[f"weight_{kind}_weighted"] += float(weight_err[j])
        if a_true.weight[j] >= np.finfo(float).tiny:
            relative = float(weight_err[j] / a_true.weight[j])
        else:  # the true weight underflows (beta0 = -800): |S_j / w*_j - 1| from the log weights
            log_s = logsumexp(log_est[cell]) if len(cell) else -np.inf
            with np.errstate(over="ignore"):
                relative = float(abs(np.expm1(log_s - log_true[j])))
        for w in ("unweighted", "share", "centre"):
            out[f"weight_{kind}_{w}"] += relative
        if len(cell) == 0:
            continue
        shares = _cell_shares(log_est, cell)
        for g, d in diffs.items():
            out[f"{g}_{kind}_weighted"] += float(a_est.weight[cell] @ d[cell])
            out[f"{g}_{kind}_unweighted"] += float(d[cell].sum())
            out[f"{g}_{kind}_share"] += float(shares @ d[cell])
            centre = shares @ a_est.group(g)[cell]
            out[f"{g}_{kind}_centre"] += float(np.linalg.norm(centre - a_true.group(g)[j]))
    return out


def cell_diagnosis(est: MoEParams, truth: MoEParams) -> dict[str, float]:
    """How the fitted atoms fall into the Voronoi cells of the true ones.

    Tells a merged cell (two atoms sharing the mass) from one whose extra atom is vanishing
    (one share near 0), so they can be counted across fits.

    Parameters
    ----------
    est, truth : MoEParams
        Fitted (k experts) and true (k* experts) models; same gate family, expert family and dim.

    Returns
    -------
    dict[str, float]
        For every true atom j: ``cell{j}_atoms``, the number of fitted atoms in its cell, and
        ``cell{j}_min_share``, the smallest share ``w_i / W_j`` of the cell's mass held by one of
        them (1.0 for a cell of one atom, 0.0 for an empty cell).
    """
    a_est, a_true = aligned_atoms(est, truth)
    cells, _ = _cells(a_est, a_true)
    log_est = _aligned_log_weights(est)
    out: dict[str, float] = {}
    for j, cell in enumerate(cells):
        out[f"cell{j}_atoms"] = float(len(cell))
        out[f"cell{j}_min_share"] = float(_cell_shares(log_est, cell).min()) if len(cell) else 0.0
    return out
