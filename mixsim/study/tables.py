"""Rate tables read off a study's results: log-log slopes per gate, fitted k and metric, with the
theory's prediction where :func:`mixsim.rates.theory_rate` has one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..rates import fit_rate, theory_rate
from .results import FAILED_STATUSES, load_results
from .spec import StudySpec
from .store import read_meta

__all__ = ["RATE_EXCLUDED_METRICS", "as_table", "theory", "RateContext", "rate_context", "rate_table", "local_rate_table"]

#: Metrics that are not errors (no rate is fitted to them by default).
RATE_EXCLUDED_METRICS = ("loglik",)


def as_table(results: pd.DataFrame | str | Path) -> pd.DataFrame:
    """``results`` itself if a DataFrame, else the table of :func:`load_results` for that path."""
    return results if isinstance(results, pd.DataFrame) else load_results(results)


def _usable(df: pd.DataFrame, metrics: Sequence[str] | None, min_n: int | None) -> pd.DataFrame:
    """Rows that can enter a rate: finished fits with finite positive values, chosen metrics, n >= min_n."""
    ok = ~df["status"].isin(FAILED_STATUSES) & np.isfinite(df["value"]) & (df["value"] > 0)
    if metrics is not None:
        if isinstance(metrics, str):
            metrics = [metrics]
        unknown = sorted(set(metrics) - set(df["metric"]))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown} (--metric); this table has {sorted(set(df['metric']))}")
        ok &= df["metric"].isin(list(metrics))
    else:
        ok &= ~df["metric"].isin(RATE_EXCLUDED_METRICS)
    if min_n is not None:
        ok &= df["n"] >= min_n
    return df[ok]


# Metric names of the results table that mixsim.rates.theory_rate spells differently.
_THEORY_GROUP = {"tv": "total_variation"}


def theory(gate: str, fitted_k: int, true_k: int | None, metric: str, expert: str) -> dict[str, Any]:
    """theory_exponent and theory_tag where :func:`mixsim.rates.theory_rate` has a prediction."""
    if true_k is None:
        return {}
    try:
        rate = theory_rate(gate, fitted_k, true_k, _THEORY_GROUP.get(metric, metric), expert=expert)
    except ValueError:  # a metric theory does not name (e.g. one of a network study)
        return {}
    return {} if rate is None else {"theory_exponent": float(rate[0]), "theory_tag": str(rate[1])}


@dataclass(frozen=True)
class RateContext:
    """What the rate table needs from a study's spec: true k, each gate label's family, the expert."""

    true_k: int | None = None
    families: dict[str, str] = field(default_factory=dict)
    expert: str = "linear"


def rate_context(results: pd.DataFrame | str | Path, true_k: int | None) -> RateContext:
    """What the rate table knows of the study behind ``results``: read from the metadata of a results
    directory (or file in one); a bare DataFrame gives only ``true_k``."""
    ctx = RateContext(true_k=true_k)
    if isinstance(results, pd.DataFrame):
        return ctx
    path = Path(results)
    try:
        spec = StudySpec.from_dict(read_meta(path if path.is_dir() else path.parent)["spec"])
    except (FileNotFoundError, KeyError, ValueError):
        return ctx
    if spec.kind != "mle":
        return ctx
    return RateContext(true_k if true_k is not None else spec.true_k, {g.label: g.name for g in spec.fit.gates}, spec.fit.expert)


def rate_table(
    results: pd.DataFrame | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    min_n: int | None = None,
    true_k: int | None = None,
    **fit_rate_options: Any,
) -> pd.DataFrame:
    """Convergence rate per (gate, fitted k, metric): the log-log slope of the average error against n.

    Parameters
    ----------
    results : DataFrame (from :func:`load_results`), or a results directory / file
    metrics : sequence of str, optional
        Metrics to fit; default all except :data:`RATE_EXCLUDED_METRICS` (``loglik`` is no error).
    min_n : int, optional
        Drop sample sizes below this. Declare it before looking at the result (THEORY.md section 4).
    true_k : int, optional
        Number of true experts, for the theory columns; read from the directory's metadata when
        ``results`` is a path (a bare DataFrame gets no theory columns without it).
    **fit_rate_options
        ``average``, ``level``, ``n_boot``, ``rng`` of :func:`mixsim.rates.fit_rate`.

    Returns
    -------
    pandas.DataFrame
        One row per (study, gate, fitted_k, metric) with at least two sample sizes: slope,
        intercept, ci_low, ci_high (t interval), boot_low, boot_high (bootstrap), stderr, level,
        average, n_points, n_min, n_max, rows (values used), dropped (failed fits and values <= 0
        left out), not_converged (fits used that did not meet their tolerance), local_slopes (JSON
        list, between neighbouring sizes), and where :func:`mixsim.rates.theory_rate` has a
        prediction theory_exponent, theory_tag and theory_in_ci. Metrics that are 0 in every
        replicate (empty cell types) have no row.
    """
    ctx = rate_context(results, true_k)
    df = as_table(results)
    used = _usable(df, metrics, min_n)
    several = "truth" in df.columns and df["truth"].nunique() > 1  # an ensemble: one rate per truth
    keys = ["study"] + (["truth"] if several else []) + ["gate", "fitted_k", "metric"]
    total = df.groupby(keys).size() if len(df) else pd.Series(dtype=int)
    out = []
    for key, group in used.groupby(keys, sort=True):
        study, gate, k, metric = key[0], *key[-3:]
        n, values = group["n"].to_numpy(), group["value"].to_numpy()
        if np.unique(n).size < 2:
            continue
        rate = fit_rate(n, values, **fit_rate_options)
        row: dict[str, Any] = {
            "study": study, "gate": gate, "fitted_k": int(k), "metric": metric,
            "slope": rate.slope, "intercept": rate.intercept, "ci_low": rate.ci_low, "ci_high": rate.ci_high,
            "boot_low": rate.boot_low, "boot_high": rate.boot_high, "stderr": rate.stderr, "level": rate.level,
            "average": rate.method, "n_points": rate.n_points, "n_min": int(n.min()), "n_max": int(n.max()),
            "rows": len(group), "dropped": int(total.get(key, len(group)) - len(group)),
            "not_converged": int((~group["converged"]).sum()),
            "local_slopes": json.dumps([float(v) for v in rate.local_slopes]),
        }
        if several:
            row = {"study": study, "truth": int(key[1])} | row
        predicted = theory(ctx.families.get(gate, gate), int(k), ctx.true_k, metric, ctx.expert)
        if predicted:
            predicted["theory_in_ci"] = bool(rate.ci_low <= predicted["theory_exponent"] <= rate.ci_high)
        out.append(row | predicted)
    return pd.DataFrame(out)


def local_rate_table(
    results: pd.DataFrame | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    min_n: int | None = None,
    average: str = "mean",
) -> pd.DataFrame:
    """Local slopes between neighbouring sample sizes, as a long table (for plots of slope against n).

    A local slope that drifts with n says the asymptotic regime has not been reached.

    Returns
    -------
    pandas.DataFrame
        Columns study, gate, fitted_k, metric, n_low, n_high, n_mid (geometric mean of the two),
        slope.
    """
    used = _usable(as_table(results), metrics, min_n)
    rows = []
    for (study, gate, k, metric), group in used.groupby(["study", "gate", "fitted_k", "metric"], sort=True):
        if group["n"].nunique() < 2:
            continue
        rate = fit_rate(group["n"].to_numpy(), group["value"].to_numpy(), average=average, n_boot=0)
        for lo, hi, slope in zip(rate.sizes[:-1], rate.sizes[1:], rate.local_slopes):
            rows.append({"study": study, "gate": gate, "fitted_k": int(k), "metric": metric, "n_low": int(lo),
                         "n_high": int(hi), "n_mid": float(np.sqrt(lo * hi)), "slope": float(slope)})
    return pd.DataFrame(rows, columns=["study", "gate", "fitted_k", "metric", "n_low", "n_high", "n_mid", "slope"])
