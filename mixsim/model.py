"""Gaussian mixture-of-experts models: parameters (a mixing measure), log-density, sampling.

``p(y | x) = sum_i pi_i(x) N(y | h_i(x), sigma2_i)`` with the gate ``pi`` from :mod:`mixsim.gates`
and the expert means ``h`` from :mod:`mixsim.experts`. Named and random true models live in
:mod:`mixsim.truths` (import them from there, or from :mod:`mixsim`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from .checks import check_int
from .experts import EXPERTS, check_expert, expert_mean
from .gates import canonical_gate, check_phi, competition_logits, linear_logits, log_gate_weights, normalise_scores

__all__ = [
    "MoEParams",
    "free_param_sizes",
    "n_free_params",
    "log_gate_and_mean",
    "LOG_2PI",
    "X_DISTS",
    "SAMPLINGS",
    "log_terms",
    "log_terms_local",
    "log_density",
    "log_likelihood",
    "sample",
    "sample_x",
    "gate_and_mean",
    "atom_vectors",
    "as_rng",
    "check_data",
    "float_array",
]

#: log(2 pi), the constant of every Gaussian log-density.
LOG_2PI = math.log(2.0 * math.pi)


def _array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {arr}")
    arr.setflags(write=False)
    return arr


def free_param_sizes(gate: str, k: int, d: int, gate_bias: bool = True) -> dict[str, int]:
    """Number of free (identifiable) parameters in each field of a k-expert model.

    Softmax-type gates are identified up to a common shift, so the softmax gate loses one row of
    slopes and one intercept and the competition gate one intercept (the last expert's are 0).
    ``gate_bias=False`` is a competition gate without intercepts.
    """
    rows = {"softmax": k - 1, "sigmoid": k, "competition": 0}[gate]
    bias = k if gate == "sigmoid" else (k - 1 if gate_bias else 0)
    return {"gate_weight": rows * d, "gate_bias": bias, "expert_weight": k * d, "expert_bias": k, "variance": k}


def n_free_params(gate: str, top_k: int | None, expert: str, k: int, d: int, gate_bias: bool = True) -> int:
    """Number of free (identifiable) parameters of a k-expert model with d inputs.

    What a fit needs more samples than. Pure arithmetic on the model's description (no fitter):
    ``gate`` may be the alias ``"topk"`` (with ``top_k``); ``gate_bias=False`` is a competition
    gate without intercepts. The count is the sum of :func:`free_param_sizes`.

    >>> n_free_params("softmax", None, "linear", 2, 1)
    8
    """
    k, d = check_int(k, "k"), check_int(d, "d")
    gate, _ = canonical_gate(gate, top_k, k)
    check_expert(expert)
    return sum(free_param_sizes(gate, k, d, gate_bias).values())


@dataclass(frozen=True, eq=False)
class MoEParams:
    """Immutable parameters of a Gaussian mixture of experts (a mixing measure with k atoms).

    Parameters
    ----------
    gate : {"softmax", "competition", "sigmoid"} (``"topk"`` is accepted with ``top_k``)
    top_k : int or None
        Experts kept per input by the gate; None (or k) means dense.
    gate_weight : array of shape (k, d) or None
        Gate slopes beta1; None for the competition gate, which has no slope of its own.
    gate_bias : array of shape (k,) or None
        Gate intercepts beta0; None allowed for competition only (a model without beta0).
    expert : {"linear", "tanh"}
    expert_weight : array of shape (k, d)
        Expert slopes a.
    expert_bias : array of shape (k,)
        Expert intercepts b.
    variance : array of shape (k,)
        Expert noise variances sigma2, > 0.
    phi : {"softplus", "identity"}, default "softplus"
        Competition transform (ignored by the other gates).
    """

    gate: str
    top_k: int | None
    gate_weight: np.ndarray | None
    gate_bias: np.ndarray | None
    expert: str
    expert_weight: np.ndarray
    expert_bias: np.ndarray
    variance: np.ndarray
    phi: str = field(default="softplus")

    def __post_init__(self) -> None:
        ew = np.asarray(self.expert_weight, dtype=np.float64)
        if ew.ndim != 2 or ew.shape[0] < 1 or ew.shape[1] < 1:
            raise ValueError(f"expert_weight must have shape (k, d) with k, d >= 1; got {ew.shape}")
        k, d = ew.shape
        gate, top_k = canonical_gate(self.gate, self.top_k, k)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("gate", gate)
        set_("top_k", top_k)
        set_("expert", check_expert(self.expert))
        set_("expert_weight", _array(ew, "expert_weight", (k, d)))
        set_("expert_bias", _array(self.expert_bias, "expert_bias", (k,)))
        set_("variance", _array(self.variance, "variance", (k,)))
        if np.any(self.variance <= 0):
            raise ValueError(f"variance must be > 0; got {self.variance}")
        if gate == "competition":
            if self.gate_weight is not None:
                raise ValueError("the competition gate has no slope: gate_weight must be None")
            check_phi(self.phi)
        else:
            if self.gate_weight is None or self.gate_bias is None:
                raise ValueError(f"gate {gate!r} needs gate_weight (k, d) and gate_bias (k,)")
            set_("gate_weight", _array(self.gate_weight, "gate_weight", (k, d)))
        if self.gate_bias is not None:
            set_("gate_bias", _array(self.gate_bias, "gate_bias", (k,)))

    @property
    def n_experts(self) -> int:
        """Number of experts k."""
        return self.expert_weight.shape[0]

    @property
    def dim(self) -> int:
        """Input dimension d."""
        return self.expert_weight.shape[1]

    @property
    def n_free_params(self) -> int:
        """Identifiable parameter count (softmax-type gates lose one row to the common shift)."""
        return sum(free_param_sizes(self.gate, self.n_experts, self.dim, self.gate_bias is not None).values())

    def tensors(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> dict[str, torch.Tensor | None]:
        """The numeric fields as torch tensors (None stays None)."""
        conv = lambda a: None if a is None else torch.tensor(np.array(a), dtype=dtype, device=device)  # noqa: E731
        return {n: conv(getattr(self, n)) for n in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")}

    def replace(self, **changes: Any) -> "MoEParams":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MoEParams):
            return NotImplemented
        same = lambda a, b: (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))  # noqa: E731
        return (self.gate, self.top_k, self.expert, self.phi) == (other.gate, other.top_k, other.expert, other.phi) and all(
            same(getattr(self, n), getattr(other, n))
            for n in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fmt = lambda a: None if a is None else np.array2string(np.asarray(a), precision=4, separator=", ")  # noqa: E731
        return (
            f"MoEParams(gate={self.gate!r}, top_k={self.top_k}, expert={self.expert!r}, k={self.n_experts}, d={self.dim},\n"
            f"  gate_weight={fmt(self.gate_weight)}, gate_bias={fmt(self.gate_bias)},\n"
            f"  expert_weight={fmt(self.expert_weight)}, expert_bias={fmt(self.expert_bias)},\n"
            f"  variance={fmt(self.variance)})"
        )


# ---------------------------------------------------------------------------------------------
# log-density (torch, batched: every tensor may carry leading batch dimensions)
# ---------------------------------------------------------------------------------------------

def log_terms(
    gate: str,
    expert: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gate_weight: torch.Tensor | None,
    gate_bias: torch.Tensor | None,
    expert_weight: torch.Tensor,
    expert_bias: torch.Tensor,
    variance: torch.Tensor,
    top_k: int | None = None,
    phi: str = "softplus",
) -> torch.Tensor:
    """Joint log terms ``log pi_i(x) + log N(y | h_i(x), sigma2_i)`` of shape (..., n, k).

    ``x`` is (..., n, d), ``y`` is (..., n); parameter shapes as in :class:`MoEParams` with the
    same leading dimensions. ``logsumexp`` over the last axis gives the log-density; ``softmax``
    gives the posterior responsibilities.
    """
    expert_pre = linear_logits(x, expert_weight, expert_bias)  # (..., n, k)
    gate_pre = None if gate_weight is None else linear_logits(x, gate_weight, gate_bias)
    log_var = torch.log(variance).unsqueeze(-2)  # (..., 1, k)
    comp_bias = gate_bias.unsqueeze(-2) if (gate == "competition" and gate_bias is not None) else None
    return log_terms_local(gate, expert, y, gate_pre, expert_pre, log_var, comp_bias, top_k=top_k, phi=phi)


def log_terms_local(
    gate: str,
    expert: str,
    y: torch.Tensor,
    gate_pre: torch.Tensor | None,
    expert_pre: torch.Tensor,
    log_var: torch.Tensor,
    comp_bias: torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    phi: str = "softplus",
) -> torch.Tensor:
    """:func:`log_terms` from the per-sample quantities every parameter acts through.

    ``gate_pre`` (..., n, k) are the gate logits (None for competition), ``expert_pre`` (..., n, k)
    the experts' pre-activations ``a . x + b``, ``log_var`` (..., 1 or n, k) the log-variances and
    ``comp_bias`` (..., 1 or n, k) the competition intercepts. The fitter differentiates twice with
    respect to these few local quantities instead of the parameters (see :mod:`mixsim.fitting`).
    """
    mean = EXPERTS[expert](expert_pre)
    if gate == "competition":
        scores = competition_logits(mean, None, phi)
        if comp_bias is not None:
            scores = scores + comp_bias
    else:
        scores = gate_pre
    log_gate = normalise_scores(gate, scores, top_k)
    log_normal = -0.5 * (LOG_2PI + log_var + (y.unsqueeze(-1) - mean) ** 2 * torch.exp(-log_var))
    return log_gate + log_normal


def log_density(params: MoEParams, X: Any, y: Any) -> np.ndarray:
    """Per-sample log-density ``log p(y_i | x_i)`` of shape (n,), float64."""
    Xt, yt = check_data(X, y, dim=params.dim)
    terms = log_terms(params.gate, params.expert, Xt, yt, top_k=params.top_k, phi=params.phi, **params.tensors())
    return torch.logsumexp(terms, dim=-1).numpy()


def log_likelihood(params: MoEParams, X: Any, y: Any) -> float:
    """Total log-likelihood ``sum_i log p(y_i | x_i)`` (a float)."""
    return float(log_density(params, X, y).sum())


def float_array(value: Any, name: str) -> np.ndarray:
    """A writable float64 array (pandas and read-only inputs are copied; torch warns on read-only
    arrays); an error naming ``name`` for sparse, complex or non-numeric values."""
    if hasattr(value, "tocsr"):  # scipy.sparse matrices and arrays
        raise TypeError(f"{name}: sparse input is not supported; pass a dense array ({name}.toarray())")
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} must be a rectangular array of numbers; its rows differ in length ({exc})") from exc
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: Complex data not supported; got a complex array")
    try:
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be an array of numbers; got {type(value).__name__} ({exc})") from exc
    return arr if arr.flags.writeable else arr.copy()


def check_data(X: Any, y: Any, dim: int | None = None, min_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a data set and return float64 tensors ``X`` (n, d) and ``y`` (n,).

    Raises ValueError naming the argument for wrong shapes, NaN/inf, or too few samples.
    """
    X = float_array(X, "X")
    y = float_array(y, "y")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n_samples, n_features); got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must have shape (n_samples,); got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have the same number of samples; got shapes {X.shape} and {y.shape}")
    if X.shape[1] == 0:
        raise ValueError(f"X has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"X must have {dim} features (the model's dim); got {X.shape[1]}")
    if X.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples; got {X.shape[0]}")
    for name, arr in (("X", X), ("y", y)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
    return torch.from_numpy(X), torch.from_numpy(y)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------

def as_rng(rng: Any) -> np.random.Generator:
    """A numpy Generator from a Generator, SeedSequence, int seed, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng must be a seed >= 0 (or a Generator / SeedSequence / None); got {rng!r}")
        return np.random.default_rng(int(rng))
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, SeedSequence, int or None; got {type(rng).__name__}")


def _grid(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if d != 1:
        raise ValueError("x_dist='grid' is defined for d = 1 only; use 'uniform' or 'normal'")
    return np.linspace(0.0, 1.0, n)[:, None]


X_DISTS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "uniform": lambda n, d, rng: rng.uniform(0.0, 1.0, size=(n, d)),
    "grid": _grid,
    "normal": lambda n, d, rng: rng.standard_normal(size=(n, d)),
}


def sample_x(n: int, d: int, x_dist: str = "uniform", rng: Any = None) -> np.ndarray:
    """Draw ``n`` inputs of dimension ``d``: uniform on [0, 1]^d, an even grid on [0, 1] (d = 1), or N(0, I)."""
    if x_dist not in X_DISTS:
        raise ValueError(f"unknown x_dist {x_dist!r}; expected one of {tuple(X_DISTS)}")
    return X_DISTS[x_dist](check_int(n, "n"), d, as_rng(rng))


#: How :func:`sample` draws; a study's top-level ``sampling`` key. ``"sequential"`` (the default,
#: the numbers of every shipped spec): X, one uniform per sample (the component, by the inverse CDF
#: of the gate weights) and the Gaussian noise, one after another from ``rng``. ``"crn"`` (common
#: random numbers): each from its own stream, ``rng.spawn(3)``, so that two truths of any gates
#: sampled with the same seed share X, the uniforms and the noise by construction (their y differ
#: only where the drawn component differs), and the first m samples of size n are the sample of size m.
SAMPLINGS = ("sequential", "crn")  # the first is the default


def sample(params: MoEParams, n: int, rng: Any = None, x_dist: str = "uniform",
           sampling: str = SAMPLINGS[0]) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``(X, y)`` from the model: X of shape (n, d), y of shape (n,).

    Parameters
    ----------
    params : MoEParams
    n : int
        Number of samples.
    rng : numpy Generator, SeedSequence, int seed or None
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
    sampling : {"sequential", "crn"}, default "sequential"
        One stream, or common random numbers (three streams spawned from ``rng``): see :data:`SAMPLINGS`.

    Raises
    ------
    TypeError
        ``params`` is not a MoEParams.
    ValueError
        The gate weights or the expert means are not finite at some drawn input (logits or means
        overflow float64: the parameters are too large for the inputs); never a silent NaN or inf.
    """
    if not isinstance(params, MoEParams):
        raise TypeError(f"params must be a MoEParams (e.g. mixsim.preset('softmax_k2')); got {type(params).__name__}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}; got {sampling!r}")
    rng = as_rng(rng)
    x_rng, z_rng, noise_rng = (rng,) * 3 if sampling == "sequential" else rng.spawn(3)
    X = sample_x(n, params.dim, x_dist, x_rng)
    log_prob, mean = log_gate_and_mean(params, X)
    bad = ~np.isfinite(mean).all(axis=1)
    if bad.any():
        raise ValueError(f"params: the expert means overflow float64 at {int(bad.sum())} of {len(X)} inputs "
                         "(expert_weight / expert_bias too large for x_dist); rescale them")
    bad = np.isnan(log_prob).any(axis=1) | ~(log_prob < np.inf).all(axis=1)
    if bad.any():
        raise ValueError(f"params: the gate weights are not finite at {int(bad.sum())} of {len(X)} inputs "
                         "(gate logits overflow float64: gate_weight / gate_bias too large for x_dist); rescale them")
    cum = np.cumsum(np.exp(log_prob), axis=1)  # same draws as ever: one uniform per input
    z = np.minimum((z_rng.uniform(size=(n, 1)) > cum).sum(axis=1), params.n_experts - 1)
    rows = np.arange(n)
    with np.errstate(over="ignore"):
        y = mean[rows, z] + np.sqrt(params.variance[z]) * noise_rng.standard_normal(n)
    if not np.all(np.isfinite(y)):
        raise ValueError("params: the drawn responses overflow float64 (expert means or variance too large); rescale them")
    return X, y


def gate_and_mean(params: MoEParams, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gate weights pi(x) and expert means h(x), both arrays of shape (n, k), at inputs X (n, d)."""
    log_gate, mean = log_gate_and_mean(params, X)
    return np.exp(log_gate), mean


def log_gate_and_mean(params: MoEParams, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log gate weights log pi(x) and expert means h(x), both arrays of shape (n, k), at inputs X (n, d)."""
    Xt = torch.as_tensor(float_array(X, "X"))
    t = params.tensors()
    mean = expert_mean(params.expert, Xt, t["expert_weight"], t["expert_bias"])
    log_gate = log_gate_weights(
        params.gate, Xt, gate_weight=t["gate_weight"], gate_bias=t["gate_bias"],
        expert_mean=mean, top_k=params.top_k, phi=params.phi,
    )
    return log_gate.numpy(), mean.numpy()


def atom_vectors(params: MoEParams) -> np.ndarray:
    """Atom vectors ``(beta1, a, b, sigma2)`` of shape (k, 2d + 2); ``(a, b, sigma2)`` (k, d + 2) without a gate slope.

    The metric of the Voronoi cells (:func:`mixsim.losses.voronoi_cells`): Euclidean distance on
    these vectors. Distances between atoms of one model do not change with a common gate shift.
    """
    parts = [params.gate_weight, params.expert_weight, params.expert_bias[:, None], params.variance[:, None]]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts if p is not None], axis=1)
