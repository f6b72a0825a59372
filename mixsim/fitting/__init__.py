"""Batched maximum-likelihood fitting of Gaussian mixtures of experts (the package behind :func:`mixsim.fit`).

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
EM pass with ``torch.compile``.

Modules, in the order a fit runs through them:

``api``
    :func:`fit` and :func:`fit_batch`: input checks, one :class:`FitOptions`, standardising X.
``starts``
    The starts: near the truth (:class:`NearTruthInit`) or from the data alone.
``layout``
    The flat parameter rows theta the engines work on, and the map between units of X.
``engine``
    The EM -> Newton driver and its typed per-row state (:class:`~mixsim.fitting.engine.EngineState`).
``em``, ``newton``, ``derivatives``
    The two engines, and the log-likelihood's gradient and exact Hessian Newton uses.
``result``
    :class:`FitResult` per data set (the best start), :class:`ConvergenceWarning`.
"""
from __future__ import annotations

from ..options import METHODS, FitOptions, NearTruthInit
from .api import DEFAULT, INITS, fit, fit_batch
from .result import ConvergenceWarning, FitResult, SearchRecord

__all__ = ["fit", "fit_batch", "FitResult", "SearchRecord", "FitOptions", "NearTruthInit", "ConvergenceWarning",
           "METHODS", "INITS", "DEFAULT"]
