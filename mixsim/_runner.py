"""Running a study: seeds from grid coordinates, tasks of batched replicates, joblib (or Dask) execution.

Seeds. Replicate ``r`` at sample size ``n`` gets the integer seed
``replicate_seed(root_seed, n, r)``, drawn from ``SeedSequence(root_seed, spawn_key=(n, r))`` (in a study
with several truths, ``spawn_key=(n, r, truth)``: the truth index is part of the key); from it
come three independent streams, ``SeedSequence(seed, spawn_key=(i,))`` for i = 0 (data), 1 (the fit's
starts) and 2 (Monte Carlo inputs of the density distances). Every gate and fitted k at one (n, r)
sees the same data set, the same start noise and the same evaluation inputs, so gate comparisons are
paired; and a replicate's numbers depend on (root_seed, n, r) only, never on the number of jobs or
the backend. (The batched engine agrees with other blockings of the replicates to rounding only,
about 1e-11 relative, so a results directory keeps the block size it was created with.)

Tasks. A task is a block of replicates of one n for one (gate, fitted k), fitted in one call of the
batched engine with one start seed per data set; ``kind = "nn"`` studies run one task per (n, r).
Tasks run through joblib; the parent process writes each finished task to its own file.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from . import _results
from ._study_spec import GateSpec, StudySpec, load_study
from .model import sample, sample_x

__all__ = [
    "BACKENDS",
    "Engine",
    "Task",
    "replicate_seed",
    "replicate_streams",
    "task_data",
    "plan_units",
    "plan_tasks",
    "run_task",
    "run_study",
]

BACKENDS = ("loky", "threading", "sequential", "dask")
_ERROR_CHARS = 2000


# ---------------------------------------------------------------------------------------------
# seeds and data
# ---------------------------------------------------------------------------------------------

def replicate_seed(root_seed: int, n: int, replicate: int, truth: int | None = None) -> int:
    """The integer seed of replicate ``replicate`` at sample size ``n`` (63 bits; stored in every row).

    In a study with several truths the truth index is part of the key: ``spawn_key=(n, r, truth)``.
    """
    key = (int(n), int(replicate)) if truth is None else (int(n), int(replicate), int(truth))
    state = np.random.SeedSequence(root_seed, spawn_key=key).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))  # < 2**63, fits an int64 column


@dataclass(frozen=True)
class Streams:
    """The independent random streams of one replicate."""

    data: np.random.SeedSequence
    init: np.random.SeedSequence
    eval: np.random.SeedSequence


def replicate_streams(seed: int) -> Streams:
    """Data, start and evaluation streams of a replicate, from its integer seed."""
    return Streams(*(np.random.SeedSequence(int(seed), spawn_key=(i,)) for i in range(3)))


def task_data(spec: StudySpec, n: int, replicate: int, truth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate the data set ``(X, y)`` of replicate ``replicate`` at sample size ``n`` of a study
    (of truth ``truth`` in a study with several)."""
    seed = replicate_seed(spec.root_seed, n, replicate, truth)
    return sample(spec.for_truth(truth).truth, n, rng=np.random.default_rng(replicate_streams(seed).data), x_dist=spec.x_dist)


# ---------------------------------------------------------------------------------------------
# the engine: what fits and measures (injectable, for tests and extensions)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Engine:
    """The functions a task calls; None means the package's own (imported in the worker).

    Every field must be picklable (a module-level function) to reach process-based workers.

    Attributes
    ----------
    fit_batch : callable, default :func:`mixsim.fit.fit_batch`
    voronoi_loss, group_errors, group_error_keys, cell_diagnosis, hellinger, total_variation : callable, default :mod:`mixsim.losses`
    nn_task : callable, default :func:`mixsim.nn.run_nn_task`
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
        fn = getattr(self, name)
        if fn is not None:
            return fn
        if name == "fit_batch":
            from .fitting import fit_batch
            return fit_batch
        if name == "nn_task":
            from .nn import run_nn_task
            return run_nn_task
        from . import losses
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


def fit_label(gate: GateSpec, k: int, truth: int | None = None) -> str:
    """The unit's fit name: ``<gate label>_k<k>``, and ``_t<truth>`` in a study with several truths."""
    return f"{gate.label}_k{k}" + ("" if truth is None else f"_t{truth}")


def _fits(spec: StudySpec) -> list[tuple[str, GateSpec | None, int | None, int | None]]:
    if spec.kind == "nn":
        return [("nn", None, None, None)]
    truths = range(len(spec.truths)) if spec.ensemble else [None]
    return [(fit_label(g, k, j), g, k, j) for j in truths for g in spec.fit.gates for k in spec.fit.fitted_k]


def plan_units(spec: StudySpec) -> list[tuple[int, int, str]]:
    """Every unit key (n, replicate, fit) of a study."""
    return [(n, r, label) for n in spec.n_values for label, *_ in _fits(spec) for r in range(spec.replications)]


def plan_tasks(spec: StudySpec, done: set[tuple[int, int, str]] = frozenset(), block_size: int | None = None) -> list[Task]:
    """Tasks covering the units not in ``done``, largest n first (long tasks start early).

    Replicates are cut into blocks at fixed boundaries (multiples of ``block_size``), and a task
    holds the missing replicates of one block, so a rerun forms the same blocks as the first run.
    """
    block = 1 if spec.kind == "nn" else int(block_size or spec.block_size)
    tasks = []
    for n in sorted(spec.n_values, reverse=True):
        for label, gate, k, truth in _fits(spec):
            for start in range(0, spec.replications, block):
                reps = tuple(r for r in range(start, min(start + block, spec.replications)) if (n, r, label) not in done)
                if reps:
                    tasks.append(Task(n=n, replicates=reps, fit=label, gate=gate, fitted_k=k, truth=truth))
    return tasks


# ---------------------------------------------------------------------------------------------
# one task
# ---------------------------------------------------------------------------------------------

def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def _row(spec: StudySpec, n: int, r: int, seed: int, gate: str, k: int, metric: str, value: float, **info: Any) -> dict[str, Any]:
    row = {
        "study": spec.name, "n": n, "replicate": r, "gate": gate, "fitted_k": k, "metric": metric,
        "value": float(value), "seed": seed, "converged": False, "iterations": -1,
        "seconds": math.nan, "status": "ok", "grad_norm": math.nan, "error": "", "truth": 0,
    }
    row.update(info)
    return row


def metric_applies(spec: StudySpec, metric: str, k: int) -> bool:
    """Whether a metric is recorded for a model with k experts: D1 only when exact-fitted, D2 only when over-fitted."""
    return {"D1": k == spec.true_k, "D2": k > spec.true_k}.get(metric, True)


def _planned_metrics(spec: StudySpec, k: int) -> list[str]:
    """Requested metrics that apply to a model with k experts (:func:`metric_applies`)."""
    return [m for m in spec.metrics if metric_applies(spec, m, k)]


def _failed_metric_names(spec: StudySpec, gate: GateSpec, k: int, engine: Engine) -> list[str]:
    """Metric names of a fit that failed: the requested ones, with "groups" expanded to its keys."""
    names = []
    for m in _planned_metrics(spec, k):
        if m == "groups":
            try:
                names.extend(engine.get("group_error_keys")(gate.name))
                continue
            except Exception:  # noqa: BLE001 - no key list: one "groups" row stands for them
                pass
        names.append(m)
    return names


def _eval_inputs(spec: StudySpec, seed: int) -> np.ndarray:
    rng = np.random.default_rng(replicate_streams(seed).eval)
    return sample_x(int(spec.losses["n_mc"]), spec.truth.dim, spec.x_dist, rng)


# Each metric maps (spec, fit result, n, k, seed, engine, cache) to {metric name: value}.
def _m_d1(spec, res, n, k, seed, engine, cache):
    return {"D1": engine.get("voronoi_loss")(res.params, spec.truth, kind="D1")}


def _m_d2(spec, res, n, k, seed, engine, cache):
    return {"D2": engine.get("voronoi_loss")(res.params, spec.truth, kind="D2", exponents=spec.losses.get("d2_exponents"))}


def _m_groups(spec, res, n, k, seed, engine, cache):
    return dict(engine.get("group_errors")(res.params, spec.truth))


def _m_cells(spec, res, n, k, seed, engine, cache):
    return {f"cells_{key}": v for key, v in engine.get("cell_diagnosis")(res.params, spec.truth).items()}


def _m_density(name: str, fn: str) -> Callable:
    def metric(spec, res, n, k, seed, engine, cache):
        if "X" not in cache:  # the same Monte Carlo inputs for every fit at this (n, replicate)
            cache["X"] = _eval_inputs(spec, seed)
        return {name: engine.get(fn)(res.params, spec.truth, X=cache["X"])}
    return metric


def _m_loglik(spec, res, n, k, seed, engine, cache):
    return {"loglik": res.log_likelihood / n}


METRIC_FNS: dict[str, Callable] = {
    "D1": _m_d1,
    "D2": _m_d2,
    "groups": _m_groups,
    "cells": _m_cells,
    "hellinger": _m_density("hellinger", "hellinger"),
    "tv": _m_density("tv", "total_variation"),
    "loglik": _m_loglik,
}


def _fit_info(res: Any) -> dict[str, Any]:
    return {
        "converged": bool(res.converged), "iterations": int(res.n_iter), "seconds": float(res.seconds),
        "status": str(res.status), "grad_norm": float(res.grad_norm),
        "stationarity": float(getattr(res, "stationarity", math.nan)),
    }


def estimate_record(res: Any, seed: int) -> dict[str, Any]:
    """A fit's estimate and outcome as plain JSON values (floats round-trip exactly through JSON)."""
    p = res.params
    arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64).tolist()  # noqa: E731
    return {
        "params": {
            "gate": p.gate, "top_k": p.top_k, "expert": p.expert, "phi": p.phi,
            "gate_weight": arr(p.gate_weight), "gate_bias": arr(p.gate_bias),
            "expert_weight": arr(p.expert_weight), "expert_bias": arr(p.expert_bias), "variance": arr(p.variance),
        },
        "log_likelihood": float(res.log_likelihood), "seed": int(seed), **_fit_info(res),
    }


def _unit_rows(spec: StudySpec, task: Task, r: int, res: Any, engine: Engine) -> tuple[list[dict], bool, str | None]:
    """Rows of one fitted replicate; a metric that raises gets a ``metric_error`` row and the others go on."""
    seed = replicate_seed(spec.root_seed, task.n, r, task.truth)
    label, k = task.gate.label, task.fitted_k
    spec = spec.for_truth(task.truth)
    if isinstance(res, BaseException):
        info = {"status": "error", "error": _error_text(res), "truth": task.truth or 0}
        rows = [_row(spec, task.n, r, seed, label, k, m, math.nan, **info) for m in _failed_metric_names(spec, task.gate, k, engine)]
        return rows, True, "".join(traceback.format_exception(res))[-_ERROR_CHARS:]
    rows, failed, tb, cache = [], False, None, {}
    info = _fit_info(res) | {"truth": task.truth or 0}
    for m in _planned_metrics(spec, k):
        metric_tb = metric_rows(spec, m, task.n, r, seed, label, k, res, info, engine, cache, rows)
        if metric_tb is not None:
            failed, tb = True, metric_tb
    return rows, failed, tb


def metric_rows(spec: StudySpec, metric: str, n: int, r: int, seed: int, label: str, k: int, res: Any,
                info: dict[str, Any], engine: Engine, cache: dict, rows: list[dict[str, Any]]) -> str | None:
    """Append the rows of one metric of one fit to ``rows``; a metric that raises gives one
    ``metric_error`` row, and its traceback is returned (else None): the study goes on."""
    try:
        values = METRIC_FNS[metric](spec, res, n, k, seed, engine, cache)
    except Exception as exc:  # noqa: BLE001 - recorded, the study goes on
        rows.append(_row(spec, n, r, seed, label, k, metric, math.nan, **(info | {"status": "metric_error", "error": _error_text(exc)})))
        return traceback.format_exc()[-_ERROR_CHARS:]
    rows.extend(_row(spec, n, r, seed, label, k, name, value, **info) for name, value in values.items())
    return None


def _fit_kwargs(spec: StudySpec, task: Task) -> dict[str, Any]:
    from .options import NearTruthInit

    fs = spec.fit
    kwargs = dict(
        gate=task.gate.name, top_k=task.gate.top_k, expert=fs.expert, init=fs.init,
        n_init=fs.n_init(task.fitted_k, spec.true_k), tol=fs.tol, gtol=fs.gtol, max_iter=fs.max_iter, method=fs.method, warn=False,
    )
    if fs.init == "near_truth":
        kwargs |= dict(truth=spec.for_truth(task.truth).truth, init_options=NearTruthInit(**dict(fs.near_truth)))
    return kwargs | dict(fs.options) | dict(task.gate.options)


def _fit_block(spec: StudySpec, task: Task, engine: Engine) -> list[Any]:
    """Fit the task's data sets in one batched call; if it raises, one at a time (same seeds, same results)."""
    data = [task_data(spec, task.n, r, task.truth) for r in task.replicates]
    Xs, ys = np.stack([X for X, _ in data]), np.stack([y for _, y in data])
    seeds = [replicate_streams(replicate_seed(spec.root_seed, task.n, r, task.truth)).init for r in task.replicates]
    fit_batch, kwargs = engine.get("fit_batch"), _fit_kwargs(spec, task)
    try:
        return list(fit_batch(Xs, ys, task.fitted_k, rng=seeds, **kwargs))
    except Exception as exc:  # noqa: BLE001 - isolate the failing data set(s)
        if len(data) == 1:
            return [exc]
    results: list[Any] = []
    for i in range(len(data)):
        try:
            results.append(fit_batch(Xs[i:i + 1], ys[i:i + 1], task.fitted_k, rng=[seeds[i]], **kwargs)[0])
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
    return results


def _run_mle(spec: StudySpec, task: Task, engine: Engine) -> list[dict[str, Any]]:
    try:
        results = _fit_block(spec, task, engine)
    except Exception as exc:  # noqa: BLE001 - e.g. sampling failed; every unit fails
        results = [exc] * len(task.replicates)
    units = []
    for r, res in zip(task.replicates, results):
        rows, failed, tb = _unit_rows(spec, task, r, res, engine)
        unit = {"replicate": r, "failed": failed, "rows": rows, "traceback": tb}
        if not isinstance(res, BaseException):  # every estimate is kept: metrics can be recomputed
            unit["estimate"] = estimate_record(res, replicate_seed(spec.root_seed, task.n, r, task.truth)) | {
                "gate_label": task.gate.label, "fitted_k": task.fitted_k, "truth": task.truth or 0}
        units.append(unit)
    return units


def _nn_row(spec: StudySpec, n: int, r: int, seed: int, k: int, record: dict[str, Any]) -> dict[str, Any]:
    """A table row from one record of run_nn_task, whose status is "ok" or the error text."""
    status = str(record.get("status", "ok"))
    ok = status in ("ok", "converged")
    return _row(spec, n, r, seed, str(record["router"]), k, str(record["metric"]), record["value"],
                converged=bool(record.get("converged", ok)), iterations=int(record.get("iterations", -1)),
                seconds=float(record.get("seconds", math.nan)), status=status if ok else "error",
                error=str(record.get("error", "" if ok else status))[:_ERROR_CHARS])


def _run_nn(spec: StudySpec, task: Task, engine: Engine) -> list[dict[str, Any]]:
    (r,) = task.replicates
    seed = replicate_seed(spec.root_seed, task.n, r)
    k = int(spec.nn["n_experts"])
    try:
        rows = [_nn_row(spec, task.n, r, seed, k, record) for record in engine.get("nn_task")(dict(spec.nn), task.n, seed)]
        failed = any(row["status"] in _results.FAILED_STATUSES for row in rows)
        return [{"replicate": r, "failed": failed, "rows": rows, "traceback": None}]
    except Exception as exc:  # noqa: BLE001
        row = _row(spec, task.n, r, seed, "nn", k, "nn", math.nan, status="error", error=_error_text(exc))
        return [{"replicate": r, "failed": True, "rows": [row], "traceback": traceback.format_exc()[-_ERROR_CHARS:]}]


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": None}  # process-wide: tasks may run in several threads at once


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)``; the first caller in a process saves the old setting
    and the last one out restores it, so concurrent tasks (threading backend, multi-threaded Dask
    workers) never switch the count under each other."""
    import torch

    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            if _THREADS_STATE["saved"] != n:
                torch.set_num_threads(n)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0 and torch.get_num_threads() != _THREADS_STATE["saved"]:
                torch.set_num_threads(_THREADS_STATE["saved"])


def run_task(spec: StudySpec, task: Task, engine: Engine | None = None) -> tuple[Task, list[dict[str, Any]], float]:
    """Run one task (in a worker); return it, its units (rows, failed flag, traceback) and seconds.

    Torch runs single-threaded inside a task (restored afterwards): the workers are the
    parallelism, and one thread count everywhere keeps results identical across backends.
    """
    engine = engine or Engine()
    t0 = time.perf_counter()
    with torch_threads(1):
        units = _run_nn(spec, task, engine) if spec.kind == "nn" else _run_mle(spec, task, engine)
    for unit in units:
        unit["rows"] = _results.iter_rows(unit["rows"])
    return task, units, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _parallel_backend(backend: str, n_jobs: int, scheduler: str | None) -> Iterator[dict[str, Any]]:
    """Keyword arguments for joblib.Parallel; with Dask, a client connected for the duration."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if scheduler is not None and backend != "dask":
        raise ValueError(f"a scheduler address needs backend='dask' (got backend={backend!r})")
    if backend == "sequential":
        yield {"n_jobs": 1, "backend": "sequential"}
        return
    if backend != "dask":
        yield {"n_jobs": n_jobs, "backend": backend}
        return
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("backend 'dask' needs dask[distributed]: pip install 'mixsim[dask]'") from exc
    from joblib import parallel_config

    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            stack.enter_context(distributed.Client(scheduler, set_as_default=True))
        else:
            try:
                distributed.get_client()
            except ValueError as exc:
                raise ValueError("backend 'dask' needs a scheduler address (--scheduler tcp://HOST:8786) or a running distributed.Client") from exc
        stack.enter_context(parallel_config(backend="dask"))
        yield {"n_jobs": -1}


def _progress_bar(total: int, initial_done: int, name: str, progress: bool) -> Any:
    from tqdm import tqdm  # a terminal bar (tqdm.auto warns in notebooks without ipywidgets; the bar is off there)

    enabled = progress and sys.stderr.isatty()
    return tqdm(total=total, desc=f"{name} ({initial_done} units already done)" if initial_done else name,
                unit="task", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def run_study(
    spec: StudySpec | str | Path,
    out_dir: str | Path,
    n_jobs: int = 1,
    backend: str = "loky",
    scheduler: str | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    block_size: int | None = None,
    engine: Engine | None = None,
    wait: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a study and return its tidy results table.

    Parameters
    ----------
    spec : StudySpec, or path of a TOML spec
    out_dir : str or Path
        Results directory; created if absent. A rerun into the same directory skips completed
        units and retries failed ones; a directory written by a different spec is refused.
    n_jobs : int, default 1
        joblib workers (-1: all cores). Ignored by the sequential and dask backends.
    backend : {"loky", "threading", "sequential", "dask"}, default "loky"
        "dask" runs the tasks on a Dask cluster through joblib (needs ``mixsim[dask]``).
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``); without it an existing ``distributed.Client`` is used.
    progress : bool, default True
        Show a tqdm bar (only when stderr is a terminal).
    force : bool, default False
        Delete the results of a different spec in ``out_dir`` instead of refusing.
    block_size : int, optional
        Replicates fitted together (default: the spec's ``run.block_size``). Batched and single
        fits agree to rounding only (~1e-11 relative), so a directory keeps the block size it was
        created with: a rerun uses it, and an explicit different one is refused.
    engine : Engine, optional
        Replacement fit/loss functions (tests, extensions).
    wait : bool, default False
        A run holds the lock ``out_dir/.lock`` while it works. When another run holds it, wait
        for it (then resume: only the units it left are done) instead of raising
        :class:`mixsim._results.StudyLockedError`.

    Every argument is checked before anything is written: a refused run leaves no directory.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`load_results`, also written to ``out_dir/results.parquet`` (or ``.csv``).
    """
    if not isinstance(spec, StudySpec):
        spec = load_study(spec)
    _check_run_args(n_jobs, backend, scheduler, block_size)
    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with _results.locked(out, wait=wait):
        return _run_locked(spec, out, n_jobs, backend, scheduler, progress, force, block_size, engine)


def _check_run_args(n_jobs: Any, backend: str, scheduler: str | None, block_size: Any) -> None:
    """Refuse bad run arguments before anything is written (ValueError naming the argument)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if scheduler is not None and backend != "dask":
        raise ValueError(f"a scheduler address (--scheduler) needs backend='dask' (got backend={backend!r})")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"n_jobs (--n-jobs) must be a non-zero int (-1 = all cores); got {n_jobs!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1):
        raise ValueError(f"block_size (--block-size) must be an int >= 1; got {block_size!r}")
    if backend == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ValueError("backend 'dask' needs dask[distributed]: pip install 'mixsim[dask]'") from exc


def _check_out_dir(out: Path) -> None:
    """The results directory must be (or be creatable as) a writable folder; OSError naming the path."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"--out {out}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"--out {out}: {parent} is not writable")
            return


def _run_locked(spec: StudySpec, out: Path, n_jobs: int, backend: str, scheduler: str | None, progress: bool,
                force: bool, block_size: int | None, engine: Engine | None) -> pd.DataFrame:
    from joblib import Parallel, delayed

    meta = _results.prepare_out_dir(out, spec, force=force, block_size=block_size)
    index = _results.scan_tasks(out, spec.hash)
    tasks = plan_tasks(spec, index.complete(), meta.get("block_size", spec.block_size))
    started, t0, n_fits, failed_units = _results._now(), time.perf_counter(), 0, 0
    with torch_threads(1), _parallel_backend(backend, n_jobs, scheduler) as parallel_kwargs:
        if tasks:
            parallel = Parallel(return_as="generator_unordered", **parallel_kwargs)
            with _progress_bar(len(tasks), len(index.complete()), spec.name, progress) as bar:
                for task, units, _ in parallel(delayed(run_task)(spec, t, engine) for t in tasks):
                    _results.write_task_file(out, spec.hash, task.to_dict(), units)
                    n_fits += len(units)
                    failed_units += sum(u["failed"] for u in units)
                    bar.update(1)
                    if failed_units:
                        bar.set_postfix(failed=failed_units)
    df = _results.collect(out)
    _results.record_run(out, {
        "started": started, "finished": _results._now(), "seconds": round(time.perf_counter() - t0, 3),
        "backend": backend, "n_jobs": n_jobs, "scheduler": scheduler, "tasks": len(tasks), "units": n_fits,
        "failed_units": failed_units, "corrupt_files_redone": len(index.corrupt),
    })
    return df
