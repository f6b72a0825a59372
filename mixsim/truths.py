"""True models: named presets and random truths drawn from a documented prior.

:func:`preset` gives the reference truths by name (:func:`list_presets` lists them);
:func:`random_truth` draws many truths per gate (issue 12), keeping only well-separated ones
whose experts are all visible in the data. (:mod:`mixsim.model` does not re-export them: import from here or from :mod:`mixsim`.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .checks import check_int, check_real
from .experts import check_expert
from .gates import check_phi
from .model import X_DISTS, MoEParams, as_rng, atom_vectors, gate_and_mean, sample_x

__all__ = ["preset", "list_presets", "random_truth", "RANDOM_TRUTH_GATES", "TruthPrior", "TRUTH_PRIORS", "truth_margins"]

# ---------------------------------------------------------------------------------------------
# preset truths
# ---------------------------------------------------------------------------------------------

_PRESETS: dict[str, tuple[str, Callable[[], MoEParams]]] = {}


def _preset(name: str, doc: str):
    def register(fn: Callable[[], MoEParams]) -> Callable[[], MoEParams]:
        _PRESETS[name] = (doc, fn)
        return fn
    return register


@_preset("softmax_k2", "reference truth of 'Demystifying softmax gating' (THEORY.md section 5), d = 1")
def _softmax_k2() -> MoEParams:
    return MoEParams(
        gate="softmax", top_k=None, gate_weight=[[25.0], [0.0]], gate_bias=[-8.0, 0.0], expert="linear",
        expert_weight=[[-20.0], [20.0]], expert_bias=[15.0, -5.0], variance=[0.3**2, 0.4**2],
    )


@_preset("competition_k2", "competition gate, d = 1, two linear experts; gate weights 0.14..0.84 on [0, 1]")
def _competition_k2() -> MoEParams:
    # The truth probed in THEORY.md section 7. With beta0 = 0 the gate is softmax(softplus(2 - 3x),
    # softplus(2.5x - 0.5)): expert 1 gets 0.84 at x = 0 and 0.14 at x = 1, so the gate varies over
    # the whole input range (neither expert is negligible anywhere), the experts cross inside [0, 1]
    # (x = 0.45) and their noise levels differ, as in the softmax reference truth.
    return MoEParams(
        gate="competition", top_k=None, gate_weight=None, gate_bias=[0.0, 0.0], expert="linear",
        expert_weight=[[-3.0], [2.5]], expert_bias=[2.0, -0.5], variance=[0.3**2, 0.4**2],
    )


@_preset("softmax_k2_d2", "softmax gate, d = 2, two linear experts; gate logit from -5 to 5 on [0, 1]^2")
def _softmax_k2_d2() -> MoEParams:
    return MoEParams(
        gate="softmax", top_k=None, gate_weight=[[6.0, -4.0], [0.0, 0.0]], gate_bias=[-1.0, 0.0], expert="linear",
        expert_weight=[[-4.0, 3.0], [5.0, -2.0]], expert_bias=[2.0, -1.0], variance=[0.3**2, 0.4**2],
    )


@_preset("competition_k2_d2", "competition gate, d = 2, two linear experts")
def _competition_k2_d2() -> MoEParams:
    return MoEParams(
        gate="competition", top_k=None, gate_weight=None, gate_bias=[0.0, 0.0], expert="linear",
        expert_weight=[[-3.0, 1.5], [2.5, -1.0]], expert_bias=[2.0, -0.5], variance=[0.3**2, 0.4**2],
    )


@_preset("softmax_k2_tanh", "softmax gate, d = 1, two tanh experts tanh(a x + b)")
def _softmax_k2_tanh() -> MoEParams:
    # Expert means run from +-0.96 to -+0.96 over [0, 1]; noise sd 0.1 and 0.15 keeps them apart.
    return MoEParams(
        gate="softmax", top_k=None, gate_weight=[[8.0], [0.0]], gate_bias=[-4.0, 0.0], expert="tanh",
        expert_weight=[[-4.0], [4.0]], expert_bias=[2.0, -2.0], variance=[0.1**2, 0.15**2],
    )


@_preset("competition_k2_tanh", "competition gate, d = 1, two tanh experts")
def _competition_k2_tanh() -> MoEParams:
    return MoEParams(
        gate="competition", top_k=None, gate_weight=None, gate_bias=[0.0, 0.0], expert="tanh",
        expert_weight=[[-4.0], [4.0]], expert_bias=[2.0, -2.0], variance=[0.1**2, 0.15**2],
    )


def preset(name: str) -> MoEParams:
    """A named true model; :func:`list_presets` lists them with a line each."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(_PRESETS)}")
    return _PRESETS[name][1]()


def list_presets() -> dict[str, str]:
    """Preset names mapped to a one-line description."""
    return {name: doc for name, (doc, _) in _PRESETS.items()}


# ---------------------------------------------------------------------------------------------
# random truths: many truths per gate instead of one (issue 12)
# ---------------------------------------------------------------------------------------------

RANDOM_TRUTH_GATES = ("softmax", "competition")


@dataclass(frozen=True)
class TruthPrior:
    """The prior :func:`random_truth` draws from (every scale a modelling choice, tag [C]).

    Expert i: slope ``a_i ~ N(0, expert_slope_scale^2 I_d)``, intercept
    ``b_i ~ N(0, expert_intercept_scale^2)``, noise sd ``sigma_i ~ U(noise_sd)`` (variance
    ``sigma_i^2``). Softmax gate: slope ``beta1_i ~ N(0, gate_slope_scale^2 I_d)`` and intercept
    ``beta0_i = -beta1_i . c_i + N(0, gate_bias_scale^2)`` with ``c_i`` drawn from the input
    distribution, so that expert i's logit crosses zero near an input point instead of outside the
    data. Competition gate: ``beta0_i ~ N(0, gate_bias_scale^2)``. Finally the last expert's gate
    parameters are subtracted from every expert's (the model is unchanged; the last gate becomes 0,
    as in the authors' code).
    """

    expert_slope_scale: float = 3.0
    expert_intercept_scale: float = 1.0
    noise_sd: tuple[float, float] = (0.2, 0.5)
    gate_slope_scale: float = 6.0
    gate_bias_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("expert_slope_scale", "expert_intercept_scale", "gate_slope_scale", "gate_bias_scale"):
            check_real(getattr(self, name), f"TruthPrior.{name}", 0.0)  # validated, kept as given
        pair = self.noise_sd
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        if not ok or not 0 < pair[0] <= pair[1]:
            raise ValueError(f"TruthPrior.noise_sd must be a pair (low, high) with 0 < low <= high; got {pair!r}")
        object.__setattr__(self, "noise_sd", (float(pair[0]), float(pair[1])))


#: Default prior per expert family: tanh experts have means in (-1, 1), so smaller noise keeps
#: them as distinguishable as linear experts with sd 0.2-0.5.
TRUTH_PRIORS: dict[str, TruthPrior] = {
    "linear": TruthPrior(),
    "tanh": TruthPrior(noise_sd=(0.08, 0.2)),
}


def truth_margins(params: MoEParams, X: Any, floor: float) -> tuple[float, np.ndarray]:
    """How well separated and how visible the experts of a model are.

    Parameters
    ----------
    params : MoEParams
    X : array of shape (n, d)
        Inputs drawn from the input distribution.
    floor : float
        Gate-weight level.

    Returns
    -------
    min_distance : float
        Smallest Euclidean distance between two atom vectors (:func:`atom_vectors`); inf when k = 1.
    visible_mass : array of shape (k,)
        For each expert, the share of the inputs ``X`` where its gate weight is >= ``floor``.
    """
    vectors = atom_vectors(params)
    k = vectors.shape[0]
    dist = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    min_distance = float(np.min(dist[~np.eye(k, dtype=bool)])) if k > 1 else float("inf")
    prob, _ = gate_and_mean(params, np.asarray(X, dtype=np.float64))
    return min_distance, np.mean(prob >= floor, axis=0)


def _draw_truth(gate: str, k: int, d: int, expert: str, prior: TruthPrior, x_dist: str, phi: str,
                rng: np.random.Generator) -> MoEParams:
    a = prior.expert_slope_scale * rng.standard_normal((k, d))
    b = prior.expert_intercept_scale * rng.standard_normal(k)
    sd = rng.uniform(prior.noise_sd[0], prior.noise_sd[1], size=k)
    if gate == "softmax":
        beta1 = prior.gate_slope_scale * rng.standard_normal((k, d))
        centres = X_DISTS["uniform" if x_dist == "grid" else x_dist](k, d, rng)
        beta0 = -np.sum(beta1 * centres, axis=1) + prior.gate_bias_scale * rng.standard_normal(k)
        beta1 = beta1 - beta1[-1]
    else:
        beta1, beta0 = None, prior.gate_bias_scale * rng.standard_normal(k)
    return MoEParams(gate=gate, top_k=None, gate_weight=beta1, gate_bias=beta0 - beta0[-1], expert=expert,
                     expert_weight=a, expert_bias=b, variance=sd**2, phi=phi)


def random_truth(
    gate: str,
    k: int,
    d: int,
    rng: Any,
    *,
    expert: str = "linear",
    delta: float = 1.0,
    floor: float = 0.2,
    mass: float = 0.1,
    x_dist: str = "uniform",
    prior: TruthPrior | None = None,
    phi: str = "softplus",
    n_check: int = 4000,
    max_tries: int = 1000,
) -> MoEParams:
    """Draw a true model from a documented prior, keeping only well-separated truths with visible experts.

    Candidates are drawn from ``prior`` (:class:`TruthPrior`) until one meets both conditions:

    * **separation**: every two atoms ``(beta1, a, b, sigma2)`` (``(a, b, sigma2)`` for
      competition) are at least ``delta`` apart in Euclidean distance, the metric of the Voronoi
      cells (:func:`atom_vectors`);
    * **visibility**: every expert's gate weight is >= ``floor`` on a set of inputs of probability
      >= ``mass``, checked on ``n_check`` inputs drawn from ``x_dist``, so that no expert is
      invisible in the data.

    Parameters
    ----------
    gate : {"softmax", "competition"}
        Gate of the truth (dense; competition with softplus ``phi`` and intercepts ``beta0``).
    k : int
        Number of experts, >= 1.
    d : int
        Input dimension, >= 1.
    rng : numpy Generator, SeedSequence or int seed
        Randomness (required: same seed, same truth). None draws fresh entropy.
    expert : {"linear", "tanh"}, default "linear"
        Expert family (tanh for the control study).
    delta : float, default 1.0
        Minimum distance between atoms, >= 0.
    floor : float, default 0.2
        Gate-weight level of the visibility condition, in [0, 1).
    mass : float, default 0.1
        Minimum share of inputs on which each expert's weight reaches ``floor``, in (0, 1].
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
        Input distribution of the study (:data:`X_DISTS`).
    prior : TruthPrior, optional
        Default :data:`TRUTH_PRIORS` ``[expert]``.
    phi : {"softplus", "identity"}, default "softplus"
        Competition transform.
    n_check : int, default 4000
        Inputs drawn (once, before the candidates) for the visibility check.
    max_tries : int, default 1000
        Candidates drawn before giving up.

    Returns
    -------
    MoEParams
        Like :func:`preset` returns; the last expert's gate parameters are 0.

    Raises
    ------
    ValueError
        Naming the argument for bad input, or naming ``delta``/``floor``/``mass`` when no candidate
        in ``max_tries`` met the conditions.
    """
    if not isinstance(gate, str):
        raise TypeError(f"gate must be a string; got {type(gate).__name__}")
    if gate not in RANDOM_TRUTH_GATES:
        raise ValueError(f"gate must be one of {RANDOM_TRUTH_GATES}; got {gate!r}")
    k, d = check_int(k, "k"), check_int(d, "d")
    expert = check_expert(expert)
    check_phi(phi)
    delta = check_real(delta, "delta", 0.0)
    floor = check_real(floor, "floor", 0.0)
    if floor >= 1.0:
        raise ValueError(f"floor must be in [0, 1); got {floor!r}")
    mass = check_real(mass, "mass", 0.0, strict=True)
    if mass > 1.0:
        raise ValueError(f"mass must be in (0, 1]; got {mass!r}")
    if x_dist not in X_DISTS:
        raise ValueError(f"x_dist must be one of {tuple(X_DISTS)}; got {x_dist!r}")
    if x_dist == "grid" and d != 1:
        raise ValueError(f"x_dist='grid' is defined for d = 1 only; got d = {d}")
    prior = TRUTH_PRIORS[expert] if prior is None else prior
    if not isinstance(prior, TruthPrior):
        raise TypeError(f"prior must be a TruthPrior or None; got {type(prior).__name__}")
    n_check, max_tries = check_int(n_check, "n_check"), check_int(max_tries, "max_tries")
    rng = as_rng(rng)
    X = sample_x(n_check, d, x_dist, rng)
    best_distance, best_visible = -math.inf, -math.inf
    for _ in range(max_tries):
        truth = _draw_truth(gate, k, d, expert, prior, x_dist, phi, rng)
        distance, visible = truth_margins(truth, X, floor)
        if distance >= delta and np.all(visible >= mass):
            return truth
        best_distance, best_visible = max(best_distance, distance), max(best_visible, float(visible.min()))
    raise ValueError(
        f"no {gate} truth with k = {k}, d = {d}, {expert} experts met delta = {delta:g}, floor = {floor:g}, "
        f"mass = {mass:g} in max_tries = {max_tries} draws (largest smallest distance {best_distance:.3g}, largest "
        f"smallest visible mass {best_visible:.3g}); lower delta, floor or mass, or widen the prior"
    )
