"""Options of a maximum-likelihood fit, validated once: the one object that :func:`mixsim.fit`,
:func:`mixsim.fit_batch`, :class:`mixsim.GaussianMoE` and the study spec share.

Pure data (no torch, no fitter), so a study spec can validate its ``[fit]`` table without
importing the fitting engine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .checks import check_bool, check_choice, check_int, check_real

__all__ = ["FitOptions", "NearTruthInit", "METHODS", "INITS", "PHIS", "em_applies"]

METHODS = ("auto", "em", "newton")
INITS = ("auto", "near_truth", "search")  # start rules of a fit (mixsim.fitting.api documents them)
PHIS = ("softplus", "identity")  # competition transforms (mixsim.gates.PHI has the functions)


def em_applies(gate: str, expert: str) -> bool:
    """Whether EM has closed-form steps for this model: a softmax (or top-K softmax) gate with
    linear experts; every other model is fitted by Newton."""
    return gate == "softmax" and expert == "linear"


@dataclass(frozen=True)
class FitOptions:
    """How a fit is run (everything but the data, the model and the start).

    Parameters
    ----------
    method : {"auto", "em", "newton"}, default "auto"
        ``auto``: EM for softmax gates with linear experts, handing over to damped Newton;
        damped Newton for every other model. ``em`` needs a softmax gate and linear experts.
    n_init : int, default 1
        Starts per data set; the one with the highest likelihood is kept.
    tol : float, default 1e-8
        Convergence needs the last accepted iteration to change the per-sample log-likelihood
        by at most ``tol`` (nats per sample) ...
    gtol : float, default 1e-10
        ... and the Newton decrement per sample to be at most ``gtol`` at the returned estimate
        (certified stationary; THEORY.md section 8).
    max_iter : int, default 2000
        Iteration cap per start (EM and Newton iterations together).
    em_warmup : int, default 20
        With ``auto``: EM iterations before switching to Newton.
    variance_floor : float, default 1e-6
        Variances are kept >= ``variance_floor * var(y)`` (relative floor); results on a bound are
        flagged (``FitResult.variance_bounded``). With the bounds below, these four fields declare
        the compact parameter space the maximum likelihood is taken over
        (:mod:`mixsim.fitting.bounds`, THEORY.md section 9).
    variance_min : float, default 0.0
        Absolute floor, in the units of y squared: variances are kept >= ``variance_min`` too.
    variance_cap : float, default 1e6
        Variances are kept <= ``variance_cap * var(y)``: a diverging start stops there instead of
        overflowing (1e6: never reached by a fit that does not diverge).
    variance_ratio : float or None, default None
        Hathaway's constrained maximum likelihood: the largest variance is at most
        ``variance_ratio`` times the smallest (>= 1; 1 forces equal variances). None: no ratio bound.
    gate_bias : bool, default True
        Competition gate only: include the intercepts beta0.
    phi : {"softplus", "identity"}, default "softplus"
        Competition transform.
    compile : bool, default False
        Run the EM pass through ``torch.compile``.
    search_candidates : int, default 24
        ``init="search"``: starts screened per data set (near-truth, data-driven and split starts;
        the reference protocol's ``n_init`` starts come on top and are always continued).
    search_iter : int, default 10
        ``init="search"``: iterations of each screening round (successive halving: each round
        keeps the best third, until ``search_keep`` are left).
    search_points : int or None, default 4000
        ``init="search"``: screening runs on a random subset of this many samples of each data
        set (None: all), so that its cost does not grow with n.
    search_scale : float, default 1.0
        ``init="search"``: sd of the wide near-truth starts' noise on gate and expert parameters
        (fixed in n; a tenth of it on variances), and the spread of split atoms (in expert sds).
    search_keep : int, default 3
        ``init="search"``: screened starts continued to certification (the best by likelihood).
    hit_tol : float, default 0.01
        Continued starts whose optimum is within ``hit_tol`` nats (total log-likelihood) of the
        best count as hits of the best (``FitResult.search.hits``).
    """

    method: str = "auto"
    n_init: int = 1
    tol: float = 1e-8
    gtol: float = 1e-10
    max_iter: int = 2000
    em_warmup: int = 20
    variance_floor: float = 1e-6
    variance_min: float = 0.0
    variance_cap: float = 1e6
    variance_ratio: float | None = None
    gate_bias: bool = True
    phi: str = "softplus"
    compile: bool = False
    search_candidates: int = 24
    search_iter: int = 10
    search_points: int | None = 4000
    search_scale: float = 1.0
    search_keep: int = 3
    hit_tol: float = 0.01

    def __post_init__(self) -> None:
        checked = {
            "method": check_choice(self.method, "method", METHODS),
            "n_init": check_int(self.n_init, "n_init", 1),
            "tol": check_real(self.tol, "tol", 0.0, strict=True),
            "gtol": check_real(self.gtol, "gtol", 0.0, strict=True),
            "max_iter": check_int(self.max_iter, "max_iter", 1),
            "em_warmup": check_int(self.em_warmup, "em_warmup", 0),
            "variance_floor": check_real(self.variance_floor, "variance_floor", 0.0, strict=True),
            "variance_min": check_real(self.variance_min, "variance_min", 0.0),
            "variance_cap": check_real(self.variance_cap, "variance_cap", 0.0, strict=True),
            "variance_ratio": None if self.variance_ratio is None else check_real(self.variance_ratio, "variance_ratio", 1.0),
            "gate_bias": check_bool(self.gate_bias, "gate_bias"),
            "phi": check_choice(self.phi, "phi", PHIS),
            "compile": check_bool(self.compile, "compile"),
            "search_candidates": check_int(self.search_candidates, "search_candidates", 0),
            "search_iter": check_int(self.search_iter, "search_iter", 1),
            "search_points": None if self.search_points is None else check_int(self.search_points, "search_points", 1),
            "search_scale": check_real(self.search_scale, "search_scale", 0.0, strict=True),
            "search_keep": check_int(self.search_keep, "search_keep", 1),
            "hit_tol": check_real(self.hit_tol, "hit_tol", 0.0),
        }
        for name, value in checked.items():  # canonical Python types (numpy ints become int, ...)
            object.__setattr__(self, name, value)
        if self.variance_cap <= self.variance_floor:
            raise ValueError(f"variance_cap ({self.variance_cap:g}) must exceed variance_floor ({self.variance_floor:g}): "
                             "both are multiples of var(y)")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> "FitOptions":
        """A copy with ``changes`` applied (validated again)."""
        unknown = set(changes) - set(self.names())
        if unknown:
            raise TypeError(f"unknown fit option(s) {sorted(unknown)}; fit options are {list(self.names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_model(self, gate: str, expert: str) -> None:
        """Refuse options the model cannot use (ValueError naming the option)."""
        if not self.gate_bias and gate != "competition":
            raise ValueError(f"gate_bias=False (a gate without intercepts) is for the competition gate only; got gate={gate!r}")
        if self.method == "em" and not em_applies(gate, expert):
            raise ValueError(f"method='em' needs gate='softmax' and expert='linear'; got gate={gate!r}, expert={expert!r}; use 'newton'")


@dataclass(frozen=True)
class NearTruthInit:
    """Noise of the near-truth start (THEORY.md section 2): sd = scale * n ** -exponent.

    Defaults are the reference protocol's. Exponents of 0 give noise that does not shrink with n.
    Variances get ``|N(0, sd^2)|`` added; gate and expert parameters get ``N(0, sd^2)``.
    ``assign`` maps each fitted expert to a true one (length = fitted k, covering every true
    expert); None puts fitted expert i on true expert i and every extra one on true expert 0, as
    the reference code does (there, the over-fitted cell is the expert with beta0 = -8).
    """

    gate_scale: float = 0.005
    expert_scale: float = 0.05
    variance_scale: float = 0.005
    gate_exponent: float = 0.083
    expert_exponent: float = 0.083
    variance_exponent: float = 0.25
    assign: tuple[int, ...] | None = None
