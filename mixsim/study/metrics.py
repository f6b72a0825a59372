"""What a study measures: one registry of metrics, each a function of one :class:`MetricContext`.

A metric maps the context of one fit (the spec, the fit's result, n, the fitted k, the replicate's
seed, the runner's hooks and a per-replicate cache) to ``{row metric name: value}``: one row per
name (``groups`` gives one per parameter group, ``cells`` one per cell statistic). To add a metric,
write such a function and register it in :data:`REGISTRY`; a spec may then request it by name
(``kind = "mle"`` metrics) and ``mixsim evaluate`` can compute it from stored estimates.

Network studies (``kind = "nn"``) measure :data:`~mixsim.study.nn_options.NN_METRICS` on held-out
predictions (:class:`HeldOut`), computed by :func:`mixsim.study.run_nn_task` through the same registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..model import sample_x
from .seeds import replicate_streams

__all__ = [
    "MetricContext", "HeldOut", "Metric", "REGISTRY", "MLE_METRICS", "METRICS", "metric_applies",
    "planned_metrics", "failed_metric_names", "compute_metrics",
]


@dataclass
class MetricContext:
    """Everything a metric may read about one fit.

    Attributes
    ----------
    spec : StudySpec or None
        The study, with ``truth`` set to the fit's truth (None for a network task).
    result : Any
        A :class:`mixsim.FitResult`, anything with ``params`` and ``log_likelihood`` (a stored
        estimate), or a :class:`HeldOut` (a network task).
    n : int
        Sample size.
    k : int
        Fitted number of experts.
    seed : int
        The replicate's seed (:func:`mixsim.study.replicate_seed`).
    hooks : RunnerHooks or None
        Where the loss functions come from (:class:`mixsim.study.RunnerHooks`).
    cache : dict
        Shared by every fit of one (n, replicate): the Monte Carlo inputs of the density distances.
    """

    spec: Any  # a StudySpec (not imported: the spec imports this registry), or None
    result: Any
    n: int
    k: int
    seed: int
    hooks: Any = None
    cache: dict = field(default_factory=dict)

    def loss(self, name: str) -> Callable:
        """The loss function ``name`` of :mod:`mixsim.losses` (or its replacement in the hooks)."""
        return self.hooks.get(name)


@dataclass(frozen=True)
class HeldOut:
    """A trained network's predictions on the held-out inputs, tensors of shape (n_test,)."""

    prediction: Any
    labels: Any  # noisy test labels
    mean: Any  # the teacher's mean at the test inputs


def _always(k: int, true_k: int | None) -> bool:
    return True


@dataclass(frozen=True)
class Metric:
    """One entry of the registry: its name, what it records, where it applies, and its function."""

    name: str
    description: str
    compute: Callable[[MetricContext], dict[str, float]]
    applies: Callable[[int, int | None], bool] = _always  # (fitted k, true k) -> recorded?
    kind: str = "mle"


# ---------------------------------------------------------------------------------------------
# the metrics of a fitted model (kind = "mle")
# ---------------------------------------------------------------------------------------------

def _d1(ctx: MetricContext) -> dict[str, float]:
    return {"D1": ctx.loss("voronoi_loss")(ctx.result.params, ctx.spec.truth, kind="D1")}


def _d2(ctx: MetricContext) -> dict[str, float]:
    exponents = ctx.spec.losses.get("d2_exponents")
    return {"D2": ctx.loss("voronoi_loss")(ctx.result.params, ctx.spec.truth, kind="D2", exponents=exponents)}


def _groups(ctx: MetricContext) -> dict[str, float]:
    return dict(ctx.loss("group_errors")(ctx.result.params, ctx.spec.truth))


def _cells(ctx: MetricContext) -> dict[str, float]:
    return {f"cells_{key}": v for key, v in ctx.loss("cell_diagnosis")(ctx.result.params, ctx.spec.truth).items()}


def eval_inputs(spec: Any, seed: int) -> np.ndarray:
    """The Monte Carlo inputs of the density distances of a replicate (its evaluation stream)."""
    rng = np.random.default_rng(replicate_streams(seed).eval)
    return sample_x(int(spec.losses["n_mc"]), spec.truth.dim, spec.x_dist, rng)


def _density(name: str, loss: str) -> Callable[[MetricContext], dict[str, float]]:
    def metric(ctx: MetricContext) -> dict[str, float]:
        if "X" not in ctx.cache:  # the same Monte Carlo inputs for every fit at this (n, replicate)
            ctx.cache["X"] = eval_inputs(ctx.spec, ctx.seed)
        return {name: ctx.loss(loss)(ctx.result.params, ctx.spec.truth, X=ctx.cache["X"])}
    return metric


def _loglik(ctx: MetricContext) -> dict[str, float]:
    return {"loglik": ctx.result.log_likelihood / ctx.n}


# ---------------------------------------------------------------------------------------------
# the metrics of a trained network (kind = "nn")
# ---------------------------------------------------------------------------------------------

def _test_mse(ctx: MetricContext) -> dict[str, float]:
    return {"test_mse": float((ctx.result.prediction - ctx.result.labels).square().mean())}


def _excess_mse(ctx: MetricContext) -> dict[str, float]:
    return {"excess_mse": float((ctx.result.prediction - ctx.result.mean).square().mean())}


#: Every metric, by name.
REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("D1", "Voronoi loss D1, recorded only where fitted_k == true k (exact-fitted)", _d1,
           applies=lambda k, true_k: k == true_k),
    Metric("D2", "Voronoi loss D2, recorded only where fitted_k > true k (skipped otherwise)", _d2,
           applies=lambda k, true_k: k > true_k),
    Metric("groups", "per-parameter-group errors with exponent 1, one row per key of losses.group_errors", _groups),
    Metric("cells", "Voronoi cell diagnosis: atoms per true atom's cell and the smallest mass share in it (losses.cell_diagnosis)", _cells),
    Metric("hellinger", "expected Hellinger distance between fitted and true conditional densities", _density("hellinger", "hellinger")),
    Metric("tv", "expected total-variation distance between fitted and true conditional densities", _density("tv", "total_variation")),
    Metric("loglik", "mean per-sample log-likelihood of the fit on its training data", _loglik),
    Metric("test_mse", "held-out mean squared error against noisy test labels", _test_mse, kind="nn"),
    Metric("excess_mse", "held-out mean squared error against the teacher's mean (goes to 0 as n grows)", _excess_mse, kind="nn"),
)}

#: Metric names a ``kind = "mle"`` spec may request, with what each records (one or more rows per fit).
MLE_METRICS: dict[str, str] = {m.name: m.description for m in REGISTRY.values() if m.kind == "mle"}
METRICS = MLE_METRICS  # the name mixsim.study has always exported


def metric_applies(spec: Any, metric: str, k: int) -> bool:
    """Whether a metric is recorded for a model with k experts: D1 only when exact-fitted, D2 only when over-fitted."""
    return REGISTRY[metric].applies(k, spec.true_k)


def planned_metrics(spec: Any, k: int) -> list[str]:
    """Requested metrics that apply to a model with k experts (:func:`metric_applies`)."""
    return [m for m in spec.metrics if metric_applies(spec, m, k)]


def failed_metric_names(spec: Any, gate: Any, k: int, hooks: Any) -> list[str]:
    """Metric names of a fit that failed: the requested ones, with "groups" expanded to its keys."""
    names = []
    for m in planned_metrics(spec, k):
        if m == "groups":
            try:
                names.extend(hooks.get("group_error_keys")(gate.name))
                continue
            except Exception:  # noqa: BLE001 - no key list: one "groups" row stands for them
                pass
        names.append(m)
    return names


def compute_metrics(names: Sequence[str], ctx: MetricContext) -> dict[str, float]:
    """The rows of several metrics of one fit, merged in order (a metric that raises propagates)."""
    out: dict[str, float] = {}
    for name in names:
        out |= REGISTRY[name].compute(ctx)
    return out


measure = compute_metrics  # deprecated: the earlier name (mixsim.fitting.newton.measure is another thing)
