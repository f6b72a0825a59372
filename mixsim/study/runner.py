"""Running one task: the fits of a block of replicates and their metric rows (or one network task).

Tasks. A task is a block of replicates of one n for one (gate, fitted k), fitted in one call of the
batched engine with one start seed per data set (:mod:`mixsim.study.seeds`); ``kind = "nn"``
studies run one task per (n, r) through :func:`mixsim.study.run_nn_task`. Each fit's metrics come from
the registry of :mod:`mixsim.study.metrics`. (The batched engine agrees with other blockings of the
replicates to rounding only, about 1e-11 relative, so a results directory keeps the block size it
was created with.) :func:`mixsim.study.run_study` runs the tasks in parallel.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import losses
from ..fitting import fit_batch
from ..model import sample
from ..options import FitOptions, NearTruthInit
from .plan import ESTIMATOR_OF_INIT, fit_label, plan_units, study_fits
from .metrics import MetricContext, REGISTRY, failed_metric_names, planned_metrics
from .nn_task import run_nn_task
from .results import FAILED_STATUSES, iter_rows
from .seeds import replicate_seed, replicate_streams
from .spec import GateSpec, StudySpec
from .threads import torch_threads

__all__ = [
    "RunnerHooks", "Task", "task_data", "fit_label", "plan_units", "plan_tasks", "fit_options", "fit_kwargs", "estimate_record",
    "unit_estimates",
    "metric_rows", "run_task",
]

_ERROR_CHARS = 2000


# ---------------------------------------------------------------------------------------------
# the hooks: what fits and measures (injectable, for tests and extensions)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunnerHooks:
    """The functions a task calls; None means the package's own.

    Every field must be picklable (a module-level function) to reach process-based workers.

    Attributes
    ----------
    fit_batch : callable, default :func:`mixsim.fit_batch`
    voronoi_loss, group_errors, group_error_keys, cell_diagnosis, hellinger, total_variation : callable, default :mod:`mixsim.losses`
    nn_task : callable, default :func:`mixsim.study.run_nn_task`
    """

    fit_batch: Callable | None = None
    voronoi_loss: Callable | None = None
    group_errors: Callable | None = None
    group_error_keys: Callable | None = None
    cell_diagnosis: Callable | None = None
    hellinger: Callable | None = None
    total_variation: Callable | None = None
    nn_task: Callable | None = None

    def get(self, name: str) -> Callable:
        """The function ``name``: the one given, else the package's own."""
        fn = getattr(self, name)
        if fn is not None:
            return fn
        if name == "fit_batch":
            return fit_batch
        if name == "nn_task":
            return run_nn_task
        return getattr(losses, name)




# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One unit of scheduling: replicates of one n for one fit (a gate and a fitted k, or the network study)."""

    n: int
    replicates: tuple[int, ...]
    fit: str  # "<gate label>_k<k>" or "nn"
    gate: GateSpec | None = None
    fitted_k: int | None = None
    truth: int | None = None  # index into spec.truths (None: a one-truth study)

    def to_dict(self) -> dict[str, Any]:
        doc = {"n": self.n, "replicates": list(self.replicates), "fit": self.fit}
        return doc if self.truth is None else doc | {"truth": self.truth}


def plan_tasks(spec: StudySpec, done: set[tuple[int, int, str]] = frozenset(), block_size: int | None = None) -> list[Task]:
    """Tasks covering the units not in ``done``, largest n first (long tasks start early).

    Replicates are cut into blocks at fixed boundaries (multiples of ``block_size``), and a task
    holds the missing replicates of one block, so a rerun forms the same blocks as the first run.
    """
    block = 1 if spec.kind == "nn" else int(block_size or spec.block_size)
    tasks = []
    for n in sorted(spec.n_values, reverse=True):
        for label, gate, k, truth in study_fits(spec):
            for start in range(0, spec.replications, block):
                reps = tuple(r for r in range(start, min(start + block, spec.replications)) if (n, r, label) not in done)
                if reps:
                    tasks.append(Task(n=n, replicates=reps, fit=label, gate=gate, fitted_k=k, truth=truth))
    return tasks


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------

def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def _row(spec: StudySpec, n: int, r: int, seed: int, gate: str, k: int, metric: str, value: float, **info: Any) -> dict[str, Any]:
    row = {
        "study": spec.name, "n": n, "replicate": r, "gate": gate, "fitted_k": k, "metric": metric,
        "value": float(value), "seed": seed, "converged": False, "iterations": -1,
        "seconds": math.nan, "status": "ok", "grad_norm": math.nan, "error": "", "truth": 0, "estimator": "",
    }
    row.update(info)
    return row


def _fit_info(res: Any) -> dict[str, Any]:
    return {
        "converged": bool(res.converged), "iterations": int(res.n_iter), "seconds": float(res.seconds),
        "status": str(res.status), "grad_norm": float(res.grad_norm),
        "stationarity": float(getattr(res, "stationarity", math.nan)),
    }


def _params_record(p: Any) -> dict[str, Any]:
    arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64).tolist()  # noqa: E731
    return {
        "gate": p.gate, "top_k": p.top_k, "expert": p.expert, "phi": p.phi,
        "gate_weight": arr(p.gate_weight), "gate_bias": arr(p.gate_bias),
        "expert_weight": arr(p.expert_weight), "expert_bias": arr(p.expert_bias), "variance": arr(p.variance),
    }


def _certificate(res: Any) -> dict[str, Any]:
    """A fit's certificate (issue 19): excess log-likelihood over the truth, the active variance
    bounds, and the search record (hits, starts, the winning kind, the protocol's optimum)."""
    excess = getattr(res, "excess_loglik", None)
    out: dict[str, Any] = {
        "excess_loglik": None if excess is None else float(excess),
        "variance_bounded": bool(getattr(res, "variance_bounded", False)),
        "bounds_active": list(getattr(res, "bounds_active", ())),
    }
    search = getattr(res, "search", None)
    if search is not None:
        out["search"] = {
            "init": search.init, "n_starts": int(search.n_starts), "n_continued": int(search.n_continued),
            "n_failed": int(search.n_failed), "hits": int(search.hits), "hit_tol": float(search.hit_tol),
            "winner": search.winner,
            "protocol_loglik": None if search.protocol_loglik is None else float(search.protocol_loglik),
        }
        if search.protocol is not None:  # the reference protocol's estimate, from the same search
            out["protocol"] = {"params": _params_record(search.protocol.params),
                               "log_likelihood": float(search.protocol.log_likelihood), **_fit_info(search.protocol),
                               **{k: v for k, v in _certificate(search.protocol).items() if k != "search"},
                               "estimator": "protocol"}
    return out


def unit_estimates(res: Any, init: str) -> list[tuple[str, Any]]:
    """A unit's estimates as ``(estimator, fit result)``: the returned fit, named by ``init``
    (:data:`~mixsim.study.plan.ESTIMATOR_OF_INIT`), then a search's reference-protocol optimum."""
    out = [(ESTIMATOR_OF_INIT[init], res)]
    search = getattr(res, "search", None)
    if search is not None and search.protocol is not None:
        out.append(("protocol", search.protocol))
    return out


def estimate_record(res: Any, seed: int, estimator: str = "") -> dict[str, Any]:
    """A fit's estimate, outcome and certificate as plain JSON values (floats round-trip exactly
    through JSON); ``estimator`` names it (a search's record holds its protocol's under ``"protocol"``)."""
    return {"params": _params_record(res.params), "log_likelihood": float(res.log_likelihood), "seed": int(seed),
            **_fit_info(res), **_certificate(res), "estimator": estimator}


def metric_rows(spec: StudySpec, metric: str, n: int, r: int, seed: int, label: str, k: int, res: Any,
                info: dict[str, Any], hooks: RunnerHooks, cache: dict, rows: list[dict[str, Any]]) -> str | None:
    """Append the rows of one metric of one fit to ``rows``; a metric that raises gives one
    ``metric_error`` row, and its traceback is returned (else None): the study goes on. A
    non-finite value is kept but marked ``metric_error`` with its name in ``error``."""
    try:
        values = REGISTRY[metric].compute(MetricContext(spec, res, n, k, seed, hooks, cache))
    except Exception as exc:  # noqa: BLE001 - recorded, the study goes on
        rows.append(_row(spec, n, r, seed, label, k, metric, math.nan, **(info | {"status": "metric_error", "error": _error_text(exc)})))
        return traceback.format_exc()[-_ERROR_CHARS:]
    bad = {name: value for name, value in values.items() if not math.isfinite(float(value))}
    for name, value in values.items():  # a non-finite value is a failed measurement, named, never a silent inf
        error = {"status": "metric_error", "error": f"{name} = {float(value)}: not finite"} if name in bad else {}
        rows.append(_row(spec, n, r, seed, label, k, name, value, **(info | error)))
    return f"metric {metric}: non-finite values {bad}" if bad else None


# ---------------------------------------------------------------------------------------------
# a task of a kind = "mle" study
# ---------------------------------------------------------------------------------------------

def _unit_rows(spec: StudySpec, task: Task, r: int, seed: int, res: Any, hooks: RunnerHooks) -> tuple[list[dict], bool, str | None]:
    """Rows of one fitted replicate; a metric that raises gets a ``metric_error`` row and the others go on."""
    label, k = task.gate.label, task.fitted_k
    spec = spec.for_truth(task.truth)
    if isinstance(res, BaseException):
        info = {"status": "error", "error": _error_text(res), "truth": task.truth or 0,
                "estimator": ESTIMATOR_OF_INIT[spec.fit.init]}
        rows = [_row(spec, task.n, r, seed, label, k, m, math.nan, **info) for m in failed_metric_names(spec, task.gate, k, hooks)]
        return rows, True, "".join(traceback.format_exception(res))[-_ERROR_CHARS:]
    rows, failed, tb = [], False, None
    for estimator, fit in unit_estimates(res, spec.fit.init):  # a search: its best, then the protocol's optimum
        info, cache = _fit_info(fit) | {"truth": task.truth or 0, "estimator": estimator}, {}
        if info["status"] == "non_finite":
            info["error"] = "the fit's log-likelihood or estimate is not finite"
        for m in planned_metrics(spec, k):
            metric_tb = metric_rows(spec, m, task.n, r, seed, label, k, fit, info, hooks, cache, rows)
            if metric_tb is not None:
                failed, tb = True, metric_tb
    return rows, failed, tb


def fit_options(spec: StudySpec, task: Task) -> FitOptions:
    """The one :class:`~mixsim.options.FitOptions` of a task's fits: the ``[fit]`` table's options,
    then ``[fit.options]``, then the gate's own (each default written once, in FitOptions)."""
    fs = spec.fit
    declared = dict(n_init=fs.n_init(task.fitted_k, spec.true_k), tol=fs.tol, gtol=fs.gtol, max_iter=fs.max_iter,
                    method=fs.method)
    return FitOptions(**(declared | dict(fs.options) | dict(task.gate.options)))


def fit_kwargs(spec: StudySpec, task: Task) -> dict[str, Any]:
    """The keyword arguments of :func:`mixsim.fit_batch` for the fits of a task: the model, the
    start, and ``options`` (:func:`fit_options`), which travels whole to the engine."""
    fs = spec.fit
    kwargs = dict(gate=task.gate.name, top_k=task.gate.top_k, expert=fs.expert, init=fs.init, warn=False,
                  options=fit_options(spec, task))
    if fs.init in ("near_truth", "search"):  # search: the protocol's starts beside its own
        kwargs |= dict(truth=spec.for_truth(task.truth).truth, init_options=NearTruthInit(**dict(fs.near_truth)))
    return kwargs


def task_data(spec: StudySpec, n: int, replicate: int, truth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate the data set ``(X, y)`` of replicate ``replicate`` at sample size ``n`` of a study
    (of truth ``truth`` in a study with several), from the replicate's data stream."""
    seed = replicate_seed(spec.root_seed, n, replicate, truth)
    data = np.random.default_rng(replicate_streams(seed).data)
    return sample(spec.for_truth(truth).truth, n, rng=data, x_dist=spec.x_dist, sampling=spec.sampling)


def _fit_block(spec: StudySpec, task: Task, seeds: list[int], hooks: RunnerHooks) -> list[Any]:
    """Fit the task's data sets in one batched call; if it raises, one at a time (same seeds, same results)."""
    data = [task_data(spec, task.n, r, task.truth) for r in task.replicates]
    Xs, ys = np.stack([X for X, _ in data]), np.stack([y for _, y in data])
    starts = [replicate_streams(seed).init for seed in seeds]
    fit, kwargs = hooks.get("fit_batch"), fit_kwargs(spec, task)
    try:
        return list(fit(Xs, ys, task.fitted_k, rng=starts, **kwargs))
    except Exception as exc:  # noqa: BLE001 - isolate the failing data set(s)
        if len(data) == 1:
            return [exc]
    results: list[Any] = []
    for i in range(len(data)):
        try:
            results.append(fit(Xs[i:i + 1], ys[i:i + 1], task.fitted_k, rng=[starts[i]], **kwargs)[0])
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
    return results


def _run_mle(spec: StudySpec, task: Task, hooks: RunnerHooks) -> list[dict[str, Any]]:
    seeds = [replicate_seed(spec.root_seed, task.n, r, task.truth) for r in task.replicates]
    try:
        results = _fit_block(spec, task, seeds, hooks)
    except Exception as exc:  # noqa: BLE001 - e.g. sampling failed; every unit fails
        results = [exc] * len(task.replicates)
    units = []
    for r, seed, res in zip(task.replicates, seeds, results):
        rows, failed, tb = _unit_rows(spec, task, r, seed, res, hooks)
        unit = {"replicate": r, "failed": failed, "rows": rows, "traceback": tb}
        if not isinstance(res, BaseException):  # every estimate is kept: metrics can be recomputed
            unit["estimate"] = estimate_record(res, seed, ESTIMATOR_OF_INIT[spec.fit.init]) | {
                "gate_label": task.gate.label, "fitted_k": task.fitted_k, "truth": task.truth or 0}
        units.append(unit)
    return units


# ---------------------------------------------------------------------------------------------
# a task of a kind = "nn" study
# ---------------------------------------------------------------------------------------------

def _nn_row(spec: StudySpec, n: int, r: int, seed: int, k: int, record: dict[str, Any]) -> dict[str, Any]:
    """A table row from one record of run_nn_task, whose status is "ok" or the error text."""
    status = str(record.get("status", "ok"))
    ok = status in ("ok", "converged")
    return _row(spec, n, r, seed, str(record["router"]), k, str(record["metric"]), record["value"],
                converged=bool(record.get("converged", ok)), iterations=int(record.get("iterations", -1)),
                seconds=float(record.get("seconds", math.nan)), status=status if ok else "error",
                error=str(record.get("error", "" if ok else status))[:_ERROR_CHARS])


def _run_nn(spec: StudySpec, task: Task, hooks: RunnerHooks) -> list[dict[str, Any]]:
    (r,) = task.replicates
    seed = replicate_seed(spec.root_seed, task.n, r)
    k = int(spec.nn["n_experts"])
    try:
        rows = [_nn_row(spec, task.n, r, seed, k, record) for record in hooks.get("nn_task")(dict(spec.nn), task.n, seed)]
        failed = any(row["status"] in FAILED_STATUSES for row in rows)
        return [{"replicate": r, "failed": failed, "rows": rows, "traceback": None}]
    except Exception as exc:  # noqa: BLE001
        row = _row(spec, task.n, r, seed, "nn", k, "nn", math.nan, status="error", error=_error_text(exc))
        return [{"replicate": r, "failed": True, "rows": [row], "traceback": traceback.format_exc()[-_ERROR_CHARS:]}]


def run_task(spec: StudySpec, task: Task, engine: RunnerHooks | None = None) -> tuple[Task, list[dict[str, Any]], float]:
    """Run one task (in a worker); return it, its units (rows, failed flag, traceback) and seconds.

    Torch runs single-threaded inside a task (restored afterwards): the workers are the
    parallelism, and one thread count everywhere keeps results identical across backends.
    ``engine`` is the :class:`RunnerHooks` (default: the package's own functions).
    """
    hooks = engine or RunnerHooks()
    t0 = time.perf_counter()
    with torch_threads(1):
        units = _run_nn(spec, task, hooks) if spec.kind == "nn" else _run_mle(spec, task, hooks)
    for unit in units:
        unit["rows"] = iter_rows(unit["rows"])
    return task, units, time.perf_counter() - t0
