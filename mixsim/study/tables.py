"""Rate tables read off a study's results: per gate, fitted k and metric, :func:`mixsim.rates.estimate_rate`
with the ``[rates]`` table the study declared before the run, and the theory's prediction where
:func:`mixsim.rates.theory_rate` has one. The one rate path: ``mixsim rates``, the figures and the
claim test all read their rates from here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..rates import SLOPE_AVERAGES, RateEstimate, estimate_rate, theory_rate
from .results import FAILED_STATUSES, load_results
from .spec import StudySpec
from .store import read_meta

__all__ = ["RATE_EXCLUDED_METRICS", "as_table", "estimators_held", "main_estimator", "one_estimator", "has_rate", "theory", "RateContext", "rate_context", "series_rate", "rate_table",
           "local_rate_table"]

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


def _with_estimator(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with an ``estimator`` column ("" for tables from before estimators were named)."""
    return df if "estimator" in df.columns else df.assign(estimator="")


def estimators_held(df: pd.DataFrame) -> list[str]:
    """The estimators a table holds, "mle" (the main estimate) first, then by name; tables from before
    estimators were named hold the one blank name."""
    return sorted(set(_with_estimator(df)["estimator"]), key=lambda e: (e != "mle", e)) or [""]


def main_estimator(df: pd.DataFrame) -> str:
    """The estimate a table reports by default: "mle" where a search gave it, else the one estimator
    the table holds (ValueError when it holds several and none is "mle")."""
    found = estimators_held(df)
    if found[0] != "mle" and len(found) > 1:
        raise ValueError(f"estimator: the table holds estimates {found}; choose one")
    return found[0]


def one_estimator(df: pd.DataFrame, estimator: str | None = None) -> pd.DataFrame:
    """The rows of one estimator (default :func:`main_estimator`): a series never mixes two
    estimates of the same unit. ValueError names the estimators held when ``estimator`` is not one."""
    df = _with_estimator(df)
    chosen = main_estimator(df) if estimator is None else estimator
    if len(df) and chosen not in set(df["estimator"]):
        raise ValueError(f"estimator must be one of {sorted(set(df['estimator']))}; got {chosen!r}")
    return df[df["estimator"] == chosen]


def has_rate(rows: pd.DataFrame) -> bool:
    """Whether one series can give a rate: at least 2 sample sizes, each with at least 2 replicates
    (the bootstrap of :func:`mixsim.rates.estimate_rate` resamples replicates within each size)."""
    counts = rows.groupby("n").size()
    return len(counts) >= 2 and int(counts.min()) >= 2


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
    """What the rate table needs from a study's spec: true k, each gate label's family, the expert,
    and the ``[rates]`` table declared before the run (as recorded in the results directory)."""

    true_k: int | None = None
    families: dict[str, str] = field(default_factory=dict)
    expert: str = "linear"
    rates: dict[str, Any] = field(default_factory=dict)


def rate_context(results: pd.DataFrame | str | Path, true_k: int | None) -> RateContext:
    """What the rate table knows of the study behind ``results``: read from the metadata (study.json)
    of a results directory (or file in one); a bare DataFrame gives only ``true_k``."""
    ctx = RateContext(true_k=true_k)
    if isinstance(results, pd.DataFrame):
        return ctx
    path = Path(results)
    try:
        spec = StudySpec.from_dict(read_meta(path if path.is_dir() else path.parent)["spec"])
    except (FileNotFoundError, KeyError, ValueError):
        return ctx
    if spec.kind != "mle":
        return RateContext(true_k, rates=dict(spec.rates))
    return RateContext(true_k if true_k is not None else spec.true_k, {g.label: g.name for g in spec.fit.gates},
                       spec.fit.expert, dict(spec.rates))


def series_rate(rows: pd.DataFrame, **options: Any) -> tuple[RateEstimate, dict[str, float]]:
    """The rate of one series (rows of one metric, gate, fitted k and truth), by
    :func:`mixsim.rates.estimate_rate` with ``options``, and the slopes of the other averages
    (``{"median_slope": ..., "mean_slope": ...}`` beside the declared ``"log"``: reported, never chosen from)."""
    n, values = rows["n"], rows["value"]
    est = estimate_rate(n, values, **options)
    others = {f"{a}_slope": estimate_rate(n, values, average=a, n_boot=2).slope for a in SLOPE_AVERAGES if a != est.average}
    return est, others


def rate_table(
    results: pd.DataFrame | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    min_n: int | None = None,
    true_k: int | None = None,
    **estimate_options: Any,
) -> pd.DataFrame:
    """Convergence rate per (gate, fitted k, metric): :func:`mixsim.rates.estimate_rate` of each series,
    with the average and options the study declared before the run.

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
    **estimate_options
        Keywords of :func:`mixsim.rates.estimate_rate` (``average``, ``level``, ``n_boot``,
        ``interval``, ``window``, ``fallback``, ``rng``). They override the ``[rates]`` table
        recorded in the results directory's study.json when the study was created; a bare
        DataFrame uses estimate_rate's defaults.

    Returns
    -------
    pandas.DataFrame
        One row per (study, [truth,] gate, fitted_k, estimator, metric) whose series has at least two sample
        sizes with at least two replicates each (:func:`has_rate`): the columns of
        :meth:`mixsim.rates.RateEstimate.to_row` (``slope``, ``slope_low``, ``slope_high``,
        ``intercept``, the half-range slopes, the curvature check, ``rate``, ``rate_low``,
        ``rate_high`` the rate the verdict uses, ...), then ``median_slope`` / ``mean_slope`` /
        ``log_slope`` (the averages not declared), rows (values used), dropped (failed fits and
        values <= 0 left out), not_converged (fits used that did not meet their tolerance),
        local_slopes (JSON list), and where :func:`mixsim.rates.theory_rate` has a prediction
        theory_exponent, theory_tag and theory_in_ci (inside the slope's interval). ``truth`` is a
        column when the table holds several truths (an ensemble: one rate per truth).
    """
    ctx = rate_context(results, true_k)
    options = dict(ctx.rates) | estimate_options
    df = as_table(results)
    used = _usable(df, metrics, min_n)
    several = "truth" in df.columns and df["truth"].nunique() > 1  # an ensemble: one rate per truth
    df, used = _with_estimator(df), _with_estimator(used)
    keys = ["study"] + (["truth"] if several else []) + ["gate", "fitted_k", "estimator", "metric"]
    total = df.groupby(keys).size() if len(df) else pd.Series(dtype=int)
    out = []
    for key, group in used.groupby(keys, sort=True):
        study, gate, k, estimator, metric = key[0], *key[-4:]
        if not has_rate(group):
            continue
        est, others = series_rate(group, **options)
        row: dict[str, Any] = {
            "study": study, "gate": gate, "fitted_k": int(k), "estimator": estimator, "metric": metric, **est.to_row(), **others,
            "rows": len(group), "dropped": int(total.get(key, len(group)) - len(group)),
            "not_converged": int((~group["converged"]).sum()),
            "local_slopes": json.dumps([float(v) for v in est.local_slopes]),
        }
        if several:
            row = {"study": study, "truth": int(key[1])} | row
        predicted = theory(ctx.families.get(gate, gate), int(k), ctx.true_k, metric, ctx.expert)
        if predicted:
            predicted["theory_in_ci"] = bool(est.slope_low <= predicted["theory_exponent"] <= est.slope_high)
        out.append(row | predicted)
    return pd.DataFrame(out)


def local_rate_table(
    results: pd.DataFrame | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    min_n: int | None = None,
    average: str | None = None,
    estimator: str | None = None,
) -> pd.DataFrame:
    """Local slopes between neighbouring sample sizes, as a long table (for plots of slope against n),
    of one estimator (default :func:`main_estimator`).

    A local slope that drifts with n says the asymptotic regime has not been reached. The slopes
    are those of :func:`mixsim.rates.estimate_rate` (``window=2``) with ``average`` (default: the
    study's declared ``[rates] average``, else estimate_rate's), for series with at least two
    replicates at each of two sizes or more.

    Returns
    -------
    pandas.DataFrame
        Columns study, gate, fitted_k, metric, n_low, n_high, n_mid (geometric mean of the two),
        slope.
    """
    options = dict(rate_context(results, None).rates) | ({} if average is None else {"average": average})
    used = _usable(one_estimator(as_table(results), estimator), metrics, min_n)
    rows = []
    for (study, gate, k, metric), group in used.groupby(["study", "gate", "fitted_k", "metric"], sort=True):
        if not has_rate(group):
            continue
        est = estimate_rate(group["n"], group["value"], n_boot=2, **options)
        for (lo, hi), slope in zip(est.local_sizes, est.local_slopes):
            rows.append({"study": study, "gate": gate, "fitted_k": int(k), "metric": metric, "n_low": int(lo),
                         "n_high": int(hi), "n_mid": float(np.sqrt(lo * hi)), "slope": float(slope)})
    return pd.DataFrame(rows, columns=["study", "gate", "fitted_k", "metric", "n_low", "n_high", "n_mid", "slope"])
