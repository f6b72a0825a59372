"""The entry points of the fitter: :func:`fit` and :func:`fit_batch`, and their input checks.

They check the data, build one :class:`~mixsim.options.FitOptions`, standardise X, draw the
starts (:mod:`mixsim.fitting.starts`), run the engines (:mod:`mixsim.fitting.engine`) and
assemble one :class:`~mixsim.fitting.result.FitResult` per data set.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from ..checks import check_choice, check_int
from ..devices import check_device
from ..experts import check_expert
from ..gates import canonical_gate
from ..model import MoEParams, as_rng, check_data, float_array, log_likelihood
from ..options import INITS, FitOptions, NearTruthInit
from .bounds import VarianceBounds
from .engine import run_engine
from .layout import Layout
from .result import FitResult, Rows, assemble_results
from .scaling import feature_scale, outcome_to_units_of_y, response_scale, theta_to_units_of_y
from .search import first_starts, pack_starts, run_search

__all__ = ["fit", "fit_batch", "merge_options", "DEFAULT", "INITS"]


def _rngs(rng: Any, B: int) -> list[np.random.Generator]:
    """One generator per data set: a sequence gives them directly; a seed or generator is split."""
    if isinstance(rng, (list, tuple)) or (isinstance(rng, np.ndarray) and rng.ndim == 1):
        if len(rng) != B:
            raise ValueError(f"rng must hold one seed or generator per data set ({B}); got {len(rng)}")
        bad = [r for r in rng if isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r < 0]
        if bad:
            raise ValueError(f"rng: seeds must be >= 0; got {bad[0]!r}")
        return [as_rng(np.random.SeedSequence(int(r)) if isinstance(r, (int, np.integer)) else r) for r in rng]
    if isinstance(rng, np.random.Generator):
        return [np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(B)]
    if rng is not None and not isinstance(rng, np.random.SeedSequence):
        as_rng(rng)  # TypeError / ValueError naming rng for anything but a seed >= 0
    seq = rng if isinstance(rng, np.random.SeedSequence) else np.random.SeedSequence(rng)
    return [np.random.default_rng(s) for s in seq.spawn(B)]


def _check_batch(Xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
    X = float_array(Xs, "Xs")
    y = float_array(ys, "ys")
    if y.ndim != 2:
        raise ValueError(f"ys must have shape (n_datasets, n_samples); got {y.shape}")
    if X.ndim == 2:
        X = X[..., None]
    if X.ndim != 3 or X.shape[:2] != y.shape:
        raise ValueError(f"Xs must have shape (n_datasets, n_samples, n_features) matching ys {y.shape}; got {X.shape}")
    if y.shape[0] == 0 or y.shape[1] == 0 or X.shape[2] == 0:
        raise ValueError(f"Xs and ys need at least one data set, one sample and one feature; got Xs of shape {X.shape}")
    for name, arr in (("Xs", X), ("ys", y)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
        with np.errstate(over="ignore", invalid="ignore"):
            spread = np.var(arr, axis=1)
        if not np.all(np.isfinite(spread)):
            raise ValueError(f"{name}: values too large (their variance overflows float64); rescale {name[0]}")
    return X, y


def _check_all_equal(y: np.ndarray) -> None:
    if np.any(np.ptp(y, axis=1) == 0):
        raise ValueError("ys: a data set has all responses equal; its likelihood is unbounded (no variance to estimate)")


class _Default:
    """An option keyword not given: its value comes from ``options`` or from FitOptions' default."""

    def __repr__(self) -> str:
        return "<FitOptions default>"


DEFAULT: Any = _Default()


def fit_batch(
    Xs: Any,
    ys: Any,
    n_experts: int,
    *,
    gate: str = "softmax",
    top_k: int | None = None,
    expert: str = "linear",
    init: str = "auto",
    truth: MoEParams | None = None,
    init_options: NearTruthInit | None = None,
    rng: Any = None,
    device: str | torch.device | None = None,
    warn: bool = True,
    options: FitOptions | None = None,
    method: str = DEFAULT,
    n_init: int = DEFAULT,
    tol: float = DEFAULT,
    gtol: float = DEFAULT,
    max_iter: int = DEFAULT,
    em_warmup: int = DEFAULT,
    variance_floor: float = DEFAULT,
    variance_min: float = DEFAULT,
    variance_cap: float = DEFAULT,
    variance_ratio: float | None = DEFAULT,
    gate_bias: bool = DEFAULT,
    phi: str = DEFAULT,
    compile: bool = DEFAULT,
    search_candidates: int = DEFAULT,
    search_iter: int = DEFAULT,
    search_points: int | None = DEFAULT,
    search_scale: float = DEFAULT,
    search_keep: int = DEFAULT,
    hit_tol: float = DEFAULT,
) -> list[FitResult]:
    """Fit ``B`` data sets of the same size at once by maximum likelihood.

    Parameters
    ----------
    Xs : array of shape (B, n, d) (or (B, n) when d = 1)
    ys : array of shape (B, n)
    n_experts : int
        Fitted number of experts k >= 1.
    gate : {"softmax", "competition", "sigmoid", "topk"}, default "softmax"
    top_k : int or None, default None
        Experts kept per input by the gate (None = dense).
    expert : {"linear", "tanh"}, default "linear"
    init : {"auto", "near_truth", "search"}, default "auto"
        ``auto`` needs no truth: clustered least-squares starts, ``n_init`` of them.
        ``near_truth`` starts from ``truth`` perturbed as in THEORY.md section 2 (the reference
        protocol; needs ``truth``). ``search`` looks for the maximum likelihood
        (:mod:`mixsim.fitting.search`): it screens ``search_candidates`` starts (wide near-truth
        starts over every placement of the extra atoms when ``truth`` is given, splits of a fit
        with one expert fewer, data-driven starts) for ``search_iter`` iterations and continues
        the ``search_keep`` best to certification, beside ``n_init`` starts of the reference
        protocol (near-truth with ``truth``, else data-driven), which are always continued.
        ``FitResult.search`` records what was found and how often.
    truth : MoEParams, optional
        The true model: same gate family, expert and dimension, with ``truth.n_experts <=
        n_experts``. Needed by ``near_truth``, used by ``search``; with a truth, every result
        carries ``excess_loglik`` (its log-likelihood minus the truth's on the same data).
    init_options : NearTruthInit, optional
        Noise scales and their shrink exponents in n of the reference near-truth start
        (defaults: the reference protocol).
    rng : None, int, Generator, SeedSequence, or a sequence of B of these
        Randomness of the starts. Pass one seed per data set to make a data set's result
        independent of the batch it is fitted in.
    device : str or torch.device, optional
        Where to compute (default CPU); float64 throughout.
    warn : bool, default True
        Emit a :class:`ConvergenceWarning` when the best start of a data set did not converge.
    options : FitOptions, optional
        The fit options as one validated object (:class:`~mixsim.options.FitOptions` documents
        each option and its default). Each option may also be given as a keyword
        (``method``, ``n_init``, ``tol``, ``gtol``, ``max_iter``, ``em_warmup``,
        ``variance_floor``, ``variance_min``, ``variance_cap``, ``variance_ratio``, ``gate_bias``,
        ``phi``, ``compile``, ``search_candidates``, ``search_iter``, ``search_points``, ``search_scale``,
        ``search_keep``, ``hit_tol``): a keyword given explicitly always wins over ``options``;
        options given by neither take FitOptions' defaults. In short: ``tol`` (default 1e-8) is
        the per-sample log-likelihood change of the last accepted iteration and ``gtol`` (1e-10)
        the Newton decrement per sample at the estimate that a converged (certified stationary)
        fit meets; the ``variance_*`` options declare the bounded parameter space.

    Returns
    -------
    list of FitResult, one per data set.
    """
    given = {name: value for name, value in locals().items() if name in FitOptions.names()}  # the option keywords
    t0 = time.perf_counter()
    X_np, y_np = _check_batch(Xs, ys)
    B, n, d = X_np.shape
    k = check_int(n_experts, "n_experts")
    gate, top_k = canonical_gate(gate, top_k, k)
    expert = check_expert(expert)
    opts = merge_options(options, **given)
    opts.check_model(gate, expert)
    layout = Layout(gate, top_k, expert, opts.phi, k, d, opts.gate_bias)
    if n <= layout.n_params:
        raise ValueError(f"n_samples={n} is too small: the model has {layout.n_params} free parameters; need more samples than that")
    _check_all_equal(y_np)
    init = check_choice(init, "init", INITS)
    if init == "near_truth" or (truth is not None and init == "search"):
        _check_truth(truth, layout, init)
    noise = init_options or NearTruthInit()
    gens = _rngs(rng, B)
    X_raw = X_np
    # Fit in standardised inputs (each feature of each data set centred and scaled): gate logits
    # and expert pre-activations are affine in x, so the fitted model maps back exactly and the
    # fit does not depend on the units or the origin of X.
    centre, scale = feature_scale(X_np)  # (B, d)
    X_np = (X_np - centre[:, None]) / scale[:, None]
    y_raw = y_np
    y_scale = response_scale(y_np, expert)  # (B,): y far from unit scale is fitted as y / y_scale (scaling.py)
    y_np = y_np / y_scale[:, None]
    dev = check_device(device)
    X = torch.as_tensor(X_np, dtype=torch.float64, device=dev)
    y = torch.as_tensor(y_np, dtype=torch.float64, device=dev)
    bounds = _bounds(opts, y_np.var(axis=1), y_scale, dev)

    n_starts = np.full(B, opts.n_init)
    failed = np.zeros(B, dtype=int)
    if init == "search":
        theta0, outcome, owner, kind, n_starts, failed = run_search(layout, X, y, bounds, opts, truth, noise, n, gens,
                                                                   centre, scale, y_scale)
    else:  # data set b, start r -> row b * n_init + r; the protocol's noise is in the units of the truth
        starts = first_starts(layout, truth if init == "near_truth" else None, n, noise, opts.n_init, gens,
                              (centre, scale, y_scale), X_np, y_np, init)
        owner, kind = np.array(starts.owner), starts.kind
        rows_t = torch.as_tensor(owner, device=dev)
        theta0 = pack_starts(layout, starts.params, bounds.take(rows_t), X.dtype, dev)
        outcome = run_engine(layout, theta0, X[rows_t], y[rows_t], bounds.take(rows_t), opts)
    rows_t = torch.as_tensor(owner, device=dev)
    row_scale = y_scale[owner]  # back to the units of y (nothing changes where y_scale is 1)
    outcome, lower = outcome_to_units_of_y(layout, outcome, bounds.lower[rows_t], row_scale)
    s2 = torch.as_tensor(row_scale**2, dtype=torch.float64, device=dev)
    row_bounds = VarianceBounds(lower, bounds.upper[rows_t] * s2, bounds.log_ratio)
    theta0 = theta_to_units_of_y(layout, theta0, row_scale)
    results = assemble_results(layout, outcome, theta0, row_bounds, Rows(owner, kind, init, n_starts, failed), n,
                               time.perf_counter() - t0, opts, warn, (centre[owner], scale[owner]))
    if truth is not None:  # the certificate's likelihood half: excess over the truth on the same data
        results = [_with_excess(r, truth, X_raw[b], y_raw[b]) for b, r in enumerate(results)]
    return results


def _bounds(opts: FitOptions, var_y: np.ndarray, y_scale: np.ndarray, dev: torch.device) -> VarianceBounds:
    """The declared variance bounds of each data set (:mod:`mixsim.fitting.bounds`), in the units
    the engines see (``var_y``: the variance of y / y_scale; ``variance_min`` is in y's units)."""
    lower = np.maximum(opts.variance_floor * var_y, opts.variance_min / y_scale**2)
    upper = opts.variance_cap * var_y
    if np.any(lower >= upper):
        raise ValueError(f"variance_min={opts.variance_min:g} is not below variance_cap * var(y) = {upper.min():g}; lower it")
    log_ratio = math.inf if opts.variance_ratio is None else math.log(opts.variance_ratio)
    as_t = lambda v: torch.as_tensor(v, dtype=torch.float64, device=dev)  # noqa: E731
    return VarianceBounds(as_t(lower), as_t(upper), log_ratio)


def _with_excess(res: FitResult, truth: MoEParams, X: np.ndarray, y: np.ndarray) -> FitResult:
    base = log_likelihood(truth, X, y)
    proto = res.search.protocol if res.search is not None else None
    if proto is not None:
        proto = dataclasses.replace(proto, excess_loglik=proto.log_likelihood - base)
        res = dataclasses.replace(res, search=dataclasses.replace(res.search, protocol=proto))
    return dataclasses.replace(res, excess_loglik=res.log_likelihood - base)


def merge_options(options: FitOptions | None, **keywords: Any) -> FitOptions:
    """One :class:`FitOptions` from ``options`` and the option keywords of :func:`fit_batch`.

    A keyword given explicitly (anything but :data:`DEFAULT`) always wins; the others come from
    ``options``, or from FitOptions' defaults without it.
    """
    if options is not None and not isinstance(options, FitOptions):
        raise TypeError(f"options must be a mixsim.FitOptions or None; got {type(options).__name__}")
    changed = {name: value for name, value in keywords.items() if value is not DEFAULT}
    base = options if options is not None else FitOptions()
    return base.replace(**changed) if changed else base


def _check_truth(truth: Any, layout: Layout, init: str) -> None:
    if not isinstance(truth, MoEParams):
        raise TypeError(f"init={init!r} needs truth=MoEParams; got {type(truth).__name__}")
    if truth.gate != layout.gate or truth.expert != layout.expert or truth.dim != layout.d:
        raise ValueError(
            f"truth (gate={truth.gate!r}, expert={truth.expert!r}, d={truth.dim}) does not match the fitted model "
            f"(gate={layout.gate!r}, expert={layout.expert!r}, d={layout.d})"
        )
    if truth.n_experts > layout.k:
        raise ValueError(f"init={init!r} with a truth needs n_experts >= truth.n_experts={truth.n_experts}; got {layout.k}")
    if layout.gate == "competition" and (truth.gate_bias is not None) != layout.gate_bias:
        raise ValueError("truth and fit disagree on the competition intercepts: set gate_bias to match truth.gate_bias")


def fit(
    X: Any,
    y: Any,
    n_experts: int,
    *,
    rng: Any = None,
    **kwargs: Any,
) -> FitResult:
    """Fit one data set by maximum likelihood; see :func:`fit_batch` for every option (``options`` too).

    ``X`` has shape (n, d) (or (n,) for d = 1), ``y`` shape (n,). ``rng`` seeds this data set's
    starts exactly as ``fit_batch(..., rng=[rng])`` would, so both give the same numbers.
    """
    Xt, yt = check_data(X, y)
    X, y = Xt.numpy(), yt.numpy()
    if rng is None:
        rng = np.random.SeedSequence().entropy
    return fit_batch(X[None], y[None], n_experts, rng=[rng], **kwargs)[0]
