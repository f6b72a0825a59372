"""Voronoi cells and Voronoi losses D1/D2 between a fitted mixture of experts and the truth."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..model import MoEParams
from .atoms import _PARAM_GROUPS, D2_EXPONENTS, Atoms, aligned_atoms


# ---------------------------------------------------------------------------------------------
# Voronoi cells and per-atom differences
# ---------------------------------------------------------------------------------------------


def _cells(a_est: Atoms, a_true: Atoms) -> tuple[list[np.ndarray], np.ndarray]:
    """Cells (one index array per true atom) and the owner (true index) of every fitted atom."""
    v_est, v_true = a_est.vector(), a_true.vector()
    dist = np.linalg.norm(v_est[:, None, :] - v_true[None, :, :], axis=-1)  # (k, k*)
    owner = np.argmin(dist, axis=1)  # ties -> lower true index
    return [np.flatnonzero(owner == j) for j in range(v_true.shape[0])], owner


def voronoi_cells(est: MoEParams, truth: MoEParams) -> list[np.ndarray]:
    """Voronoi cells of the true atoms among the fitted atoms.

    Parameters
    ----------
    est : MoEParams
        Fitted model with k experts.
    truth : MoEParams
        True model with k* experts (same gate family, expert family and dim).

    Returns
    -------
    list of k* int arrays
        Entry j holds the (sorted) indices of the fitted experts closest to true expert j, in
        Euclidean distance on the aligned atom vectors ``(beta1, a, b, sigma2)`` (no ``beta1``
        for competition; alignment as in :func:`aligned_atoms`). Arrays may be empty.
    """
    return _cells(*aligned_atoms(est, truth))[0]


def _abs_diffs(a_est: Atoms, a_true: Atoms, owner: np.ndarray) -> dict[str, np.ndarray]:
    """``|theta_i - theta*_{owner(i)}|`` per parameter group (Euclidean norm over d), each (k,)."""
    out = {}
    for g in _PARAM_GROUPS:
        e, t = a_est.group(g), a_true.group(g)
        if e is not None:
            out[g] = np.linalg.norm(e - t[owner], axis=1)
    return out


def _cell_weight_errors(a_est: Atoms, a_true: Atoms, cells: list[np.ndarray]) -> np.ndarray:
    """``|sum_{i in A_j} w_i - w*_j|`` for every true atom j, shape (k*,)."""
    sums = np.array([a_est.weight[c].sum() for c in cells])
    return np.abs(sums - a_true.weight)


# ---------------------------------------------------------------------------------------------
# Voronoi losses
# ---------------------------------------------------------------------------------------------


def _exponent_table(est: MoEParams, exponents: Mapping | None) -> Callable[[int], dict[str, float]]:
    """A function from cell size m >= 2 to the per-group exponents used by D2."""
    groups = [g for g in _PARAM_GROUPS if not (g == "gate_slope" and est.gate == "competition")]
    if exponents is not None:
        if not isinstance(exponents, Mapping) or not exponents:
            raise TypeError("exponents must be a non-empty dict {group: exponent} or {m: {group: exponent}}")
        keys = list(exponents)
        if all(isinstance(key, str) for key in keys):
            fixed = _check_exponents(exponents, groups)
            return lambda m: fixed
        if all(isinstance(key, (int, np.integer)) and not isinstance(key, bool) for key in keys):
            per_m = {int(m): _check_exponents(v, groups) for m, v in exponents.items()}
        else:
            raise TypeError(f"exponents keys must be all group names or all cell sizes; got {keys}")
    else:
        key = (est.gate, est.expert)
        if key not in D2_EXPONENTS:
            raise ValueError(f"no D2 exponents for {key}; add them to mixsim.losses.D2_EXPONENTS or pass exponents=")
        per_m = {m: _check_exponents(v, groups) for m, v in D2_EXPONENTS[key].items()}

    def lookup(m: int) -> dict[str, float]:
        if m not in per_m:
            raise ValueError(
                f"a Voronoi cell holds {m} fitted atoms; rbar({m}) is not known for gate={est.gate!r}, "
                f"expert={est.expert!r} (known cell sizes: {sorted(per_m)}). Pass exponents= explicitly, "
                f"a dict over the groups {groups} (or {{cell size: such a dict}})"
            )
        return per_m[m]

    return lookup


def _check_exponents(spec: Any, groups: list[str]) -> dict[str, float]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"exponents for a cell size must be a dict {{group: exponent}}; got {type(spec).__name__}")
    unknown = set(spec) - set(groups)
    missing = set(groups) - set(spec)
    if unknown or missing:
        raise ValueError(f"exponents must give exactly the groups {groups}; unknown {sorted(unknown)}, missing {sorted(missing)}")
    out = {g: float(spec[g]) for g in groups}
    if not all(np.isfinite(v) and v > 0 for v in out.values()):
        raise ValueError(f"exponents must be finite and > 0; got {out}")
    return out


def voronoi_loss(est: MoEParams, truth: MoEParams, kind: str = "D1", exponents: Mapping | None = None) -> float:
    """Voronoi loss between a fitted and a true mixture of experts (THEORY.md section 3).

    With cells ``A_j`` from :func:`voronoi_cells`, aligned weights ``w`` (see
    :func:`aligned_atoms`) and ``D = fitted - true`` inside a cell,

    ``D1 = sum_j |sum_{i in A_j} w_i - w*_j| + sum_j sum_{i in A_j} w_i (|D beta1| + |D a| + |D b| + |D sigma2|)``.

    ``D2`` uses the same weight term and, for cells of ``m = |A_j| >= 2`` atoms,
    ``sum_{i in A_j} w_i sum_g |D g|^{e_g(m)}`` with exponents from :data:`D2_EXPONENTS` (softmax
    with linear experts: ``|D beta1|^r + |D a|^(r/2) + |D b|^r + |D sigma2|^(r/2)``, ``r = rbar(m)``,
    rbar(2) = 4, rbar(3) = 6); singleton cells are as in D1. An empty cell contributes ``w*_j``.

    Parameters
    ----------
    est : MoEParams
        Fitted model (k experts). ``D1`` needs ``k == k*``; ``D2`` needs ``k >= k*``.
    truth : MoEParams
        True model (k* experts), same gate family, expert family and dim.
    kind : {"D1", "D2"}, default "D1"
    exponents : dict, optional
        D2 only: ``{group: exponent}`` for every multi-atom cell, or ``{m: {group: exponent}}`` per
        cell size; groups are ``gate_slope`` (not for competition), ``expert_slope``,
        ``expert_intercept``, ``variance``. Default: :data:`D2_EXPONENTS`, which knows m = 2, 3
        only (a larger cell raises ValueError).

    Returns
    -------
    float
        >= 0; zero when ``est`` equals ``truth`` up to relabelling and the gate shift.
    """
    if kind not in ("D1", "D2"):
        raise ValueError(f"kind must be 'D1' or 'D2'; got {kind!r}")
    a_est, a_true = aligned_atoms(est, truth)
    k, k_true = est.n_experts, truth.n_experts
    if kind == "D1":
        if exponents is not None:
            raise ValueError("exponents apply to kind='D2' only; D1 uses exponent 1 throughout")
        if k != k_true:
            raise ValueError(f"D1 is the exact-fitted loss (est k == truth k); got k={k}, k*={k_true}. Use kind='D2' or group_errors")
    elif k < k_true:
        raise ValueError(f"D2 is the over-fitted loss (est k >= truth k); got k={k}, k*={k_true}")
    cells, owner = _cells(a_est, a_true)
    diffs = _abs_diffs(a_est, a_true, owner)
    loss = _cell_weight_errors(a_est, a_true, cells).sum()
    table = _exponent_table(est, exponents) if kind == "D2" else None
    for cell in cells:
        m = len(cell)
        if m == 0:
            continue
        power = {g: 1.0 for g in diffs} if (table is None or m == 1) else table(m)
        loss += sum(float(a_est.weight[cell] @ diffs[g][cell] ** power[g]) for g in diffs)
    return float(loss)
