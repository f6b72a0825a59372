"""Atoms of a mixing measure, the canonical gate shift and the alignment of a fit to the truth
(THEORY.md section 3); the parameter groups and D2 exponents every loss shares."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from ..model import MoEParams


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


def group_exponents(exponent: float, slope: bool = True, weight: bool = False) -> dict[str, float]:
    """``{group: exponent}`` for the parameter groups (without ``gate_slope`` unless ``slope``;
    with ``weight`` when ``weight``): the one-exponent tables of the losses and of theory."""
    return {g: float(exponent) for g in GROUPS if (slope or g != "gate_slope") and (weight or g != "weight")}


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
    ("softmax", "tanh"): {2: group_exponents(2), 3: group_exponents(2)},
    ("sigmoid", "linear"): {2: _rbar(4), 3: _rbar(6)},
    ("sigmoid", "tanh"): {2: group_exponents(2), 3: group_exponents(2)},
    ("competition", "linear"): {2: group_exponents(2, slope=False), 3: group_exponents(2, slope=False)},
    ("competition", "tanh"): {2: group_exponents(2, slope=False), 3: group_exponents(2, slope=False)},
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
