"""Batched maximum-likelihood fitting of Gaussian mixtures of experts.

Every routine carries a leading batch dimension ``B``: ``B`` data sets of the same size are fitted
at once, each with its own parameters, step sizes and stopping time, so a batched fit gives the
same estimates as fitting the data sets one by one (this is what makes studies fast).

A fit converges only at a certified stationary point: the Newton decrement per sample at the
returned estimate (the gain a Newton step predicts, in nats per sample: free of units and
parametrisation) is at most ``gtol``, and the last accepted iteration changed the **per-sample**
log-likelihood by at most ``tol`` (so both mean the same at every n). A small change alone is not
convergence (EM crawls), nor is a refused step: EM hands over to Newton, and a Newton that finds no
improving step at a non-stationary point reports ``stalled``. X is standardised inside (the model
is affine in x), so fits do not depend on the units of X. Two engines:

``em``
    EM for softmax / top-K gates with linear experts: experts by weighted least squares, variances
    in closed form, the gate by one Newton (IRLS) step per iteration. The gate step is halved until
    the log-likelihood does not decrease, so the trace never decreases.
``newton``
    Trust-region Newton on the observed log-likelihood with exact Hessians (closed-form
    per-sample derivatives, autograd for the sigmoid gate), for every gate and expert (the
    competition gate shares its parameters with the experts, so it has no closed-form M-step).
    Each step solves the trust-region problem exactly in the Hessian's eigenbasis, so indefinite
    Hessians give steps along negative curvature; along the slow valleys of over-fitted models the
    iterations leap ahead by extrapolation. A step is accepted only if it does not decrease the
    log-likelihood.
``auto`` (default)
    ``em`` for up to ``em_warmup`` iterations where it applies (or until its change is small or
    its step refused), then ``newton``, which certifies: plain EM crawls on
    over-fitted problems (thousands of iterations) where Newton needs tens. A few EM iterations
    (cheap: one pass over the data) bring a rough start near a basin; more only delay Newton.

Rows are fitted in sub-batches of about 2**18 data points (cache-sized); ``compile=True`` fuses the
EM pass with ``torch.compile``. The engines live in ``_em.py`` and ``_newton.py``, the parameter
layout they share in ``_layout.py``, the starts in ``_init.py``; this module holds the entry points.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._em import _compiled_em_stats, _em_stats, _run_em
from ._init import NearTruthInit, _init_auto, _init_near_truth
from ._layout import _Layout
from ._newton import _run_newton, measure
from .experts import check_expert
from .gates import canonical_gate, check_phi
from .model import MoEParams, _float_array, as_rng, check_data

__all__ = ["ConvergenceWarning", "NearTruthInit", "FitResult", "fit", "fit_batch", "METHODS"]

METHODS = ("auto", "em", "newton")


class ConvergenceWarning(UserWarning):
    """The best run of a fit did not meet its tolerance within ``max_iter`` iterations."""


@dataclass(frozen=True, eq=False)
class FitResult:
    """Outcome of one maximum-likelihood fit.

    Attributes
    ----------
    params : MoEParams
        The estimate (softmax-type gates canonicalised: last expert's gate parameters are 0).
    log_likelihood : float
        Total log-likelihood at ``params``.
    converged : bool
        The fit is at a stationary point: its Newton decrement per sample (``stationarity``) is
        at most ``gtol`` at ``params``, and its last accepted iteration changed the per-sample
        log-likelihood by at most ``tol``. A refused step is never read as convergence.
    n_iter : int
        Iterations run (EM and Newton together) by the best start.
    trace : ndarray of shape (n_accepted + 1,)
        Per-sample log-likelihood after each accepted iteration (never decreasing).
    grad_norm : float
        Euclidean norm of the gradient of the per-sample log-likelihood at ``params``, in the
        fitter's internal coordinates (standardised X, log-variances): depends on units; prefer
        ``stationarity``.
    status : str
        ``converged``, ``max_iter`` (iteration cap reached first) or ``stalled`` (neither EM nor
        trust-region Newton found an improving step, and the point is not stationary).
    variance_floor : float
        Lower bound applied to every variance (``variance_floor`` argument times var(y)).
    variance_floored : bool
        Some variance sits on the floor (a collapsed component: treat the estimate with care).
    seconds : float
        Wall time of the fit (a batch's time divided evenly over its data sets).
    method : str
    stationarity : float
        Newton decrement per sample at ``params``: ``g^T (-H)^-1 g / 2`` with g and H the gradient
        and Hessian of the per-sample log-likelihood, i.e. the gain (nats per sample) a full Newton
        step predicts. Scale-free: the same in any units or parametrisation.
    """

    params: MoEParams
    log_likelihood: float
    converged: bool
    n_iter: int
    trace: np.ndarray
    grad_norm: float
    status: str
    variance_floor: float
    variance_floored: bool
    seconds: float
    method: str = field(default="auto")
    stationarity: float = field(default=float("nan"))


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
    X = _float_array(Xs, "Xs")
    y = _float_array(ys, "ys")
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


def _check_real(value: Any, name: str, minimum: float, strict: bool) -> float:
    """A finite real number (Python or numpy) >= / > ``minimum``; ValueError naming ``name``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not np.isfinite(value) or (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}; got {value!r}")
    return float(value)


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
        See the module docstring. ``em`` needs a softmax gate and linear experts.
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

    Returns
    -------
    list of FitResult, one per data set.
    """
    t0 = time.perf_counter()
    X_np, y_np = _check_batch(Xs, ys)
    B, n, d = X_np.shape
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)) or n_experts < 1:
        raise ValueError(f"n_experts must be an int >= 1; got {n_experts!r}")
    k = int(n_experts)
    gate, top_k = canonical_gate(gate, top_k, k)
    layout = _Layout(gate, top_k, check_expert(expert), phi, k, d, bool(gate_bias))
    check_phi(phi)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if not gate_bias and gate != "competition":
        raise ValueError(f"gate_bias=False (a gate without intercepts) is for the competition gate only; got gate={gate!r}")
    em_ok = gate == "softmax" and expert == "linear"
    if method == "em" and not em_ok:
        raise ValueError(f"method='em' needs gate='softmax' and expert='linear'; got gate={gate!r}, expert={expert!r}; use 'newton'")
    if not (isinstance(n_init, (int, np.integer)) and n_init >= 1):
        raise ValueError(f"n_init must be an int >= 1; got {n_init!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1; got {max_iter!r}")
    tol = _check_real(tol, "tol", 0.0, strict=True)
    gtol = _check_real(gtol, "gtol", 0.0, strict=True)
    variance_floor = _check_real(variance_floor, "variance_floor", 0.0, strict=True)
    if isinstance(em_warmup, bool) or not isinstance(em_warmup, (int, np.integer)) or em_warmup < 0:
        raise ValueError(f"em_warmup must be an int >= 0; got {em_warmup!r}")
    if n <= layout.n_params:
        raise ValueError(f"n_samples={n} is too small: the model has {layout.n_params} free parameters; need more samples than that")
    _check_all_equal(y_np)
    if init not in ("auto", "near_truth"):
        raise ValueError(f"unknown init {init!r}; expected 'auto' or 'near_truth'")
    if init == "near_truth":
        _check_truth(truth, layout)
    opts = init_options or NearTruthInit()
    gens = _rngs(rng, B)
    # Fit in standardised inputs (each feature of each data set centred and scaled): gate logits
    # and expert pre-activations are affine in x, so the fitted model maps back exactly and the
    # fit does not depend on the units or the origin of X.
    centre, scale = X_np.mean(axis=1), X_np.std(axis=1)  # (B, d)
    scale = np.where(scale > 0, scale, 1.0)
    X_np = (X_np - centre[:, None]) / scale[:, None]

    # Starts: data set b, start r -> row b * n_init + r.
    starts = []
    for b in range(B):
        for _ in range(n_init):
            if init == "near_truth":  # the protocol's noise is in the units of the truth
                starts.append(_affine(_init_near_truth(truth, k, n, opts, gens[b]), centre[b], scale[b]))
            else:
                starts.append(_init_auto(layout, X_np[b], y_np[b], gens[b]))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = torch.float64
    X = torch.as_tensor(X_np, dtype=dt, device=dev).repeat_interleave(n_init, dim=0)
    y = torch.as_tensor(y_np, dtype=dt, device=dev).repeat_interleave(n_init, dim=0)
    floor = torch.as_tensor(variance_floor * y_np.var(axis=1), dtype=dt, device=dev).repeat_interleave(n_init)
    p0 = {
        name: None if starts[0][name] is None else torch.as_tensor(np.stack([s[name] for s in starts]), dtype=dt, device=dev)
        for name in ("gate_weight", "gate_bias", "expert_weight", "expert_bias", "variance")
    }
    p0["variance"] = torch.maximum(p0["variance"], floor[:, None])
    theta = layout.pack(p0)
    # Fit the rows in sub-batches of about _BATCH_POINTS data points: large tensors stream from
    # memory, small ones stay in cache. A row's result does not depend on its sub-batch.
    rows = max(1, _BATCH_POINTS // n)
    parts = [
        _engine(layout, theta[i:i + rows], X[i:i + rows], y[i:i + rows], floor[i:i + rows],
                tol=float(tol), gtol=float(gtol), max_iter=int(max_iter), method=method, em_ok=em_ok, em_warmup=em_warmup,
                compile_em=compile)
        for i in range(0, B * n_init, rows)
    ]
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "trace"}
    out["trace"] = [t for p in parts for t in p["trace"]]
    rows_centre, rows_scale = (np.repeat(v, n_init, axis=0) for v in (centre, scale))
    return _results(layout, out, floor, B, n, n_init, time.perf_counter() - t0, method, warn, float(gtol), (rows_centre, rows_scale))


def _affine(p: dict, centre: np.ndarray, scale: np.ndarray, inverse: bool = False) -> dict:
    """Parameters for inputs x to parameters for (x - centre) / scale, or back (``inverse``).

    Arrays may carry leading batch dimensions matching those of ``centre`` and ``scale`` (..., d).
    A slope w on x is w * scale on the standardised input, and the intercept gains w . centre.
    """
    out = dict(p)
    for w, b in (("gate_weight", "gate_bias"), ("expert_weight", "expert_bias")):
        if p.get(w) is None:
            continue
        if inverse:
            out[w] = p[w] / scale[..., None, :]
            if p.get(b) is not None:
                out[b] = p[b] - (out[w] * centre[..., None, :]).sum(-1)
        else:
            out[w] = p[w] * scale[..., None, :]
            if p.get(b) is not None:
                out[b] = p[b] + (p[w] * centre[..., None, :]).sum(-1)
    return out


_BATCH_POINTS = 2**18


def _engine(layout: _Layout, theta, X, y, floor, *, tol, gtol, max_iter, method, em_ok, em_warmup, compile_em=False) -> dict:
    """Run EM and/or Newton on a batch of rows; per-row outcome tensors and traces."""
    BR = theta.shape[0]
    dev, dt = theta.device, theta.dtype
    state = {
        "done": torch.zeros(BR, dtype=torch.bool, device=dev),
        "converged": torch.zeros(BR, dtype=torch.bool, device=dev),
        "stalled": torch.zeros(BR, dtype=torch.bool, device=dev),
        "n_iter": torch.zeros(BR, dtype=torch.long, device=dev),
        "f": torch.zeros(BR, dtype=dt, device=dev),
        "last_change": torch.full((BR,), float("inf"), dtype=dt, device=dev),
        "stationarity": torch.full((BR,), float("nan"), dtype=dt, device=dev),
        "grad": torch.zeros_like(theta),
        "trace": [],
        "max_iter": max_iter,
    }
    if em_ok and method in ("em", "auto"):
        steps = max_iter if method == "em" else min(em_warmup, max_iter)
        with torch.no_grad():
            stats_fn = _compiled_em_stats if compile_em else _em_stats
            p = _run_em(layout, layout.unpack(theta), X, y, floor, tol, gtol, steps, state, stats_fn, certify=method == "em")
        theta = layout.pack(p)
    # Newton takes over whatever EM left undone (in "em" mode: the rows whose EM step was refused).
    log_floor = torch.log(floor)
    theta = _run_newton(layout, theta, X, y, log_floor, tol, gtol, max_iter, state)
    missing = torch.nonzero(torch.isnan(state["stationarity"])).squeeze(1)
    if missing.numel():  # rows that ran out of EM iterations: measure where they stopped
        state["grad"][missing], state["stationarity"][missing] = measure(
            layout, theta[missing], X[missing], y[missing], log_floor[missing])
    values = torch.stack([v for v, _ in state["trace"]], 1).cpu().numpy()
    flags = torch.stack([m for _, m in state["trace"]], 1).cpu().numpy()
    return {
        "theta": theta.detach(), "f": state["f"], "converged": state["converged"], "stalled": state["stalled"],
        "n_iter": state["n_iter"], "grad_norm": state["grad"].norm(dim=1), "stationarity": state["stationarity"],
        "trace": [values[r][flags[r]] for r in range(BR)],
    }


def _check_truth(truth: Any, layout: _Layout) -> None:
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


def _results(layout: _Layout, out: dict, floor, B: int, n: int, n_init: int, seconds: float, method: str, warn: bool, gtol: float,
             standardised: tuple[np.ndarray, np.ndarray]) -> list[FitResult]:
    p = {name: None if v is None else v.detach().cpu().numpy() for name, v in layout.unpack(out["theta"]).items()}
    p = _affine(p, *standardised, inverse=True)
    f, floor = out["f"].cpu().numpy(), floor.cpu().numpy()
    conv_all, stalled, n_iter, grad_norm, stat = (
        out[key].cpu().numpy() for key in ("converged", "stalled", "n_iter", "grad_norm", "stationarity"))
    floored = (p["variance"] <= floor[:, None] * (1 + 1e-9)).any(1)
    results = []
    for b in range(B):
        rows = list(range(b * n_init, (b + 1) * n_init))
        best = max(rows, key=lambda r: float(f[r]))
        conv = bool(conv_all[best])
        status = "converged" if conv else ("stalled" if bool(stalled[best]) else "max_iter")
        res = FitResult(
            params=layout.to_params(p, best),
            log_likelihood=float(f[best]) * n,
            converged=conv,
            n_iter=int(n_iter[best]),
            trace=out["trace"][best],
            grad_norm=float(grad_norm[best]),
            status=status,
            variance_floor=float(floor[best]),
            variance_floored=bool(floored[best]),
            seconds=seconds / B,
            method=method,
            stationarity=float(stat[best]),
        )
        results.append(res)
        if warn and not conv:
            warnings.warn(
                f"data set {b}: the best of {n_init} start(s) did not converge ({status}) after "
                f"{res.n_iter} iterations (Newton decrement {res.stationarity:.2e} nats per sample, "
                f"gtol {gtol:.0e}); raise max_iter or try more starts",
                ConvergenceWarning, stacklevel=3,
            )
    return results


def fit(
    X: Any,
    y: Any,
    n_experts: int,
    *,
    rng: Any = None,
    **kwargs: Any,
) -> FitResult:
    """Fit one data set by maximum likelihood; see :func:`fit_batch` for every option.

    ``X`` has shape (n, d) (or (n,) for d = 1), ``y`` shape (n,). ``rng`` seeds this data set's
    starts exactly as ``fit_batch(..., rng=[rng])`` would, so both give the same numbers.
    """
    Xt, yt = check_data(X, y)
    X, y = Xt.numpy(), yt.numpy()
    if rng is None:
        rng = np.random.SeedSequence().entropy
    return fit_batch(X[None], y[None], n_experts, rng=[rng], **kwargs)[0]
