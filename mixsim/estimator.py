"""GaussianMoE: a scikit-learn style estimator over :func:`mixsim.fit` for notebooks."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .fit import FitResult, NearTruthInit, fit
from .model import MoEParams, check_data, gate_and_mean, log_density, sample

__all__ = ["GaussianMoE"]


class GaussianMoE:
    """Gaussian mixture of experts fitted by maximum likelihood.

    Parameters
    ----------
    n_experts : int
        Number of experts k.
    gate : {"softmax", "competition", "sigmoid", "topk"}, default "softmax"
    top_k : int or None, default None
        Experts kept per input (None = dense).
    expert : {"linear", "tanh"}, default "linear"
    tol : float, default 1e-6
        Tolerance on the change of the per-sample log-likelihood.
    max_iter : int, default 2000
    n_init : int, default 1
        Number of starts; the best likelihood is kept.
    init : {"auto", "near_truth"}, default "auto"
    rng : None, int or numpy Generator
        Seeds the starts.
    truth : MoEParams, optional
        Needed by ``init="near_truth"``.
    method : {"auto", "em", "newton"}, default "auto"
    init_options : NearTruthInit, optional

    Attributes
    ----------
    params_ : MoEParams
    log_likelihood_ : float
        Total log-likelihood of the training data.
    converged_ : bool
    n_iter_ : int
    result_ : FitResult
        Everything the fitter reported (trace, gradient norm, status, variance floor).

    Examples
    --------
    >>> import mixsim
    >>> X, y = mixsim.sample(mixsim.preset("softmax_k2"), 2000, rng=0)
    >>> model = mixsim.GaussianMoE(2, n_init=3, rng=0).fit(X, y)
    >>> model.predict(X[:3]).shape
    (3,)
    """

    def __init__(
        self,
        n_experts: int,
        *,
        gate: str = "softmax",
        top_k: int | None = None,
        expert: str = "linear",
        tol: float = 1e-6,
        max_iter: int = 2000,
        n_init: int = 1,
        init: str = "auto",
        rng: Any = None,
        truth: MoEParams | None = None,
        method: str = "auto",
        init_options: NearTruthInit | None = None,
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.top_k = top_k
        self.expert = expert
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init = init
        self.rng = rng
        self.truth = truth
        self.method = method
        self.init_options = init_options

    def fit(self, X: Any, y: Any) -> "GaussianMoE":
        """Fit to X of shape (n_samples, n_features) and y of shape (n_samples,); returns self."""
        result: FitResult = fit(
            X, y, self.n_experts, gate=self.gate, top_k=self.top_k, expert=self.expert, tol=self.tol,
            max_iter=self.max_iter, n_init=self.n_init, init=self.init, truth=self.truth, rng=self.rng,
            method=self.method, init_options=self.init_options,
        )
        self.result_ = result
        self.params_ = result.params
        self.log_likelihood_ = result.log_likelihood
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        return self

    def _fitted(self) -> MoEParams:
        if not hasattr(self, "params_"):
            raise RuntimeError("this GaussianMoE is not fitted yet: call fit(X, y) first")
        return self.params_

    def _parts(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        p = self._fitted()
        Xt, _ = check_data(X, np.zeros(np.shape(X)[0]), dim=p.dim)
        return gate_and_mean(p, Xt.numpy())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Gate weights pi(x), array of shape (n_samples, n_experts); rows sum to 1."""
        return self._parts(X)[0]

    def predict(self, X: Any) -> np.ndarray:
        """Conditional mean E[y | x] = sum_i pi_i(x) h_i(x), array of shape (n_samples,)."""
        gate, mean = self._parts(X)
        return (gate * mean).sum(axis=1)

    def score(self, X: Any, y: Any) -> float:
        """Mean log-likelihood per sample."""
        return float(log_density(self._fitted(), X, y).mean())

    def sample(self, n: int, rng: Any = None, x_dist: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
        """Draw (X, y) from the fitted model."""
        return sample(self._fitted(), n, rng=rng, x_dist=x_dist)

    def bic(self, X: Any, y: Any) -> float:
        """Bayesian information criterion: -2 log L + p log n (lower is better)."""
        p = self._fitted()
        n = np.shape(y)[0]
        return -2.0 * float(log_density(p, X, y).sum()) + p.n_free_params * math.log(n)

    def aic(self, X: Any, y: Any) -> float:
        """Akaike information criterion: -2 log L + 2 p (lower is better)."""
        p = self._fitted()
        return -2.0 * float(log_density(p, X, y).sum()) + 2.0 * p.n_free_params

    def __repr__(self) -> str:
        return f"GaussianMoE(n_experts={self.n_experts}, gate={self.gate!r}, top_k={self.top_k}, expert={self.expert!r})"
