"""Convergence studies as data: specs, a seeded, parallel, resumable runner, tidy results, rate tables.

The pieces live in private modules and are re-exported here:

* :mod:`mixsim._study_spec` - :class:`StudySpec`, :func:`load_study` (TOML, ``--set`` overrides);
* :mod:`mixsim._runner` - seeds, tasks, :func:`run_study` (joblib: loky, threading, sequential, Dask);
* :mod:`mixsim._results` - the results directory, :func:`load_results`.

This module adds the summaries read off a results directory: :func:`study_status` and
:func:`rate_table` (convergence rates per gate, fitted k and metric).

Example
-------
>>> spec = load_study("studies/smoke.toml", overrides=["replications=2"])   # doctest: +SKIP
>>> df = run_study(spec, "results/smoke", n_jobs=2)                         # doctest: +SKIP
>>> rate_table(df)                                                          # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ._results import (
    COLUMNS,
    FAILED_STATUSES,
    StudyMismatchError,
    collect,
    load_results,
    read_meta,
    scan_tasks,
)
from ._runner import (
    BACKENDS,
    Engine,
    Task,
    plan_tasks,
    plan_units,
    replicate_seed,
    replicate_streams,
    run_study,
    run_task,
    task_data,
)
from ._study_spec import METRICS, FitSpec, GateSpec, SpecError, StudySpec, apply_overrides, load_study

__all__ = [
    "StudySpec", "GateSpec", "FitSpec", "SpecError", "METRICS", "load_study", "apply_overrides",
    "run_study", "load_results", "collect", "Engine", "Task", "BACKENDS", "COLUMNS", "StudyMismatchError",
    "replicate_seed", "replicate_streams", "task_data", "plan_units", "plan_tasks", "run_task",
    "StudyStatus", "study_status", "rate_table", "local_rate_table", "RATE_EXCLUDED_METRICS",
]

#: Metrics that are not errors (no rate is fitted to them by default).
RATE_EXCLUDED_METRICS = ("loglik",)


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------

@dataclass
class StudyStatus:
    """What a results directory holds, against what its spec plans."""

    name: str
    spec_hash: str
    planned: int
    complete: int
    failed: int
    corrupt: int
    by_fit: pd.DataFrame = field(repr=False)  # complete units per (fit, n)
    runs: list[dict[str, Any]] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list, repr=False)

    @property
    def missing(self) -> int:
        return self.planned - self.complete - self.failed

    @property
    def done(self) -> bool:
        return self.complete == self.planned

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [
            f"study {self.name!r} (spec {self.spec_hash[:12]})",
            f"units: {self.complete}/{self.planned} complete, {self.failed} failed, {self.missing} not run"
            + (f"; {self.corrupt} corrupt task file(s) found (their units will be redone)" if self.corrupt else ""),
        ]
        if self.runs:
            last = self.runs[-1]
            lines.append(f"runs: {len(self.runs)}; last finished {last.get('finished')} ({last.get('backend')}, "
                         f"{last.get('tasks')} tasks, {last.get('seconds')} s)")
        if self.errors:
            lines.append("first errors:")
            lines.extend(f"  {e}" for e in self.errors[:5])
        return "\n".join(lines)


def study_status(out_dir: str | Path) -> StudyStatus:
    """Count complete, failed and missing units of a results directory (reads, never writes)."""
    meta = read_meta(out_dir)
    spec = StudySpec.from_dict(meta["spec"], source=meta.get("spec_source"))
    index = scan_tasks(out_dir, meta["spec_hash"], quarantine=False)
    planned = set(plan_units(spec))
    complete = index.complete() & planned
    failed = index.failed() & planned
    counts = pd.DataFrame(sorted(complete), columns=["n", "replicate", "fit"])
    by_fit = counts.groupby(["fit", "n"]).size().unstack(fill_value=0) if len(counts) else pd.DataFrame()
    errors = sorted({row["error"] for key in failed for row in index.units[key]["rows"] if row.get("error")})
    return StudyStatus(spec.name, meta["spec_hash"], len(planned), len(complete), len(failed), len(index.corrupt),
                       by_fit, meta.get("runs", []), errors)


# ---------------------------------------------------------------------------------------------
# rates
# ---------------------------------------------------------------------------------------------

def _as_table(results: pd.DataFrame | str | Path) -> pd.DataFrame:
    return results if isinstance(results, pd.DataFrame) else load_results(results)


def _usable(df: pd.DataFrame, metrics: Sequence[str] | None, min_n: int | None) -> pd.DataFrame:
    """Rows that can enter a rate: finished fits with finite positive values, chosen metrics, n >= min_n."""
    ok = ~df["status"].isin(FAILED_STATUSES) & np.isfinite(df["value"]) & (df["value"] > 0)
    if metrics is not None:
        ok &= df["metric"].isin(list(metrics))
    else:
        ok &= ~df["metric"].isin(RATE_EXCLUDED_METRICS)
    if min_n is not None:
        ok &= df["n"] >= min_n
    return df[ok]


def _theory(gate: str, fitted_k: int, true_k: int | None, metric: str) -> dict[str, Any]:
    """The theory's exponent for a (gate, fitted k, metric), where :func:`mixsim.rates.theory_rate` has one."""
    if true_k is None:
        return {}
    try:
        from .rates import theory_rate

        rate = theory_rate(gate, fitted_k, true_k, metric)
    except Exception:  # noqa: BLE001 - no theory for this combination (or no rates module)
        return {}
    if rate is None:
        return {}
    if isinstance(rate, (int, float)):
        return {"theory_slope": float(rate)}
    fields = rate if isinstance(rate, dict) else getattr(rate, "__dict__", {})
    return {f"theory_{k}": v for k, v in fields.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _gate_family(label: str, spec_gates: dict[str, str]) -> str:
    return spec_gates.get(label, label)


def _spec_info(results: pd.DataFrame | str | Path) -> tuple[int | None, dict[str, str]]:
    """True k and gate label -> gate family, from the metadata of a results directory (when given one)."""
    if isinstance(results, pd.DataFrame):
        return None, {}
    path = Path(results)
    try:
        meta = read_meta(path if path.is_dir() else path.parent)
        spec = StudySpec.from_dict(meta["spec"])
    except (FileNotFoundError, SpecError, KeyError, ValueError):
        return None, {}
    if spec.kind != "mle":
        return None, {}
    return spec.true_k, {g.label: g.name for g in spec.fit.gates}


def rate_table(
    results: pd.DataFrame | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    min_n: int | None = None,
    true_k: int | None = None,
    **fit_rate_options: Any,
) -> pd.DataFrame:
    """Convergence rate per (gate, fitted k, metric): the log-log slope of error against n.

    Parameters
    ----------
    results : DataFrame (from :func:`load_results`), or a results directory / file
    metrics : sequence of str, optional
        Metrics to fit; default all except :data:`RATE_EXCLUDED_METRICS` (``loglik`` is no error).
    min_n : int, optional
        Drop sample sizes below this. Declare it before looking at the result (THEORY.md section 4).
    true_k : int, optional
        Number of true experts, for the theory columns; read from the directory's metadata when
        ``results`` is a path.
    **fit_rate_options
        Passed to :func:`mixsim.rates.fit_rate`.

    Returns
    -------
    pandas.DataFrame
        One row per (study, gate, fitted_k, metric): slope, intercept, ci_low, ci_high, boot_low,
        boot_high, n_points, n_min, n_max, rows (values used), dropped (failed or non-positive
        values left out), local_slopes (a JSON list), and ``theory_*`` columns where
        :func:`mixsim.rates.theory_rate` knows the setting. Failed fits and values <= 0 are left out.
    """
    from .rates import fit_rate

    meta_true_k, families = _spec_info(results)
    true_k = true_k if true_k is not None else meta_true_k
    df = _as_table(results)
    used = _usable(df, metrics, min_n)
    keys = ["study", "gate", "fitted_k", "metric"]
    total = df.groupby(keys).size() if len(df) else pd.Series(dtype=int)
    out = []
    for (study, gate, k, metric), group in used.groupby(keys, sort=True):
        n, values = group["n"].to_numpy(), group["value"].to_numpy()
        row: dict[str, Any] = {"study": study, "gate": gate, "fitted_k": int(k), "metric": metric}
        if np.unique(n).size < 2:
            row |= {"n_points": int(np.unique(n).size), "note": "fewer than 2 sample sizes"}
        else:
            rate = fit_rate(n, values, **fit_rate_options)
            row |= _rate_fields(rate)
        row |= {"n_min": int(n.min()), "n_max": int(n.max()), "rows": len(group),
                "dropped": int(total.get((study, gate, k, metric), len(group)) - len(group))}
        row |= _theory(_gate_family(gate, families), int(k), true_k, metric)
        out.append(row)
    return pd.DataFrame(out)


def _rate_fields(rate: Any) -> dict[str, Any]:
    fields = rate if isinstance(rate, dict) else {k: v for k, v in vars(rate).items()}
    out = {}
    for key, value in fields.items():
        if key == "local_slopes":
            out[key] = json.dumps(_jsonable(value))
        elif isinstance(value, (int, float, np.integer, np.floating, str, bool)):
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def local_rate_table(results: pd.DataFrame | str | Path, *, metrics: Sequence[str] | None = None, **fit_rate_options: Any) -> pd.DataFrame:
    """Local slopes (between neighbouring sample sizes) as a long table, for plots of slope vs n.

    Returns
    -------
    pandas.DataFrame
        Columns study, gate, fitted_k, metric and the fields of each entry of ``fit_rate(...).local_slopes``.
    """
    table = rate_table(results, metrics=metrics, **fit_rate_options)
    rows = []
    for rec in table.to_dict("records"):
        for item in json.loads(rec.get("local_slopes") or "[]"):
            base = {k: rec[k] for k in ("study", "gate", "fitted_k", "metric")}
            rows.append(base | (item if isinstance(item, dict) else {"slope": item}))
    return pd.DataFrame(rows)
