"""GaussianMoE: a scikit-learn compatible estimator over :func:`mixsim.fit` for notebooks.

It follows scikit-learn's estimator contract without importing scikit-learn (which stays an
optional dependency): ``__init__`` only stores its arguments, ``get_params`` / ``set_params`` read
them back (so ``sklearn.base.clone``, ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``
work), what ``fit`` learns ends in ``_``, and an unfitted model raises :class:`NotFittedError`
(a ``sklearn.exceptions.NotFittedError`` when scikit-learn is installed). :func:`mixsim.select_n_experts`
chooses the number of experts by BIC or a cross-validated score and returns the candidates table.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np

from .fitting import FitResult, fit
from .model import MoEParams, check_data, gate_and_mean, log_density, sample
from .options import FitOptions, NearTruthInit

_OPTS = FitOptions()  # the fit options' defaults, written once (in FitOptions)

__all__ = ["GaussianMoE", "NotFittedError"]


class NotFittedError(ValueError, AttributeError, RuntimeError):
    """A GaussianMoE was used before ``fit``.

    The error actually raised also derives from ``sklearn.exceptions.NotFittedError`` when
    scikit-learn is installed, so ``except NotFittedError`` works with either class.
    (RuntimeError is kept as a base for code written against mixsim 0.1, which raised it.)
    """


_NOT_FITTED: list[type] = []


def _not_fitted_class() -> type:
    if not _NOT_FITTED:
        try:
            from sklearn.exceptions import NotFittedError as SkNotFitted
        except ImportError:
            _NOT_FITTED.append(NotFittedError)
        else:
            _NOT_FITTED.append(type("NotFittedError", (NotFittedError, SkNotFitted), {"__module__": __name__}))
    return _NOT_FITTED[0]


def _feature_names(X: Any) -> np.ndarray | None:
    """Column names of a pandas-like X when they are all strings (scikit-learn's rule), else None."""
    columns = getattr(X, "columns", None)
    if columns is None:
        return None
    names = np.asarray(list(columns), dtype=object)
    return names if len(names) and all(isinstance(c, str) for c in names) else None


def _seed_from(random_state: Any) -> Any:
    """A seed for :func:`mixsim.fit` from ``rng`` / ``random_state`` (a legacy RandomState draws one)."""
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    return random_state


class GaussianMoE:
    """Gaussian mixture of experts fitted by maximum likelihood (a scikit-learn compatible regressor).

    Parameters
    ----------
    n_experts : int, default 2
        Number of experts k.
    gate : {"softmax", "competition", "sigmoid", "topk"}, default "softmax"
    top_k : int or None, default None
        Experts kept per input (None = dense).
    expert : {"linear", "tanh"}, default "linear"
    tol, gtol : float, default 1e-8, 1e-10
        Converged (certified stationary; :func:`mixsim.fit_batch`): the last iteration changed the
        per-sample log-likelihood by at most ``tol`` and the Newton decrement per sample is <= ``gtol``.
    max_iter : int, default 2000
    n_init : int, default 1
        Number of starts; the best likelihood is kept.
    init : {"auto", "near_truth", "search"}, default "auto"
        ``search``: a search for the maximum likelihood (:func:`mixsim.fit_batch`).
    rng : None, int or numpy Generator, default None
        Seeds the starts.
    truth : MoEParams, optional
        Needed by ``init="near_truth"``.
    method : {"auto", "em", "newton"}, default "auto"
    init_options : NearTruthInit, optional
    em_warmup : int, default 20
        With ``method="auto"``: EM iterations before switching to Newton.
    variance_floor : float, default 1e-6 (variances are kept >= ``variance_floor * var(y)``)
    gate_bias : bool, default True
        Competition gate only: include the intercepts beta0.
    phi : {"softplus", "identity"}, default "softplus" (the competition transform)
    compile : bool, default False
        Run the EM pass through ``torch.compile``.
    random_state : None, int, numpy Generator or RandomState, default None
        scikit-learn's name for ``rng`` (``GridSearchCV`` and the estimator checks set it). Used
        when ``rng`` is None; giving both (different) is an error.

    variance_min, variance_cap, variance_ratio : float
        The other bounds of the declared parameter space (:class:`~mixsim.options.FitOptions`).
    search_candidates, search_iter, search_points, search_scale, search_keep, hit_tol
        The budget of ``init="search"`` (:class:`~mixsim.options.FitOptions`).

    The fit options (every field of :class:`~mixsim.options.FitOptions`) take its defaults;
    ``fit`` validates them there.

    Attributes
    ----------
    params_ : MoEParams
    log_likelihood_ : float
        Total log-likelihood of the training data.
    converged_ : bool
    n_iter_ : int
    result_ : FitResult
        Everything the fitter reported (trace, gradient norm, status, variance floor).
    n_features_in_ : int
        Number of input features seen by ``fit``.
    feature_names_in_ : ndarray of shape ``(n_features_in_,)``
        Column names of X, only when ``fit`` got a pandas DataFrame with string column names.

    Notes
    -----
    :meth:`score` is the mean per-sample log-likelihood (higher is better), so
    ``cross_val_score`` and ``GridSearchCV`` compare models by held-out likelihood, not R^2.

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
        n_experts: int = 2,
        *,
        gate: str = "softmax",
        top_k: int | None = None,
        expert: str = "linear",
        tol: float = _OPTS.tol,
        gtol: float = _OPTS.gtol,
        max_iter: int = _OPTS.max_iter,
        n_init: int = _OPTS.n_init,
        init: str = "auto",
        rng: Any = None,
        truth: MoEParams | None = None,
        method: str = _OPTS.method,
        init_options: NearTruthInit | None = None,
        em_warmup: int = _OPTS.em_warmup,
        variance_floor: float = _OPTS.variance_floor,
        gate_bias: bool = _OPTS.gate_bias,
        phi: str = _OPTS.phi,
        compile: bool = _OPTS.compile,
        variance_min: float = _OPTS.variance_min,
        variance_cap: float = _OPTS.variance_cap,
        variance_ratio: float | None = _OPTS.variance_ratio,
        search_candidates: int = _OPTS.search_candidates,
        search_iter: int = _OPTS.search_iter,
        search_points: int | None = _OPTS.search_points,
        search_scale: float = _OPTS.search_scale,
        search_keep: int = _OPTS.search_keep,
        hit_tol: float = _OPTS.hit_tol,
        random_state: Any = None,
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.top_k = top_k
        self.expert = expert
        self.tol = tol
        self.gtol = gtol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init = init
        self.rng = rng
        self.truth = truth
        self.method = method
        self.init_options = init_options
        self.em_warmup = em_warmup
        self.variance_floor = variance_floor
        self.gate_bias = gate_bias
        self.phi = phi
        self.compile = compile
        self.variance_min, self.variance_cap, self.variance_ratio = variance_min, variance_cap, variance_ratio
        self.search_candidates, self.search_iter, self.search_points = search_candidates, search_iter, search_points
        self.search_scale, self.search_keep, self.hit_tol = search_scale, search_keep, hit_tol
        self.random_state = random_state

    # -- scikit-learn's parameter protocol ------------------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments as a dict (scikit-learn's protocol; ``deep`` has nothing to recurse into)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> "GaussianMoE":
        """Set constructor arguments by name; returns self. Unknown names raise ValueError."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for GaussianMoE; valid parameters are {valid}")
            setattr(self, name, value)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "params_")

    def __sklearn_tags__(self) -> Any:  # only called by scikit-learn, so it may import it
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(estimator_type="regressor", target_tags=TargetTags(required=True),
                    regressor_tags=RegressorTags(poor_score=True))

    _estimator_type = "regressor"  # scikit-learn < 1.6

    # -- fitting ------------------------------------------------------------------------------
    def _seed(self) -> Any:
        if self.rng is not None and self.random_state is not None and self.rng is not self.random_state:
            if not (isinstance(self.rng, (int, np.integer)) and isinstance(self.random_state, (int, np.integer))
                    and int(self.rng) == int(self.random_state)):
                raise ValueError(f"rng and random_state are the same argument; give one (got rng={self.rng!r}, "
                                 f"random_state={self.random_state!r})")
        return _seed_from(self.rng if self.rng is not None else self.random_state)

    def fit(self, X: Any, y: Any) -> "GaussianMoE":
        """Fit to X of shape (n_samples, n_features) and y of shape (n_samples,); returns self.

        X and y may be numpy arrays, lists or pandas objects; a DataFrame's string column names
        are kept in ``feature_names_in_`` and checked by the prediction methods.
        """
        if y is None:
            raise ValueError("GaussianMoE requires y to be passed, but the target y is None")
        names = _feature_names(X)
        Xt, yt = check_data(X, y)
        # The fit options go through as given; fit validates them once, in FitOptions.
        options = {name: getattr(self, name) for name in FitOptions.names()}
        result: FitResult = fit(
            Xt.numpy(), yt.numpy(), self.n_experts, gate=self.gate, top_k=self.top_k, expert=self.expert, init=self.init,
            truth=self.truth, rng=self._seed(), init_options=self.init_options, **options,
        )
        self.result_ = result
        self.params_ = result.params
        self.log_likelihood_ = result.log_likelihood
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.n_features_in_ = int(Xt.shape[1])
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def _fitted(self) -> MoEParams:
        if not hasattr(self, "params_"):
            raise _not_fitted_class()(
                "This GaussianMoE instance is not fitted yet. Call 'fit' with appropriate arguments before using this estimator."
            )
        return self.params_

    def _check_names(self, X: Any) -> None:
        """scikit-learn's feature-name rules: mismatching names raise, a missing side warns."""
        fitted, given = getattr(self, "feature_names_in_", None), _feature_names(X)
        if fitted is None and given is None:
            return
        if fitted is None:
            warnings.warn("X has feature names, but GaussianMoE was fitted without feature names", UserWarning, stacklevel=3)
        elif given is None:
            warnings.warn("X does not have valid feature names, but GaussianMoE was fitted with feature names",
                          UserWarning, stacklevel=3)
        elif len(fitted) != len(given) or np.any(fitted != given):
            raise ValueError(f"The feature names should match those that were passed during fit: fitted with "
                             f"{list(fitted)}, got {list(given)}")

    def _check_shape(self, X: Any) -> int:
        """Number of rows of X; errors in scikit-learn's words for a scalar or a wrong width."""
        dim = self._fitted().dim
        shape = tuple(getattr(X, "shape", None) or np.asarray(X).shape)
        if len(shape) == 0:
            raise ValueError(f"X must have shape (n_samples, {dim}); got a scalar {X!r}")
        if len(shape) == 1 and dim != 1:
            raise ValueError(f"X is 1-d (read as one feature), but GaussianMoE is expecting {dim} features as input; "
                             f"Reshape your data with X.reshape(1, -1) for a single sample")
        if len(shape) == 2 and shape[1] != dim:
            raise ValueError(f"X has {shape[1]} features, but GaussianMoE is expecting {dim} features as input")
        return shape[0]

    def _X(self, X: Any) -> np.ndarray:
        p = self._fitted()
        self._check_names(X)
        Xt, _ = check_data(X, np.zeros(self._check_shape(X)), dim=p.dim)
        return Xt.numpy()

    def _Xy(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        p = self._fitted()
        self._check_names(X)
        self._check_shape(X)
        Xt, yt = check_data(X, y, dim=p.dim)
        return Xt.numpy(), yt.numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Gate weights pi(x), array of shape (n_samples, n_experts); rows sum to 1."""
        return gate_and_mean(self._fitted(), self._X(X))[0]

    def predict(self, X: Any) -> np.ndarray:
        """Conditional mean E[y | x] = sum_i pi_i(x) h_i(x), array of shape (n_samples,)."""
        gate, mean = gate_and_mean(self._fitted(), self._X(X))
        return (gate * mean).sum(axis=1)

    def score(self, X: Any, y: Any) -> float:
        """Mean per-sample log-likelihood ``(1/n) sum_i log p(y_i | x_i)`` (higher is better).

        This is what ``cross_val_score`` and ``GridSearchCV`` maximise by default: held-out
        likelihood, which (unlike R^2 of the conditional mean) rewards a correct noise model.
        """
        X, y = self._Xy(X, y)
        return float(log_density(self._fitted(), X, y).mean())

    def sample(self, n: int, rng: Any = None, x_dist: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
        """Draw (X, y) from the fitted model."""
        return sample(self._fitted(), n, rng=rng, x_dist=x_dist)

    def bic(self, X: Any, y: Any) -> float:
        """Bayesian information criterion: -2 log L + p log n (lower is better)."""
        X, y = self._Xy(X, y)
        p = self._fitted()
        return -2.0 * float(log_density(p, X, y).sum()) + p.n_free_params * math.log(len(y))

    def aic(self, X: Any, y: Any) -> float:
        """Akaike information criterion: -2 log L + 2 p (lower is better)."""
        X, y = self._Xy(X, y)
        p = self._fitted()
        return -2.0 * float(log_density(p, X, y).sum()) + 2.0 * p.n_free_params

    def __repr__(self) -> str:
        return f"GaussianMoE(n_experts={self.n_experts}, gate={self.gate!r}, top_k={self.top_k}, expert={self.expert!r})"


# ---------------------------------------------------------------------------------------------
# choosing the number of experts
# ---------------------------------------------------------------------------------------------
