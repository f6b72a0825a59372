"""Every fit's estimate, kept: read them back as a tidy table, and (re)compute metrics from them.

A study stores each fit's parameters and outcome beside its metric rows (``tasks/*.json``, key
``estimate`` of every unit). :func:`load_estimates` reads them as one tidy table (one row per fit
and expert); :func:`evaluate` computes any metric of the registry from them without refitting and
adds its rows to the results table, resumably (one checksummed file per metric and task file
under ``evals/``).
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..checks import check_bool
from ..model import MoEParams
from .metrics import MLE_METRICS, metric_applies
from .plan import ESTIMATOR_OF_INIT
from .parallel import progress_bar
from .results import collect, iter_rows
from .runner import RunnerHooks, metric_rows
from .spec import StudySpec
from .store import EVALS, CorruptTaskFile, locked, read_meta, read_task_file, scan_tasks, task_file_name, write_task_file

__all__ = ["ESTIMATE_COLUMNS", "load_estimates", "estimate_records", "estimate_params", "evaluate"]

#: Columns of :func:`load_estimates` before the parameter columns (which depend on d).
ESTIMATE_COLUMNS = (
    "study", "truth", "n", "replicate", "gate", "fitted_k", "estimator", "seed", "expert", "log_likelihood", "stationarity",
    "grad_norm", "iterations", "status", "converged", "seconds", "model_gate", "top_k", "expert_family", "phi",
    *("excess_loglik", "variance_bounded", "bounds_active", "search_hits", "search_starts", "search_failed",
      "search_winner", "search_hit_tol", "protocol_loglik"),
)
_VECTORS = ("gate_weight", "expert_weight")
_SCALARS = ("gate_bias", "expert_bias", "variance")


def _units_with_estimates(out: Path, spec_hash: str) -> list[tuple[tuple[int, int, str], dict[str, Any]]]:
    index = scan_tasks(out, spec_hash, quarantine=False)
    return [(key, unit) for key, unit in sorted(index.units.items()) if "estimate" in unit]


def estimate_params(record: dict[str, Any]) -> MoEParams:
    """The :class:`MoEParams` of a stored estimate record (a unit's ``estimate``)."""
    p = record["params"]
    arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
    return MoEParams(
        gate=p["gate"], top_k=p["top_k"], gate_weight=arr(p["gate_weight"]), gate_bias=arr(p["gate_bias"]),
        expert=p["expert"], expert_weight=arr(p["expert_weight"]), expert_bias=arr(p["expert_bias"]),
        variance=arr(p["variance"]), phi=p["phi"],
    )


def load_estimates(path: str | Path) -> pd.DataFrame:
    """Every stored estimate of a results directory as a tidy table.

    Parameters
    ----------
    path : str or Path
        A results directory written by :func:`mixsim.run_study` (``mixsim run --out DIR``).

    Returns
    -------
    pandas.DataFrame
        One row per fit and fitted expert, sorted by n, replicate, fit and expert. Columns
        :data:`ESTIMATE_COLUMNS` (``gate`` is the study's gate label, ``model_gate`` the gate family;
        ``log_likelihood`` is the total over the fit's data; ``stationarity`` its Newton decrement
        per sample; the certificate: ``excess_loglik`` over the truth, ``variance_bounded`` and
        ``bounds_active``, ``search_hits``, ``search_starts``, ``search_failed``,
        ``search_winner`` and ``protocol_loglik`` (:class:`mixsim.fitting.SearchRecord`; missing
        values for task files written before these were recorded)), then the parameters: ``gate_bias``, ``gate_weight_0 .. d-1`` (absent for
        competition), ``expert_weight_0 .. d-1``, ``expert_bias``, ``variance``. Values are the
        stored float64 numbers bit for bit. Failed fits have no estimate and no row.
    """
    out = Path(path)
    meta = read_meta(out)
    rows: list[dict[str, Any]] = []
    init = meta["spec"].get("fit", {}).get("init", "auto")
    for (n, r, fit), unit in _units_with_estimates(out, meta["spec_hash"]):
        for est in estimate_records(unit["estimate"], init):
            rows += _estimate_rows(meta["study"], n, r, est)
    if not rows:
        return pd.DataFrame(columns=list(ESTIMATE_COLUMNS))
    df = pd.DataFrame(rows)
    params = [c for c in df.columns if c not in ESTIMATE_COLUMNS]
    return df[list(ESTIMATE_COLUMNS) + params].reset_index(drop=True)


def estimate_records(record: dict[str, Any], init: str = "auto") -> list[dict[str, Any]]:
    """A unit's stored estimates: its fit's record, then (a search) the reference protocol's, each
    with its ``estimator`` name and the unit's ``seed``, ``truth``, ``gate_label`` and ``fitted_k``.
    Records written before estimators were named get the one of the study's ``init``."""
    unit = {key: record[key] for key in ("seed", "truth", "gate_label", "fitted_k")}
    main = record | {"estimator": record.get("estimator") or ESTIMATOR_OF_INIT.get(init, "")}
    return [main] + ([record["protocol"] | unit | {"estimator": "protocol"}] if "protocol" in record else [])


def _estimate_rows(study: str, n: int, r: int, est: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per fitted expert of one estimate record."""
    p, rows = est["params"], []
    base = {
        "study": study, "truth": est["truth"], "n": n, "replicate": r, "gate": est["gate_label"],
        "fitted_k": est["fitted_k"], "estimator": est["estimator"], "seed": est["seed"],
        "log_likelihood": est["log_likelihood"], "stationarity": est.get("stationarity", math.nan),
        "grad_norm": est["grad_norm"], "iterations": est["iterations"], "status": est["status"],
        "converged": est["converged"], "seconds": est["seconds"], "model_gate": p["gate"], "top_k": p["top_k"],
        "expert_family": p["expert"], "phi": p["phi"], **certificate_columns(est),
    }
    for i in range(len(p["variance"])):
        row = base | {"expert": i}
        for name in _SCALARS:
            row[name] = math.nan if p[name] is None else p[name][i]
        for name in _VECTORS:
            if p[name] is not None:
                row |= {f"{name}_{j}": v for j, v in enumerate(p[name][i])}
        rows.append(row)
    return rows


def certificate_columns(est: dict[str, Any]) -> dict[str, Any]:
    """A stored estimate's certificate (issue 19) as columns; missing values for task files
    written before certificates were recorded (NaN, None, or NA for ``variance_bounded``)."""
    search = est.get("search") or {}
    num = lambda v: math.nan if v is None else float(v)  # noqa: E731
    count = lambda key: pd.NA if key not in search else int(search[key])  # noqa: E731
    bounded = est.get("variance_bounded")
    return {
        "excess_loglik": num(est.get("excess_loglik")),
        "variance_bounded": pd.NA if bounded is None else bool(bounded),
        "bounds_active": ",".join(est["bounds_active"]) if "bounds_active" in est else None,
        "search_hits": count("hits"), "search_starts": count("n_starts"), "search_failed": count("n_failed"),
        "search_winner": search.get("winner"), "search_hit_tol": num(search.get("hit_tol")),
        "protocol_loglik": num(search.get("protocol_loglik")),
    }


def _check_metrics(metrics: Any) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, Sequence) or not metrics:
        raise TypeError(f"metrics must be a non-empty list of metric names; got {metrics!r}")
    unknown = [m for m in metrics if m not in MLE_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; expected names from {sorted(MLE_METRICS)}")
    return list(dict.fromkeys(metrics))


def evaluate(
    path: str | Path,
    metrics: Sequence[str],
    *,
    force: bool = False,
    progress: bool = True,
    engine: RunnerHooks | None = None,
    wait: bool = False,
) -> pd.DataFrame:
    """Compute metrics from the stored estimates of a results directory, without refitting.

    The rows go to ``evals/METRIC/*.json`` (one checksummed file per metric, n and fit, written
    atomically) and from there into the results table, where they replace the
    rows of the same metric of that fit (equal values when the metric was recorded during the
    run: the same estimate, truth and Monte Carlo inputs). Resumable: files already written are
    kept unless ``force``, so an interrupted call is finished by calling it again. It holds the
    directory's lock while it writes, so it refuses to run beside a run of the study
    (:class:`mixsim.study.StudyLockedError`), or with ``wait`` waits for that run to finish.

    Parameters
    ----------
    path : str or Path
        A results directory of a ``kind = "mle"`` study.
    metrics : list of str
        Names from :data:`mixsim.study.METRICS` (:data:`mixsim.study.metrics.MLE_METRICS`) (``D1``, ``D2``, ``groups``, ``cells``, ``hellinger``,
        ``tv``, ``loglik``); ``D1``/``D2`` are computed only where they apply (exact-/over-fitted).
    force : bool, default False
        Recompute files that exist.
    progress : bool, default True
        A tqdm bar over task files (only when stderr is a terminal).
    engine : RunnerHooks, optional
        Replacement loss functions (tests, extensions).
    wait : bool, default False
        When a run holds the directory's lock, wait for it instead of raising (``--wait``).

    Returns
    -------
    pandas.DataFrame
        The updated results table (:func:`mixsim.load_results`), also written to the directory.
    """
    metrics = _check_metrics(metrics)
    wait = check_bool(wait, "wait")
    out = Path(path)
    meta = read_meta(out)
    spec = StudySpec.from_dict(meta["spec"], source=meta.get("spec_source"))
    if spec.kind != "mle":
        raise ValueError(f"evaluate needs a kind = 'mle' study (fitted estimates); {out} holds a {spec.kind!r} study")
    engine = engine or RunnerHooks()
    units = _units_with_estimates(out, meta["spec_hash"])
    by_task: dict[tuple[int, str], list[tuple[int, dict[str, Any]]]] = {}
    for (n, r, fit), unit in units:
        by_task.setdefault((n, fit), []).append((r, unit))
    with locked(out, wait=wait):  # not while a run writes into the directory
        _evaluate_jobs(out, spec, meta["spec_hash"], by_task, metrics, force, progress, engine)
        return collect(out)


def _evaluate_jobs(out: Path, spec: StudySpec, spec_hash: str, by_task: dict, metrics: list[str], force: bool,
                   progress: bool, engine: RunnerHooks) -> None:
    """Write the missing ``evals/METRIC/*.json`` files (all of them with ``force``)."""
    jobs = []
    for metric in metrics:
        (out / EVALS / metric).mkdir(parents=True, exist_ok=True)
        for (n, fit), members in sorted(by_task.items()):
            task = {"n": n, "fit": fit, "replicates": [r for r, _ in members]}
            target = out / EVALS / metric / task_file_name(task)
            if force or not _valid(target):
                jobs.append((metric, task, members))
    with progress_bar(len(jobs), 0, f"evaluate {spec.name}", progress) as bar:
        for metric, task, members in jobs:
            est0 = members[0][1]["estimate"]
            k, label = est0["fitted_k"], est0["gate_label"]
            applies = metric_applies(spec, metric, k)
            truth_spec = spec.for_truth(est0["truth"])
            rows_of = [(r, [row for est in estimate_records(unit["estimate"], spec.fit.init)
                            for row in _metric_rows(truth_spec, metric, task["n"], r, label, k, est, engine)] if applies else [])
                       for r, unit in members]
            payload = [{"replicate": r, "failed": False, "rows": iter_rows(rows), "traceback": None} for r, rows in rows_of]
            write_task_file(out, spec_hash, task, payload, folder=f"{EVALS}/{metric}")
            bar.update(1)


def _valid(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        read_task_file(path)
    except (CorruptTaskFile, OSError):
        return False
    return True


def _metric_rows(spec: StudySpec, metric: str, n: int, r: int, label: str, k: int, est: dict[str, Any], engine: RunnerHooks) -> list[dict[str, Any]]:
    """The rows one metric gives for one stored estimate (a ``metric_error`` row if it raises)."""
    res = SimpleNamespace(params=estimate_params(est), log_likelihood=est["log_likelihood"])
    info = {key: est.get(key, math.nan) for key in ("converged", "iterations", "seconds", "status", "grad_norm", "stationarity",
                                                    "truth", "estimator")}
    rows: list[dict[str, Any]] = []
    metric_rows(spec, metric, n, r, est["seed"], label, k, res, info, engine, {}, rows)
    return rows
