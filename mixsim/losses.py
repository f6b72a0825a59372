"""Distances between a fitted mixture of experts and the truth: Voronoi losses, per-group errors,
expected Hellinger and total-variation distances (THEORY.md section 3).

A model with ``k`` experts is read as a mixing measure ``G = sum_i w_i delta_{theta_i}``: atoms
``theta_i = (beta1_i, a_i, b_i, sigma2_i)`` (gate slope, expert slope, expert intercept, variance;
no ``beta1`` for the competition gate, which has no slope of its own) and weights
``w_i = exp(beta0_i)``.

Choices made here (THEORY.md tags them [C] or leaves them open; each is a module-level table or a
parameter, so it can be changed):

* **Gate shift.** Softmax-type gates (``softmax``, top-K softmax, ``competition``) are unchanged
  when the same ``(t1, t0)`` is added to every ``(beta1_i, beta0_i)`` (competition: ``t0`` only).
  We *canonicalise* rather than take an infimum, in a way that does not depend on how experts are
  labelled: both models' weights are scaled to sum to one (``t0 = -logsumexp(beta0)``), and the
  fitted gate slopes are translated so that their weight-averaged centroid ``sum_i w_i beta1_i``
  equals the truth's. Both steps are closed-form and exactly undo any common shift of either
  model, and both are smooth functions of first-order weighted sums that converge at the
  parametric rate even inside over-fitted cells, so the canonical form adds no slow error.
  The authors' code fixes the *last* expert's gate to zero instead; that depends on labelling and
  differs from ours only by a constant factor on the weights (``1 + e^-8`` for the reference
  truth). The sigmoid gate has no such symmetry; its parameters are used as given
  (:data:`GATE_SYMMETRY`).
* **Cells.** A fitted atom belongs to the cell of the true atom nearest in Euclidean distance on
  the aligned atom vector ``(beta1, a, b, sigma2)`` (``(a, b, sigma2)`` for competition); ties go
  to the lower true index. Cells may be empty.
* **Norms.** ``|D beta1|`` and ``|D a|`` are Euclidean norms of the d-vectors.
* **D2 exponents.** :data:`D2_EXPONENTS`, keyed by (gate, expert) then cell size; only
  softmax with linear experts (rbar(2) = 4, rbar(3) = 6) is [A]; every other entry is [C].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from scipy.special import logsumexp, ndtr

from .experts import expert_mean
from .gates import log_gate_weights
from .model import MoEParams, as_rng, sample_x

__all__ = [
    "GROUPS",
    "GATE_SYMMETRY",
    "D2_EXPONENTS",
    "Atoms",
    "atoms",
    "aligned_atoms",
    "voronoi_cells",
    "voronoi_loss",
    "group_errors",
    "group_error_keys",
    "cell_diagnosis",
    "WEIGHTINGS",
    "hellinger",
    "total_variation",
]

#: Parameter groups of an atom, in atom-vector order, and the weight group.
GROUPS = ("weight", "gate_slope", "expert_slope", "expert_intercept", "variance")
_PARAM_GROUPS = GROUPS[1:]

#: Gate families and the gate-parameter symmetry the losses quotient out:
#: ``"slope_and_bias"`` (add (t1, t0) to every expert), ``"bias"`` (add t0), or None.
GATE_SYMMETRY: dict[str, str | None] = {
    "softmax": "slope_and_bias",   # [A]: softmax is invariant to a common shift of its logits
    "competition": "bias",         # softmax over phi(h) + beta0: a common t0 cancels; no slope
    "sigmoid": None,               # sigmoid(.) is not shift invariant: parameters used as given [C]
}


def _all_groups(exponent: float, slope: bool = True) -> dict[str, float]:
    return {g: float(exponent) for g in _PARAM_GROUPS if slope or g != "gate_slope"}


def _rbar(r: float) -> dict[str, float]:
    # Softmax gate with linear experts: beta1 and b carry r, a and sigma2 carry r / 2.
    return {"gate_slope": r, "expert_slope": r / 2, "expert_intercept": r, "variance": r / 2}


#: Exponents of the parameter terms of D2 inside a cell of ``m >= 2`` fitted atoms, keyed by
#: ``(gate, expert)`` then ``m``. Singleton cells always use exponent 1. Only
#: ``("softmax", "linear")`` is from the papers [A]; the rest are reconstructions [C]:
#: competition's "n^-1/4 is the likely figure" (THEORY.md section 4) means exponent 2; nonlinear
#: (strongly identifiable) experts do not interact with the gate, so exponent 2 as well; the
#: sigmoid gate with linear experts is given the softmax values. Edit this dict, or pass
#: ``exponents=`` to :func:`voronoi_loss`, to change them.
D2_EXPONENTS: dict[tuple[str, str], dict[int, dict[str, float]]] = {
    ("softmax", "linear"): {2: _rbar(4), 3: _rbar(6)},
    ("softmax", "tanh"): {2: _all_groups(2), 3: _all_groups(2)},
    ("sigmoid", "linear"): {2: _rbar(4), 3: _rbar(6)},
    ("sigmoid", "tanh"): {2: _all_groups(2), 3: _all_groups(2)},
    ("competition", "linear"): {2: _all_groups(2, slope=False), 3: _all_groups(2, slope=False)},
    ("competition", "tanh"): {2: _all_groups(2, slope=False), 3: _all_groups(2, slope=False)},
}

# ---------------------------------------------------------------------------------------------
# atoms and the canonical gate shift
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Atoms:
    """The atoms and weights of a mixing measure, as plain arrays.

    Attributes
    ----------
    weight : array of shape (k,)
        ``exp(beta0)`` (after alignment: scaled to sum to one for shift-invariant gates).
    gate_slope : array of shape (k, d) or None
        ``beta1``; None for the competition gate.
    expert_slope : array of shape (k, d)
    expert_intercept : array of shape (k,)
    variance : array of shape (k,)
    """

    weight: np.ndarray
    gate_slope: np.ndarray | None
    expert_slope: np.ndarray
    expert_intercept: np.ndarray
    variance: np.ndarray

    def group(self, name: str) -> np.ndarray | None:
        """Parameters of one group as an array of shape (k, p) (p = d or 1), None if absent."""
        value = getattr(self, name)
        return None if value is None else value.reshape(value.shape[0], -1)

    def vector(self) -> np.ndarray:
        """Atom vectors ``(beta1, a, b, sigma2)`` of shape (k, 2d + 2), ``(a, b, sigma2)`` of shape
        (k, d + 2) without a gate slope."""
        parts = [self.group(g) for g in _PARAM_GROUPS]
        return np.concatenate([p for p in parts if p is not None], axis=1)


def atoms(params: MoEParams) -> Atoms:
    """Atoms of ``params`` as given (no alignment); a missing ``gate_bias`` means ``beta0 = 0``."""
    _check_params(params, "params")
    beta0 = np.zeros(params.n_experts) if params.gate_bias is None else np.asarray(params.gate_bias)
    slope = None if params.gate == "competition" else np.array(params.gate_weight, dtype=np.float64)
    with np.errstate(over="ignore"):  # aligned_atoms rescales weights from log space for shift-invariant gates
        weight = np.exp(beta0)
    return Atoms(
        weight=weight,
        gate_slope=slope,
        expert_slope=np.array(params.expert_weight, dtype=np.float64),
        expert_intercept=np.array(params.expert_bias, dtype=np.float64),
        variance=np.array(params.variance, dtype=np.float64),
    )


def _unit_mass(a: Atoms, log_w: np.ndarray) -> Atoms:
    return Atoms(np.exp(log_w - logsumexp(log_w)), a.gate_slope, a.expert_slope, a.expert_intercept, a.variance)


def _log_weights(params: MoEParams) -> np.ndarray:
    return np.zeros(params.n_experts) if params.gate_bias is None else np.asarray(params.gate_bias, dtype=np.float64)


def _aligned_log_weights(params: MoEParams) -> np.ndarray:
    """Log of the weights of :func:`aligned_atoms` (scaled to sum to one where the gate has a shift symmetry)."""
    log_w = _log_weights(params)
    return log_w - logsumexp(log_w) if GATE_SYMMETRY[params.gate] is not None else log_w


def aligned_atoms(est: MoEParams, truth: MoEParams) -> tuple[Atoms, Atoms]:
    """Atoms of ``est`` and ``truth`` in the canonical gate frame used by every loss here.

    For gates with a shift symmetry (:data:`GATE_SYMMETRY`) both weight vectors are scaled to sum
    to one, and (softmax-type gates with a slope) the fitted gate slopes are translated so that
    their weighted centroid ``sum_i w_i beta1_i`` equals the truth's. The result is unchanged
    (up to rounding) by adding a common ``(t1, t0)`` to either model's gate parameters and by
    relabelling either model's experts. Gates without a symmetry are returned as given.

    Parameters
    ----------
    est, truth : MoEParams
        Same gate family, expert family and input dimension.

    Returns
    -------
    est_atoms, truth_atoms : Atoms
    """
    _check_pair(est, truth)
    a_est, a_true = atoms(est), atoms(truth)
    symmetry = GATE_SYMMETRY[truth.gate]
    if symmetry is None:
        return a_est, a_true
    a_est, a_true = _unit_mass(a_est, _log_weights(est)), _unit_mass(a_true, _log_weights(truth))
    if symmetry == "slope_and_bias":
        shift = a_true.weight @ a_true.gate_slope - a_est.weight @ a_est.gate_slope  # (d,)
        a_est = Atoms(a_est.weight, a_est.gate_slope + shift, a_est.expert_slope, a_est.expert_intercept, a_est.variance)
    return a_est, a_true


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _check_params(params: Any, name: str) -> None:
    if not isinstance(params, MoEParams):
        raise TypeError(f"{name} must be a MoEParams; got {type(params).__name__}")


def _check_pair(est: Any, truth: Any) -> None:
    _check_params(est, "est")
    _check_params(truth, "truth")
    if est.gate != truth.gate:
        raise ValueError(f"est and truth must share a gate family; got est.gate={est.gate!r}, truth.gate={truth.gate!r}")
    if est.expert != truth.expert:
        raise ValueError(f"est and truth must share an expert family; got est.expert={est.expert!r}, truth.expert={truth.expert!r}")
    if est.dim != truth.dim:
        raise ValueError(f"est and truth must have the same input dimension; got est.dim={est.dim}, truth.dim={truth.dim}")
    if est.gate not in GATE_SYMMETRY:
        raise ValueError(f"no alignment rule for gate {est.gate!r}; add it to mixsim.losses.GATE_SYMMETRY")


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


# ---------------------------------------------------------------------------------------------
# density distances: E_X[ distance between p_hat(. | X) and p*(. | X) ]
# ---------------------------------------------------------------------------------------------

_TAIL_SD = 10.0  # integrate each component over mean +- 10 sd: the mass left out is < 2e-23
_PANELS_PER_SIDE = 5  # panels of two sds each on either side of every component mean
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)  # 8-point Gauss-Legendre per panel
_CHUNK = 256  # inputs per block, to bound memory


def _components(params: MoEParams, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditional mixture of y given each input: log weights (n, k), means (n, k), sds (k,)."""
    t = params.tensors()
    Xt = torch.from_numpy(X)
    mean = expert_mean(params.expert, Xt, t["expert_weight"], t["expert_bias"])
    log_w = log_gate_weights(
        params.gate, Xt, gate_weight=t["gate_weight"], gate_bias=t["gate_bias"],
        expert_mean=mean, top_k=params.top_k, phi=params.phi,
    )
    return log_w.numpy(), mean.numpy(), np.sqrt(np.asarray(params.variance))


def _z(y: np.ndarray, mean: np.ndarray, sd: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
    """Standardised distances (n, m, k) of the points ``anchor + y`` (or ``y``) from every component.

    A point is an anchor (a component mean) plus an offset, so that ``anchor - mean`` is exact for
    the anchor's own component and a component far narrower than the float spacing at its distance
    from the centre (variances 1e300 next to 1e-300) is still resolved.
    """
    if anchor is None:
        return (y[:, :, None] - mean[:, None, :]) / sd
    return ((anchor[:, :, None] - mean[:, None, :]) + y[:, :, None]) / sd


def _log_pdf(y: np.ndarray, log_w: np.ndarray, mean: np.ndarray, sd: np.ndarray, anchor: np.ndarray | None = None) -> np.ndarray:
    """log p(y) of a Gaussian mixture; y (n, m) (offsets from ``anchor`` if given), log_w and mean (n, k), sd (k,) -> (n, m)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # far from every component z * z may overflow: density 0
        z = _z(y, mean, sd, anchor)
        terms = (log_w - np.log(sd * np.sqrt(2.0 * np.pi)))[:, None, :] - 0.5 * z * z  # (n, m, k)
        top = terms.max(axis=-1)  # -inf only where every component's density underflows
        safe = np.where(np.isfinite(top), top, 0.0)
        return np.where(np.isfinite(top), safe + np.log(np.exp(terms - safe[..., None]).sum(axis=-1)), -np.inf)


def _cdf(y: np.ndarray, log_w: np.ndarray, mean: np.ndarray, sd: np.ndarray, anchor: np.ndarray | None = None) -> np.ndarray:
    """CDF of a Gaussian mixture; y (n, m) (offsets from ``anchor`` if given) -> (n, m)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.einsum("nk,nmk->nm", np.exp(log_w), ndtr(_z(y, mean, sd, anchor)))


def _quadrature_grid(mean: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights in y for each input: anchors, offsets and weights, all (n, m).

    Node ``i`` is ``anchor[:, i] + offset[:, i]`` (increasing in i), where the anchor is the mean of
    the component whose breakpoint starts the node's panel. Breakpoints are every component's
    ``mean + s * sd`` for ``s = -10, -8, ..., 10``; between consecutive breakpoints an 8-point rule
    is used. Inside any component's +-10 sd range a panel is at most two of its sds wide, so the
    integrand is resolved to ~1e-12 whatever the scales (checked against closed forms in the
    tests); outside every range the densities are below e^-50. Panel widths are computed from the
    anchors' differences, so a component narrower than the float spacing at its mean keeps its panels.
    """
    n, k = mean.shape
    steps = np.arange(-_PANELS_PER_SIDE, _PANELS_PER_SIDE + 1) * (_TAIL_SD / _PANELS_PER_SIDE)
    comp = np.broadcast_to(np.repeat(np.arange(k), steps.size), (n, k * steps.size))  # component of each breakpoint
    step = np.broadcast_to(np.tile(steps, k), comp.shape)  # its s
    # A breakpoint of a wider component inside a narrower one's +-10 sd range is not needed (the narrow
    # component's panels are finer) and, where the narrow range is below the float spacing, it cannot be
    # placed in it: it becomes a copy of the narrow component's first breakpoint (a panel of width 0).
    offset = (np.take_along_axis(mean, comp, axis=1)[:, :, None] - mean[:, None, :]) + (sd[comp] * step)[:, :, None]  # (n, k * S, k)
    inside = (np.abs(offset) < _TAIL_SD * sd) & (sd < sd[comp][:, :, None])
    narrowest = np.argmin(np.where(inside, sd, np.inf), axis=-1)
    moved = inside.any(axis=-1)
    comp, step = np.where(moved, narrowest, comp), np.where(moved, -_TAIL_SD, step)
    value = np.take_along_axis(mean, comp, axis=1) + sd[comp] * step  # (n, k * S)
    order = np.lexsort((comp, step, value), axis=-1)
    c, s = np.take_along_axis(comp, order, axis=1), np.take_along_axis(step, order, axis=1)  # sorted along the line
    anchor = np.take_along_axis(mean, c, axis=1)
    lo_c, hi_c, lo_s, hi_s = c[:, :-1], c[:, 1:], s[:, :-1], s[:, 1:]
    lo_off = lo_s * sd[lo_c]
    width = (anchor[:, 1:] - anchor[:, :-1]) + hi_s * sd[hi_c] - lo_off  # exact within one component
    half = 0.5 * np.maximum(width, 0.0)[:, :, None]  # (n, panels, 1)
    # Nodes are offsets from the panel end of the narrower component (so that near a narrow
    # component they are resolved at its scale, not at the float spacing of a far anchor).
    hi_end = (sd[hi_c] < sd[lo_c])[:, :, None]
    hi_off = (hi_s * sd[hi_c])[:, :, None]
    offset = np.where(hi_end, hi_off - half * (1.0 - _GL_NODES), lo_off[:, :, None] + half * (_GL_NODES + 1.0)).reshape(n, -1)
    weights = (half * _GL_WEIGHTS).reshape(n, -1)
    anchors = np.where(hi_end, anchor[:, 1:, None], anchor[:, :-1, None]) * np.ones_like(_GL_NODES)
    return anchors.reshape(n, -1), offset, weights


def _hellinger_rows(p: tuple, q: tuple) -> np.ndarray:
    """Hellinger distance per input between two conditional mixtures (each (log_w, mean, sd))."""
    anchor, nodes, weights = _quadrature_grid(np.concatenate([p[1], q[1]], axis=1), np.concatenate([p[2], q[2]]))
    root_p = np.exp(0.5 * _log_pdf(nodes, *p, anchor=anchor))
    root_q = np.exp(0.5 * _log_pdf(nodes, *q, anchor=anchor))
    h2 = 0.5 * np.sum(weights * (root_p - root_q) ** 2, axis=1)
    return np.sqrt(np.clip(h2, 0.0, 1.0))


def _bisect_roots(lo: np.ndarray, hi: np.ndarray, f_lo: np.ndarray, diff: Callable, n_iter: int = 40) -> np.ndarray:
    """Vectorised bisection for roots of ``diff`` bracketed by [lo, hi] (sign change).

    Brackets are a fraction of an sd wide, so 40 halvings locate a root to ~1e-12 sd; an error delta in
    a crossing changes the CDF difference there by O(delta^2) only (p - q vanishes at it).
    """
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        f_mid = diff(mid)
        left = (f_mid >= 0) == (f_lo >= 0)
        lo, f_lo = np.where(left, mid, lo), np.where(left, f_mid, f_lo)
        hi = np.where(left, hi, mid)
    return 0.5 * (lo + hi)


def _tv_rows(p: tuple, q: tuple) -> np.ndarray:
    """Total-variation distance per input between two conditional mixtures.

    ``p - q`` is evaluated on the quadrature grid; every sign change is refined by bisection to a
    crossing point r, and with ``D = F_p - F_q`` (mixture CDFs, closed form)
    ``TV = 1/2 sum over sign-constant intervals |D(r_{m+1}) - D(r_m)|`` (``D = 0`` at +-inf), exact
    up to crossings closer together than the grid spacing.
    """
    anchor, nodes, weights = _quadrature_grid(np.concatenate([p[1], q[1]], axis=1), np.concatenate([p[2], q[2]]))
    f = np.exp(_log_pdf(nodes, *p, anchor=anchor)) - np.exp(_log_pdf(nodes, *q, anchor=anchor))  # (n, m)
    s = f >= 0  # a node where p == q exactly counts as positive, so no crossing is missed
    bracket = s[:, :-1] != s[:, 1:]  # (n, m - 1)
    rows, cols = np.nonzero(bracket)
    d_at = np.zeros(bracket.shape)
    if rows.size:
        sub = lambda part: tuple(a[rows] if a.ndim == 2 else a for a in part)  # noqa: E731
        p_r, q_r = sub(p), sub(q)
        a = anchor[rows, cols][:, None]  # offsets below are from the bracket's left anchor
        diff = lambda y: (np.exp(_log_pdf(y[:, None], *p_r, anchor=a)) - np.exp(_log_pdf(y[:, None], *q_r, anchor=a)))[:, 0]  # noqa: E731
        hi = nodes[rows, cols + 1] + (anchor[rows, cols + 1] - anchor[rows, cols])
        root = _bisect_roots(nodes[rows, cols], hi, f[rows, cols], diff)
        d_at[rows, cols] = (_cdf(root[:, None], *p_r, anchor=a) - _cdf(root[:, None], *q_r, anchor=a))[:, 0]
    # forward-fill D between crossings, so that |diff| is non-zero only at crossings
    vals = np.concatenate([np.zeros((bracket.shape[0], 1)), d_at], axis=1)
    idx = np.where(np.concatenate([np.ones((bracket.shape[0], 1), bool), bracket], axis=1), np.arange(vals.shape[1]), 0)
    filled = np.take_along_axis(vals, np.maximum.accumulate(idx, axis=1), axis=1)
    seq = np.concatenate([filled, np.zeros((bracket.shape[0], 1))], axis=1)
    return np.clip(0.5 * np.abs(np.diff(seq, axis=1)).sum(axis=1), 0.0, 1.0)


def _inputs(est: Any, truth: Any, X: Any, n_mc: int, rng: Any, x_dist: str) -> np.ndarray:
    _check_params(est, "est")
    _check_params(truth, "truth")
    if est.dim != truth.dim:
        raise ValueError(f"est and truth must have the same input dimension; got est.dim={est.dim}, truth.dim={truth.dim}")
    if X is None:
        if isinstance(n_mc, bool) or not isinstance(n_mc, (int, np.integer)) or n_mc < 1:
            raise ValueError(f"n_mc must be a positive int; got {n_mc!r}")
        return sample_x(int(n_mc), truth.dim, x_dist, as_rng(0 if rng is None else rng))
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1 and truth.dim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[1] != truth.dim or X.shape[0] < 1:
        raise ValueError(f"X must have shape (n_samples, {truth.dim}); got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    return X


def _centred(p: tuple, q: tuple) -> tuple[tuple, tuple]:
    """Both conditional mixtures shifted by the mean of the truth's heaviest component, per input.

    The distances are translation invariant; working relative to a centre keeps the quadrature
    grid resolved when the means share a large offset (intercepts 1e17 + b): the difference of
    two close floats is exact (Sterbenz), while ``1e17 + 0.3`` is not.
    """
    centre = np.take_along_axis(q[1], np.argmax(q[0], axis=1)[:, None], axis=1)  # (n, 1)
    with np.errstate(invalid="ignore"):
        return (p[0], p[1] - centre, p[2]), (q[0], q[1] - centre, q[2])


def _shift_intercepts(est: MoEParams, truth: MoEParams) -> tuple[MoEParams, MoEParams]:
    """Subtract a common offset (the truth's mean intercept) from both models' expert intercepts.

    With linear experts and a gate that does not read the experts' outputs this shifts every
    conditional density in y by the same amount, which leaves the distances unchanged, and it keeps
    ``a x + b`` exact when the intercepts share a large offset (1e17 + b rounds b to a multiple of 16).
    """
    if est.expert != "linear" or truth.expert != "linear" or "competition" in (est.gate, truth.gate):
        return est, truth
    offset = float(np.mean(truth.expert_bias))
    if offset == 0.0:
        return est, truth
    return est.replace(expert_bias=est.expert_bias - offset), truth.replace(expert_bias=truth.expert_bias - offset)


def _expected_distance(rows_fn: Callable, est: MoEParams, truth: MoEParams, X: np.ndarray) -> float:
    est, truth = _shift_intercepts(est, truth)
    total = 0.0
    for start in range(0, X.shape[0], _CHUNK):
        block = X[start:start + _CHUNK]
        total += float(rows_fn(*_centred(_components(est, block), _components(truth, block))).sum())
    return total / X.shape[0]


def hellinger(
    est: MoEParams, truth: MoEParams, X: Any = None, n_mc: int = 1000, rng: Any = None, *, x_dist: str = "uniform"
) -> float:
    """Expected Hellinger distance ``E_X[h(p_est(. | X), p_truth(. | X))]``.

    ``h(p, q)^2 = 1/2 int (sqrt p - sqrt q)^2 dy`` (so ``0 <= h <= 1``), computed for each input by
    composite 8-point Gauss-Legendre quadrature in y on panels no wider than two component sds over
    every component's mean +- 10 sd (accurate to ~1e-11); the expectation is the plain average of
    ``h`` (not of ``h^2``) over the inputs.

    Parameters
    ----------
    est, truth : MoEParams
        Any two models on the same input dimension (gate families may differ).
    X : array of shape (n, d), optional
        Inputs to average over (a grid, or held-out data). Default: ``n_mc`` draws from ``x_dist``.
    n_mc : int, default 1000
        Number of Monte Carlo inputs when ``X`` is None.
    rng : numpy Generator, int seed or None
        Source of the Monte Carlo inputs. None (default) means seed 0, so that the distance is a
        deterministic function of the models (common random numbers across replicates).
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
        Input distribution when ``X`` is None (see :func:`mixsim.model.sample_x`).

    Returns
    -------
    float in [0, 1]
    """
    return _expected_distance(_hellinger_rows, est, truth, _inputs(est, truth, X, n_mc, rng, x_dist))


def total_variation(
    est: MoEParams, truth: MoEParams, X: Any = None, n_mc: int = 1000, rng: Any = None, *, x_dist: str = "uniform"
) -> float:
    """Expected total-variation distance ``E_X[1/2 int |p_est(y | X) - p_truth(y | X)| dy]``.

    For each input the crossings of the two conditional densities are located (sign changes on the
    quadrature grid of :func:`hellinger`, refined by bisection) and the integral is assembled from
    the mixtures' closed-form CDFs between crossings, so it is exact up to rounding (~1e-12)
    unless two crossings are closer than the grid spacing. Parameters and defaults as in
    :func:`hellinger`.

    Returns
    -------
    float in [0, 1]
    """
    return _expected_distance(_tv_rows, est, truth, _inputs(est, truth, X, n_mc, rng, x_dist))
