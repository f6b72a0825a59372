"""The entry points of the fitter: :func:`fit` and :func:`fit_batch`, and their input checks.

They check the data, build one :class:`~mixsim.options.FitOptions`, standardise X, draw the
starts (:mod:`mixsim.fitting.starts`), run the engines (:mod:`mixsim.fitting.engine`) and
assemble one :class:`~mixsim.fitting.result.FitResult` per data set.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..checks import check_int
from ..devices import check_device
from ..experts import check_expert
from ..gates import canonical_gate
from ..model import MoEParams, as_rng, check_data, float_array
from ..options import FitOptions, NearTruthInit
from .engine import run_engine
from .layout import Layout, affine
from .result import FitResult, assemble_results
from .scaling import feature_scale, outcome_to_units_of_y, response_scale, scale_start
from .starts import init_auto, init_near_truth

__all__ = ["fit", "fit_batch", "merge_options"]


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
    n_init: int = 1,
    tol: float = 1e-8,
    gtol: float = 1e-10,
    max_iter: int = 2000,
    method: str = "auto",
    em_warmup: int = 20,
    variance_floor: float = 1e-6,
    gate_bias: bool = True,
    phi: str = "softplus",
    rng: Any = None,
    device: str | torch.device | None = None,
    warn: bool = True,
    compile: bool = False,
    options: FitOptions | None = None,
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
    init : {"auto", "near_truth"}, default "auto"
        ``near_truth`` starts from ``truth`` perturbed as in THEORY.md section 2 (needs ``truth``);
        ``auto`` needs no truth: clustered least-squares starts, ``n_init`` of them.
    truth : MoEParams, optional
        The true model, for ``init="near_truth"``; same gate family, expert and dimension, with
        ``truth.n_experts <= n_experts``.
    init_options : NearTruthInit, optional
        Noise scales and their shrink exponents in n (defaults: the reference protocol).
    n_init : int, default 1
        Starts per data set; the one with the highest likelihood is kept.
    tol : float, default 1e-8
        Convergence needs the last accepted iteration to change the per-sample log-likelihood by
        at most ``tol`` (nats per sample, so it means the same at every n) ...
    gtol : float, default 1e-10
        ... and the Newton decrement per sample (``FitResult.stationarity``, the gain a Newton
        step predicts) to be at most ``gtol`` at the returned estimate. The default makes a fit
        certified: an independent optimiser started from it gains less than about 1e-9 nats per
        sample (tested with scipy). A small change alone is not convergence: plain EM crawls on
        over-fitted problems, changing the likelihood little per iteration far from the optimum.
    max_iter : int, default 2000
        Iteration cap per start (EM and Newton iterations together).
    method : {"auto", "em", "newton"}, default "auto"
        See :mod:`mixsim.fitting`. ``em`` needs a softmax gate and linear experts.
    em_warmup : int, default 20
        With ``auto``: EM iterations before switching to Newton.
    variance_floor : float, default 1e-6
        Variances are kept >= ``variance_floor * var(y)``; results on the floor are flagged.
    gate_bias : bool, default True
        Competition gate only: include the intercepts beta0 (False fits a model without them).
    phi : {"softplus", "identity"}, default "softplus"
        Competition transform.
    rng : None, int, Generator, SeedSequence, or a sequence of B of these
        Randomness of the starts. Pass one seed per data set to make a data set's result
        independent of the batch it is fitted in.
    device : str or torch.device, optional
        Where to compute (default CPU); float64 throughout.
    warn : bool, default True
        Emit a :class:`ConvergenceWarning` when the best start of a data set did not converge.
    compile : bool, default False
        Run the EM pass through ``torch.compile`` (one fused loop over the data). On the 2-core
        CPU mixsim was developed on it now runs about as fast as the eager pass (within ~15% at
        n = 1e5, k = 3; ``benchmarks/bench_fit.py`` measures both), so it only pays where
        memory is slow next to arithmetic. The first calls in a process compile (10-35 s, a few
        times: shapes are dynamic after the second n); a study amortises that over all the fits
        of a worker. Needs a C++ compiler. Results equal the eager ones to ~1e-10.
    options : FitOptions, optional
        The fit options (``method``, ``n_init``, ``tol``, ``gtol``, ``max_iter``, ``em_warmup``,
        ``variance_floor``, ``gate_bias``, ``phi``, ``compile``) as one validated object. A keyword
        argument among these whose value differs from its default overrides the field of
        ``options``; keywords left at their defaults take the values of ``options``. Without
        ``options`` the keywords alone are used. Every option is validated by
        :class:`~mixsim.options.FitOptions`.

    Returns
    -------
    list of FitResult, one per data set.
    """
    t0 = time.perf_counter()
    X_np, y_np = _check_batch(Xs, ys)
    B, n, d = X_np.shape
    k = check_int(n_experts, "n_experts")
    gate, top_k = canonical_gate(gate, top_k, k)
    expert = check_expert(expert)
    opts = merge_options(options, method=method, n_init=n_init, tol=tol, gtol=gtol, max_iter=max_iter,
                         em_warmup=em_warmup, variance_floor=variance_floor, gate_bias=gate_bias, phi=phi,
                         compile=compile)
    opts.check_model(gate, expert)
    layout = Layout(gate, top_k, expert, opts.phi, k, d, opts.gate_bias)
    if n <= layout.n_params:
        raise ValueError(f"n_samples={n} is too small: the model has {layout.n_params} free parameters; need more samples than that")
    _check_all_equal(y_np)
    if init not in ("auto", "near_truth"):
        raise ValueError(f"unknown init {init!r}; expected 'auto' or 'near_truth'")
    if init == "near_truth":
        _check_truth(truth, layout)
    noise = init_options or NearTruthInit()
    gens = _rngs(rng, B)
    # Fit in standardised inputs (each feature of each data set centred and scaled): gate logits
    # and expert pre-activations are affine in x, so the fitted model maps back exactly and the
    # fit does not depend on the units or the origin of X.
    centre, scale = feature_scale(X_np)  # (B, d)
    X_np = (X_np - centre[:, None]) / scale[:, None]
    y_scale = response_scale(y_np, expert)  # (B,): y far from unit scale is fitted as y / y_scale (scaling.py)
    y_np = y_np / y_scale[:, None]

    # Starts: data set b, start r -> row b * n_init + r.
    n_init = opts.n_init
    starts = []
    for b in range(B):
        for _ in range(n_init):
            if init == "near_truth":  # the protocol's noise is in the units of the truth
                starts.append(scale_start(affine(init_near_truth(truth, k, n, noise, gens[b]), centre[b], scale[b]), y_scale[b]))
            else:
                starts.append(init_auto(layout, X_np[b], y_np[b], gens[b]))
    dev = check_device(device)
    dt = torch.float64
    X = torch.as_tensor(X_np, dtype=dt, device=dev).repeat_interleave(n_init, dim=0)
    y = torch.as_tensor(y_np, dtype=dt, device=dev).repeat_interleave(n_init, dim=0)
    floor = torch.as_tensor(opts.variance_floor * y_np.var(axis=1), dtype=dt, device=dev).repeat_interleave(n_init)
    p0 = {
        name: None if starts[0][name] is None else torch.as_tensor(np.stack([s[name] for s in starts]), dtype=dt, device=dev)
        for name in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")
    }
    p0["variance"] = torch.maximum(p0["variance"], floor[:, None])
    outcome = run_engine(layout, layout.pack(p0), X, y, floor, opts)
    outcome, floor = outcome_to_units_of_y(layout, outcome, floor, np.repeat(y_scale, n_init))
    rows_centre, rows_scale = (np.repeat(v, n_init, axis=0) for v in (centre, scale))
    return assemble_results(layout, outcome, floor, B, n, n_init, time.perf_counter() - t0, opts.method, warn, opts.gtol,
                            (rows_centre, rows_scale))


_DEFAULTS = FitOptions()


def merge_options(options: FitOptions | None, **keywords: Any) -> FitOptions:
    """One :class:`FitOptions` from ``options`` and the option keywords of :func:`fit_batch`.

    Without ``options``: ``FitOptions(**keywords)``. With it: the keywords whose value differs
    from the default (in value or type) replace its fields; the others are ignored.
    """
    if options is None:
        return FitOptions(**keywords)
    if not isinstance(options, FitOptions):
        raise TypeError(f"options must be a mixsim.FitOptions or None; got {type(options).__name__}")
    changed = {name: value for name, value in keywords.items() if not _is_default(name, value)}
    return options.replace(**changed) if changed else options


def _is_default(name: str, value: Any) -> bool:
    default = getattr(_DEFAULTS, name)
    return type(value) is type(default) and value == default


def _check_truth(truth: Any, layout: Layout) -> None:
    if not isinstance(truth, MoEParams):
        raise TypeError(f"init='near_truth' needs truth=MoEParams; got {type(truth).__name__}")
    if truth.gate != layout.gate or truth.expert != layout.expert or truth.dim != layout.d:
        raise ValueError(
            f"truth (gate={truth.gate!r}, expert={truth.expert!r}, d={truth.dim}) does not match the fitted model "
            f"(gate={layout.gate!r}, expert={layout.expert!r}, d={layout.d})"
        )
    if truth.n_experts > layout.k:
        raise ValueError(f"near_truth needs n_experts >= truth.n_experts={truth.n_experts}; got {layout.k}")
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
