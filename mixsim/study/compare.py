"""Two studies compared, metric by metric and truth by truth: :func:`comparison_table` (the slope
difference ``a - b`` of :func:`mixsim.rates.compare_rates` with its interval, the sample-size
ratio and a verdict per row) and :func:`verdict_counts` (how many truths say faster, slower or
cannot tell). ``mixsim compare DIR_A DIR_B`` prints both; the claim test builds its tables with them.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..rates import VERDICTS, compare_rates
from .results import FAILED_STATUSES
from .tables import RATE_EXCLUDED_METRICS, as_table, estimators_held, has_rate, one_estimator, rate_context

__all__ = ["COMPARISON_COLUMNS", "series", "comparison_table", "verdict_counts"]

#: Columns of :func:`comparison_table`, in order.
COMPARISON_COLUMNS = [
    "comparison", "truth", "estimator", "metric", "a", "b", "rate_a", "rate_b", "power_law_a", "power_law_b", "difference",
    "difference_low", "difference_high", "verdict", "paired", "eps", "n_ratio", "n_ratio_low", "n_ratio_high", "efficiency",
    "n_ref", "ref_ratio", "ref_ratio_low", "ref_ratio_high", "ref_efficiency",
]


def series(table: pd.DataFrame, metric: str, truth: int = 0, estimator: str | None = None) -> pd.DataFrame:
    """One error series of a results table: the rows of ``metric``, ``truth`` and ``estimator``
    (default :func:`~mixsim.study.tables.main_estimator`) from finished fits with finite positive
    values (failed fits are counted elsewhere, not used)."""
    truths = table["truth"] if "truth" in table else pd.Series(0, index=table.index)
    rows = one_estimator(table[(table["metric"] == metric) & (truths == truth)], estimator)
    return rows[~rows["status"].isin(FAILED_STATUSES) & np.isfinite(rows["value"]) & (rows["value"] > 0)]


def _name(results: pd.DataFrame | str | Path, table: pd.DataFrame) -> str:
    studies = sorted(set(table["study"])) if "study" in table and len(table) else []
    return studies[0] if len(studies) == 1 else str(results) if not isinstance(results, pd.DataFrame) else "?"


def comparison_table(
    a: pd.DataFrame | str | Path,
    b: pd.DataFrame | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    label: str = "",
    **estimate_options: Any,
) -> pd.DataFrame:
    """The rate of study ``a`` minus the rate of study ``b``, per truth index and metric.

    Each side is one series per (truth, metric): hand in two studies of one gate and fitted k each
    for the metrics compared (a series with two gates at one (n, replicate) is refused by
    :func:`mixsim.rates.compare_rates`). The two studies' data sets are independent; the rates,
    their difference and the n-ratio come from :func:`mixsim.rates.compare_rates` with the ``[rates]``
    table that ``a`` declared before its run (recorded in its study.json), overridden by
    ``estimate_options``.

    Parameters
    ----------
    a, b : DataFrame (from :func:`load_results`), or results directories / files
    metrics : sequence of str, optional
        Metrics to compare, in this order; default every error metric the two tables share (all
        but :data:`mixsim.study.RATE_EXCLUDED_METRICS`), sorted.
    label : str, default ""
        The ``comparison`` column of every row (to tell several comparisons apart in one table).
    **estimate_options
        Keywords of :func:`mixsim.rates.compare_rates` (``average``, ``level``, ``n_boot``, ...).

    Returns
    -------
    pandas.DataFrame
        :data:`COMPARISON_COLUMNS`: per (truth, metric) whose series have at least two sizes with
        two replicates each on both sides: ``a``, ``b`` (study names), ``rate_a``, ``rate_b`` (the
        rates the verdict uses), ``power_law_a``, ``power_law_b`` (the curvature checks),
        ``difference`` with ``difference_low``, ``difference_high`` and its ``verdict`` ("faster":
        a's errors fall faster), ``paired``, at the middle error level ``eps`` of the common range
        the ratio of sample sizes ``n_ratio`` (a over b, with its interval) and its ``efficiency``
        verdict, and the n-to-eps ratio at b's middle size ``n_ref`` (``ref_ratio``: the n that a
        needs for the error b reaches at ``n_ref``, over ``n_ref``; with ``ref_ratio_low``,
        ``ref_ratio_high``, ``ref_efficiency``). One row per (truth, estimator, metric): every
        estimator both tables hold ("mle" first) is compared with the same estimator.
        With ``paired=True`` (matched truths sampled with common random numbers, the same unit
        seeds), replicate r of both studies is resampled together, and a unit whose partner has
        no usable value (a failed fit) is left out of both sides.
    """
    ta, tb = as_table(a), as_table(b)
    options = dict(rate_context(a, None).rates) | estimate_options
    if metrics is None:
        metrics = sorted((set(ta["metric"]) & set(tb["metric"])) - set(RATE_EXCLUDED_METRICS))
    truths_a = set(ta["truth"]) if "truth" in ta else {0}
    truths_b = set(tb["truth"]) if "truth" in tb else {0}
    name_a, name_b = _name(a, ta), _name(b, tb)
    estimators = [e for e in estimators_held(ta) if e in set(estimators_held(tb))]
    rows = []
    for truth, estimator, metric in itertools.product(sorted(truths_a & truths_b), estimators, metrics):
        sa, sb = series(ta, metric, truth, estimator), series(tb, metric, truth, estimator)
        if options.get("paired"):  # a unit enters only with its partner (a failed fit drops the pair's replicate)
            sa, sb = _common_units(sa, sb), _common_units(sb, sa)
        if has_rate(sa) and has_rate(sb):
            rows.append(_comparison_row(sa, sb, options) | {
                "comparison": label, "truth": int(truth), "estimator": estimator, "metric": metric, "a": name_a, "b": name_b})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _common_units(rows: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``rows`` whose (n, replicate) ``other`` has too."""
    keys = pd.MultiIndex.from_frame(rows[["n", "replicate"]])
    return rows[keys.isin(pd.MultiIndex.from_frame(other[["n", "replicate"]]))]


def _comparison_row(sa: pd.DataFrame, sb: pd.DataFrame, options: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one row of :func:`comparison_table`: a's series against b's."""
    c = compare_rates(sa["n"], sa["value"], sb["n"], sb["value"], replicate_a=sa["replicate"],
                      replicate_b=sb["replicate"], **options)
    return {key: value for key, value in c.to_row().items() if key in COMPARISON_COLUMNS} | {
        "power_law_a": c.a.power_law, "power_law_b": c.b.power_law}


def verdict_counts(comparisons: pd.DataFrame, by: str = "metric") -> pd.DataFrame:
    """How many rows (truths) of a :func:`comparison_table` say faster, slower or cannot tell, per ``by``.

    Returns
    -------
    pandas.DataFrame
        Columns ``by``, ``truths``, ``faster``, ``slower``, ``cannot tell``; one row per value of
        ``by`` in order of first appearance.
    """
    columns = [by, "truths", *VERDICTS]
    if comparisons.empty:
        return pd.DataFrame(columns=columns)
    if by not in comparisons:
        raise ValueError(f"by must be a column of the comparison table; got {by!r} (columns: {list(comparisons.columns)})")
    out = []
    for key, sub in comparisons.groupby(by, sort=False):
        counts = sub["verdict"].value_counts()
        out.append({by: key, "truths": len(sub), **{v: int(counts.get(v, 0)) for v in VERDICTS}})
    return pd.DataFrame(out, columns=columns)
