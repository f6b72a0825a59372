"""Matched truths: the same experts under the other gate family, and the distance between two gates.

A claim that one gate needs fewer samples than another is cleanest "under the same scenario": the
two truths share their experts ``(a, b, sigma2)`` and differ only in the gate, chosen as close as
the family allows (THEORY.md section 9). :func:`matched_truth` builds that truth and
:func:`gate_distance` measures how close the two gates are. With ``sampling="crn"``
(:func:`mixsim.sample`) the two data sets of one seed then differ only where the drawn component
differs.

Both functions average over inputs ``x`` drawn from the study's input distribution (``x_dist``,
as :func:`mixsim.sample` draws them) by Monte Carlo on a fixed seed, so the same call gives the
same numbers. The distance is the expected Kullback-Leibler divergence of the gate weight vectors,

    ``D(a, b) = E_x KL(pi_a(x) || pi_b(x)) = E_x sum_i pi_a,i(x) log(pi_a,i(x) / pi_b,i(x))``,

and the matched truth minimises ``D(truth, matched)`` over the target family's gate parameters.
Both directions are a multinomial logistic regression on the soft targets ``pi_truth(x)``, convex in
the parameters fitted, and solved by a damped Newton method (deterministic):

* competition -> softmax: slopes and intercepts ``(beta1, beta0)``, logits affine in x. A competition
  gate with ``phi = "identity"`` and linear experts *is* a softmax gate (logits ``a_i . x + b_i +
  beta0_i``), which the match recovers exactly (up to the common shift); otherwise the match is
  the closest softmax gate in this divergence.
* softmax -> competition: only the intercepts ``beta0`` are free (the experts fix the rest of the
  competition gate), so the match is usually loose. Check :func:`gate_distance`, or pass
  ``max_distance`` to refuse a loose match.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .checks import check_choice, check_int, check_real
from .gates import PHI, check_phi
from .model import MoEParams, X_DISTS, float_array, log_gate_and_mean, sample_x

__all__ = ["MATCH_GATES", "N_MC_MATCH", "gate_distance", "matched_truth"]

#: Gate families :func:`matched_truth` maps between (dense gates only).
MATCH_GATES = ("softmax", "competition")
#: Monte Carlo inputs of :func:`gate_distance` and :func:`matched_truth`: the KL's Monte Carlo error
#: is far below the distances worth telling apart (1e-4 and up) at this size, and a Newton step stays cheap.
N_MC_MATCH = 20000


# ---------------------------------------------------------------------------------------------
# inputs and the divergence
# ---------------------------------------------------------------------------------------------

def _inputs(X: Any, d: int, n_mc: int, x_dist: str, rng: Any) -> np.ndarray:
    """The inputs to average over: ``X`` as given (n, d), else ``n_mc`` draws from ``x_dist``."""
    if X is None:
        check_choice(x_dist, "x_dist", X_DISTS)
        return sample_x(check_int(n_mc, "n_mc"), d, x_dist, rng)
    X = float_array(X, "X")
    X = X[:, None] if X.ndim == 1 else X
    if X.ndim != 2 or X.shape[1] != d or X.shape[0] < 1 or not np.all(np.isfinite(X)):
        raise ValueError(f"X must be a finite array of shape (n_samples >= 1, {d}); got shape {X.shape}")
    return X


def _kl_rows(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """``KL(p || q)`` per row from log weights (n, k): 0 where p is 0, +inf where q is 0 and p is not;
    rounding below 0 (equal weights) is clipped to 0."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return np.maximum(terms.sum(axis=1), 0.0)


def gate_distance(a: MoEParams, b: MoEParams, X: Any = None, *, n_mc: int = N_MC_MATCH,
                  x_dist: str = "uniform", rng: Any = 0) -> float:
    """Expected KL divergence ``E_x KL(pi_a(x) || pi_b(x))`` between the gate weights of two truths.

    The direction is **from a to b**: the weights of ``a`` weigh the log ratio, as in
    :func:`matched_truth`, which minimises ``gate_distance(truth, matched)``. It is 0 when the two
    gates give the same weights at every input, and does not change under a common shift of a
    softmax gate's parameters nor under any change of the experts' parameters of ``b`` that leaves
    its gate weights unchanged. It is +inf when ``b`` gives weight 0 (a top-K gate) where ``a`` does not.

    Parameters
    ----------
    a, b : MoEParams
        Two truths with the same number of experts ``k`` and input dimension ``d``, any gates.
        Expert ``i`` of ``a`` is compared with expert ``i`` of ``b`` (no relabelling).
    X : array of shape (n, d), optional
        Inputs to average over. Default: ``n_mc`` draws from ``x_dist``.
    n_mc : int, default N_MC_MATCH (20000)
        Monte Carlo inputs when ``X`` is None.
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
        The input distribution (:data:`mixsim.model.X_DISTS`), as :func:`mixsim.sample` draws it.
    rng : numpy Generator, SeedSequence, int seed or None, default 0
        Randomness of the Monte Carlo inputs (a fixed seed: the same call gives the same number).

    Returns
    -------
    float
        The expected divergence, >= 0, in nats.
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, MoEParams):
            raise TypeError(f"{name} must be a MoEParams; got {type(value).__name__}")
    if (a.n_experts, a.dim) != (b.n_experts, b.dim):
        raise ValueError(f"a and b must have the same number of experts and input dimension; got (k, d) = "
                         f"{(a.n_experts, a.dim)} and {(b.n_experts, b.dim)}")
    X = _inputs(X, a.dim, n_mc, x_dist, rng)
    return float(np.mean(_kl_rows(log_gate_and_mean(a, X)[0], log_gate_and_mean(b, X)[0])))


# ---------------------------------------------------------------------------------------------
# multinomial logistic regression on soft targets (the match)
# ---------------------------------------------------------------------------------------------

def _cross_entropy(W: np.ndarray, F: np.ndarray, offset: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy ``-mean_x sum_i t_i log softmax_i(F W^T + offset)`` and the weights (n, k)."""
    logits = F @ W.T + offset  # (n, k)
    log_q = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return float(-np.mean(np.sum(targets * log_q, axis=1))), np.exp(log_q)


def _soft_logistic(targets: np.ndarray, F: np.ndarray, offset: np.ndarray, max_iter: int = 100,
                   tol: float = 1e-18) -> tuple[np.ndarray, bool]:
    """The coefficients W (k, p), last row 0, minimising the mean cross-entropy of ``softmax(F W^T + offset)``
    against ``targets`` (n, k); and whether Newton's decrement fell below ``tol`` (per sample, in nats).

    The objective is convex in W (strictly, once the last row is fixed, when F has full column
    rank). Each step solves the Newton system by least squares and backtracks until the objective
    decreases (Armijo), so it never climbs.
    """
    n, p = F.shape
    k = targets.shape[1]
    W = np.zeros((k, p))
    value, q = _cross_entropy(W, F, offset, targets)
    for _ in range(max_iter):
        grad = ((q - targets)[:, :-1].T @ F / n).reshape(-1)  # ((k-1) p,)
        G = q[:, :-1, None] * F[:, None, :]  # (n, k-1, p)
        H = -np.einsum("nia,njb->iajb", G, G) / n
        for i in range(k - 1):
            H[i, :, i, :] += np.einsum("n,na,nb->ab", q[:, i], F, F) / n
        H = H.reshape((k - 1) * p, (k - 1) * p)
        step = -np.linalg.lstsq(H, grad, rcond=None)[0]
        decrement = float(-grad @ step)  # Newton decrement squared, >= 0 for a convex objective
        if decrement / 2.0 < tol:
            return W, True
        t = 1.0
        while t > 1e-10:
            trial = W.copy()
            trial[:-1] += t * step.reshape(k - 1, p)
            new_value, new_q = _cross_entropy(trial, F, offset, targets)
            if new_value <= value - 0.25 * t * decrement:
                break
            t /= 2.0
        else:
            return W, decrement / 2.0 < 1e-9  # no descent left in float64: converged if nearly stationary
        W, value, q = trial, new_value, new_q
    return W, False


def matched_truth(truth: MoEParams, gate: str, X: Any = None, *, n_mc: int = N_MC_MATCH, x_dist: str = "uniform",
                  rng: Any = 0, phi: str | None = None, max_distance: float | None = None) -> MoEParams:
    """The truth of the other gate family with the same experts, closest in gate weights.

    The returned truth has the experts (``expert``, ``expert_weight``, ``expert_bias``) and
    ``variance`` of ``truth``, a dense gate of family ``gate``, and the gate parameters minimising
    ``gate_distance(truth, matched) = E_x KL(pi_truth(x) || pi_matched(x))`` over the Monte Carlo
    inputs (see the module docstring for both directions). The last expert's gate parameters are 0
    (the convention of :func:`mixsim.random_truth`).

    Parameters
    ----------
    truth : MoEParams
        A dense softmax or competition truth (a top-K gate's zero weights have no closest dense
        gate: the parameters would run off to infinity).
    gate : {"softmax", "competition"}
        The family of the matched truth; not ``truth.gate``.
    X : array of shape (n, d), optional
        Inputs to average over. Default: ``n_mc`` draws from ``x_dist``.
    n_mc : int, default N_MC_MATCH (20000)
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
        The study's input distribution, as :func:`mixsim.sample` draws it.
    rng : numpy Generator, SeedSequence, int seed or None, default 0
        Randomness of the Monte Carlo inputs.
    phi : {"softplus", "identity"}, optional
        Competition transform of a competition match; default ``truth.phi``.
    max_distance : float, optional
        Refuse (ValueError) a match whose distance on the inputs exceeds it.

    Returns
    -------
    MoEParams

    Raises
    ------
    ValueError
        Unknown ``gate``, ``gate == truth.gate``, a truth of another family or with a top-K gate,
        or a match farther than ``max_distance``. A RuntimeWarning says when Newton's method stopped short of its
        tolerance (weights near 0 or 1 push the optimum towards infinite parameters).
    """
    if not isinstance(truth, MoEParams):
        raise TypeError(f"truth must be a MoEParams; got {type(truth).__name__}")
    check_choice(gate, "gate", MATCH_GATES)
    if truth.gate not in MATCH_GATES:
        raise ValueError(f"truth: matched_truth maps between {MATCH_GATES}; got a {truth.gate!r} truth")
    if gate == truth.gate:
        raise ValueError(f"gate: the truth already has gate {gate!r}; pass the other family")
    if truth.top_k is not None:  # its zero weights would push the closest dense gate's parameters to infinity
        raise ValueError(f"truth: matched_truth needs a dense gate (top_k=None); got top_k={truth.top_k}")
    phi = check_phi(truth.phi if phi is None else phi)
    max_distance = None if max_distance is None else check_real(max_distance, "max_distance", 0.0)
    X = _inputs(X, truth.dim, n_mc, x_dist, rng)
    log_target, mean = log_gate_and_mean(truth, X)
    targets = np.exp(log_target)
    if gate == "softmax":  # logits beta1 . x + beta0
        F, offset = np.concatenate([X, np.ones((len(X), 1))], axis=1), np.zeros_like(targets)
    else:  # logits phi(h(x)) + beta0: only the intercepts are free
        F, offset = np.ones((len(X), 1)), PHI[phi](torch.from_numpy(mean)).numpy()
    W, converged = _soft_logistic(targets, F, offset)
    if not converged:
        warnings.warn(f"matched_truth: Newton's method stopped short of its tolerance matching a {truth.gate} gate "
                      f"by a {gate} gate (gate weights near 0 or 1?); the match may be loose: check gate_distance",
                      RuntimeWarning, stacklevel=2)
    common = dict(top_k=None, expert=truth.expert, expert_weight=truth.expert_weight, expert_bias=truth.expert_bias,
                  variance=truth.variance, phi=phi)
    if gate == "softmax":
        matched = MoEParams(gate="softmax", gate_weight=W[:, :-1], gate_bias=W[:, -1], **common)
    else:
        matched = MoEParams(gate="competition", gate_weight=None, gate_bias=W[:, 0], **common)
    if max_distance is not None:
        distance = gate_distance(truth, matched, X)
        if distance > max_distance:
            raise ValueError(f"max_distance: the closest {gate} gate is {distance:.3g} nats from the truth's "
                             f"(expected KL), above max_distance = {max_distance:g}")
    return matched
