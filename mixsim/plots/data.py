"""The numbers of an error-vs-n or local-slope figure, as tidy tables built from the rate tables.

No slope is fitted here: the fitted lines and their intervals are the rows of
:func:`mixsim.study.rate_table`, the local slopes those of :func:`mixsim.study.local_rate_table`,
the theory's exponents those of :func:`mixsim.study.theory`. Each figure table has one row per
point, fitted-line end or theory-line end, so what is saved beside a figure is what was drawn.

Rows are used as the rate tables use them: failed fits (:data:`mixsim.study.FAILED_STATUSES`)
are left out; fits that did not meet their tolerance are kept. Values that are NaN or <= 0
cannot sit on a log scale: they are dropped with a :class:`PlotWarning`, except for a series
that is exactly 0 in every replicate (a cell type the fits do not have, such as multi-atom cells
of an exact-fitted model), which is left out silently.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..rates import AVERAGES
from ..study import FAILED_STATUSES, RateContext, as_table, local_rate_table, one_estimator, rate_context, rate_table, theory
from .style import SERIES_KEYS, PlotWarning, as_by, as_list, canonical_average, series_labels, sorted_keys

#: Columns of an error-vs-n figure table (:func:`error_vs_n_data`).
DATA_COLUMNS = [
    "panel", "series", *SERIES_KEYS, "kind", "n", "value", "low", "high", "replicates", "dropped",
    "slope", "ci_low", "ci_high", "exponent", "tag",
]


# ---------------------------------------------------------------------------------------------
# bands: what the bars around each point mean
# ---------------------------------------------------------------------------------------------

def _se_band(values: np.ndarray, average: str) -> tuple[float, float]:
    """Average -/+ one Monte Carlo standard error (of the mean, or of the mean log for the
    geometric mean; a median has none: :func:`check_options` refuses that pair)."""
    if values.size < 2:
        return np.nan, np.nan
    if canonical_average(average) == "log":
        logs = np.log(values)
        half = logs.std(ddof=1) / np.sqrt(values.size)
        return float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))
    half = values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def _quartile_band(values: np.ndarray, average: str) -> tuple[float, float]:
    low, high = np.quantile(values, [0.25, 0.75])
    return float(low), float(high)


def _no_band(values: np.ndarray, average: str) -> tuple[float, float]:
    return np.nan, np.nan


#: Bands around each point: ``"se"`` (the average -/+ one Monte Carlo standard error; for
#: ``average="log"`` the geometric mean times/divided by exp(s.e. of the mean log)),
#: ``"quartiles"`` (25% and 75% of the replicates), ``"none"``.
BANDS: dict[str, Callable[[np.ndarray, str], tuple[float, float]]] = {
    "se": _se_band,
    "quartiles": _quartile_band,
    "none": _no_band,
}


def check_options(average: str, band: str, level: float) -> None:
    """Raise ValueError for an unknown average or band, a median with a standard-error band, or a
    level outside (0, 1)."""
    canonical_average(average)
    if band not in BANDS:
        raise ValueError(f"band must be one of {tuple(BANDS)}; got {band!r}")
    if band == "se" and average == "median":
        raise ValueError("band='se' is a standard error of a mean; with average='median' use band='quartiles' or 'none'")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level!r}")


# ---------------------------------------------------------------------------------------------
# rows: what enters a figure
# ---------------------------------------------------------------------------------------------

def load(table: pd.DataFrame | str | Path, true_k: int | None) -> tuple[pd.DataFrame, RateContext]:
    """The table and what its study says (true k, gate families, expert); loads a path once."""
    return as_table(table), rate_context(table, true_k)


def select(df: pd.DataFrame, metrics: Sequence[str], gates: Any, fitted_k: Any) -> pd.DataFrame:
    """Finished fits of the chosen metrics, gates and numbers of experts, of the table's main
    estimator (:func:`mixsim.study.main_estimator`: the search's "mle" where there is one)."""
    df = one_estimator(df)
    keep = df["metric"].isin(list(metrics)) & ~df["status"].isin(FAILED_STATUSES)
    if gates is not None:
        keep &= df["gate"].isin(as_list(gates))
    if fitted_k is not None:
        keep &= df["fitted_k"].isin([int(k) for k in as_list(fitted_k)])
    return df[keep]


def loggable(df: pd.DataFrame, warn: bool = True) -> pd.DataFrame:
    """Rows with finite values > 0; one warning names the series that lose some (all-zero series
    are left out silently: they are cell types the fits do not have)."""
    values = df["value"].to_numpy(dtype=float)
    good = np.isfinite(values) & (values > 0)
    if good.all():
        return df
    totals = df.groupby(list(SERIES_KEYS)).size()
    lost = []
    for key, group in df[~good].groupby(list(SERIES_KEYS), sort=True):
        total = int(totals[key])
        if len(group) < total or not (group["value"] == 0).all():
            lost.append(f"{key[0]} {key[1]} k={key[2]} {key[3]} ({len(group)} of {total})")
    if lost and warn:
        warnings.warn(
            f"values NaN or <= 0 left out of the log-scale figure and its fitted slopes (the average of the rest "
            f"is biased upward): {'; '.join(lost)}", PlotWarning, stacklevel=4)
    return df[good]


def _dropped_counts(selected: pd.DataFrame, used: pd.DataFrame) -> pd.Series:
    """Rows dropped (NaN or <= 0) per series and n."""
    keys = [*SERIES_KEYS, "n"]
    total = selected.groupby(keys).size()
    kept = used.groupby(keys).size().reindex(total.index, fill_value=0)
    return total - kept


# ---------------------------------------------------------------------------------------------
# the numbers of an error-vs-n figure
# ---------------------------------------------------------------------------------------------

def _points(group: pd.DataFrame, average: str, band: str) -> pd.DataFrame:
    """One row per n: the average over replicates, the band, the number of replicates."""
    rows = []
    for n, g in group.groupby("n", sort=True):
        values = g["value"].to_numpy(dtype=float)
        low, high = BANDS[band](values, average)
        rows.append({"kind": "point", "n": int(n), "value": float(AVERAGES[canonical_average(average)](values, 0)),
                     "low": low, "high": high, "replicates": int(values.size)})
    return pd.DataFrame(rows)


def _rates(used: pd.DataFrame, average: str, level: float) -> dict[tuple, Any]:
    """The rate table's row per series key (slope, its bootstrap interval at ``level``, intercept,
    n_min, n_max). A figure series pools the truths of an ensemble, so the table is asked for one
    rate per series."""
    if used.empty:
        return {}
    pooled = used.drop(columns="truth", errors="ignore")
    table = rate_table(pooled, metrics=sorted(set(used["metric"])), average=canonical_average(average), level=level)
    return {(r.study, r.gate, int(r.fitted_k), r.metric): r for r in table.itertuples(index=False)}


def _fit_rows(rate: Any) -> pd.DataFrame:
    """The two ends of a series' fitted line (a row of the rate table; empty without one)."""
    if rate is None:
        return pd.DataFrame()
    ends = np.array([rate.n_min, rate.n_max])
    fitted = np.exp(rate.intercept + rate.slope * np.log(ends))
    return pd.DataFrame({"kind": "fit", "n": ends.astype(int), "value": fitted, "slope": rate.slope,
                         "ci_low": rate.slope_low, "ci_high": rate.slope_high})


def _theory_rows(points: pd.DataFrame, rate: Any, exponent: float, tag: str, anchor: str) -> pd.DataFrame:
    """A reference line ``C n^exponent`` over the points' range, through the anchor."""
    n = points["n"].to_numpy(dtype=float)
    if anchor == "first":
        n0, y0 = n[0], float(points["value"].iloc[0])
    else:  # the fitted line's geometric centre (the points' sizes are the rate's sizes)
        n0 = float(np.exp(np.mean(np.log(n))))
        if rate is not None:
            y0 = float(np.exp(rate.intercept + rate.slope * np.log(n0)))
        else:  # no rate (one replicate per size): the centre of the points, where that line would pass
            y0 = float(np.exp(np.mean(np.log(points["value"].to_numpy(dtype=float)))))
    ends = n[[0, -1]]
    return pd.DataFrame({"kind": "theory", "n": ends.astype(int), "value": y0 * (ends / n0) ** exponent,
                         "exponent": exponent, "tag": tag})


def _series_frames(used: pd.DataFrame, ctx: RateContext, average: str, band: str, level: float,
                   with_theory: bool, anchor: str) -> list[pd.DataFrame]:
    frames = []
    groups = dict(list(used.groupby(list(SERIES_KEYS), sort=True)))
    rates = _rates(used, average, level)
    for key in sorted_keys(list(groups), ctx.families):
        study, gate, k, metric = key
        points = _points(groups[key], average, band)
        rate = rates.get((study, gate, int(k), metric))
        parts = [points, _fit_rows(rate)]
        predicted = theory(ctx.families.get(gate, gate), int(k), ctx.true_k, metric, ctx.expert) if with_theory else {}
        if predicted and len(points) > 1:  # (a reference slope through a single size would have no length)
            parts.append(_theory_rows(points, rate, predicted["theory_exponent"], predicted["theory_tag"], anchor))
        frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
        frames.append(frame.assign(study=study, gate=gate, fitted_k=int(k), metric=metric))
    return frames


def _share_theory(data: pd.DataFrame) -> pd.DataFrame:
    """One reference line per exponent: series that share an exponent get the same line, over the
    union of their sizes, through the geometric mean of their own lines (``log C`` averaged);
    a series alone with its exponent keeps its own line."""
    rows_of_theory = data[data["kind"] == "theory"]
    if rows_of_theory.empty:
        return data
    data = data.copy()
    for _, rows in rows_of_theory.groupby(rows_of_theory["exponent"].astype(float).round(12)):
        exponent = float(rows["exponent"].iloc[0])
        n, y = rows["n"].to_numpy(dtype=float), rows["value"].to_numpy(dtype=float)
        log_c = float(np.mean(np.log(y) - exponent * np.log(n)))  # two rows per series: a mean over series
        ends = np.array([n.min(), n.max()])
        values = np.exp(log_c + exponent * np.log(ends))
        for _, pair in rows.groupby(list(SERIES_KEYS), sort=False):
            data.loc[pair.index, "n"] = ends.astype(int)
            data.loc[pair.index, "value"] = values
    return data


def _finish_data(frames: list[pd.DataFrame], selected: pd.DataFrame, used: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Concatenate series, add labels and dropped counts, order the columns."""
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in DATA_COLUMNS})
    data = _share_theory(pd.concat(frames, ignore_index=True))
    keys = [tuple(row) for row in data[list(SERIES_KEYS)].drop_duplicates().itertuples(index=False)]
    labels = series_labels(keys, by)
    data["series"] = [labels[tuple(r)] for r in data[list(SERIES_KEYS)].itertuples(index=False)]
    dropped = _dropped_counts(selected, used)
    data["dropped"] = [int(dropped.get((*tuple(r[:4]), r[4]), 0)) if kind == "point" else np.nan
                       for r, kind in zip(data[[*SERIES_KEYS, "n"]].itertuples(index=False), data["kind"])]
    data["panel"] = ""
    return data.reindex(columns=DATA_COLUMNS)


def error_vs_n_frame(df: pd.DataFrame, ctx: RateContext, metric: str | Sequence[str], *, by: str | Sequence[str],
                     average: str, band: str, level: float, theory: bool, anchor: str, gates: Any,
                     fitted_k: Any, warn: bool = True) -> pd.DataFrame:
    """:func:`error_vs_n_data` of a loaded table and its :class:`mixsim.study.RateContext`."""
    check_options(average, band, level)
    if anchor not in ("centre", "first"):
        raise ValueError(f"anchor must be 'centre' or 'first'; got {anchor!r}")
    selected = select(df, as_list(metric), gates, fitted_k)
    used = loggable(selected, warn)
    frames = _series_frames(used, ctx, average, band, level, theory, anchor)
    return _finish_data(frames, selected, used, as_by(by))


def error_vs_n_data(
    table: pd.DataFrame | str | Path,
    metric: str | Sequence[str],
    *,
    by: str | Sequence[str] = "gate",
    average: str = "mean",
    band: str = "se",
    level: float = 0.95,
    theory: bool = True,
    anchor: str = "centre",
    gates: str | Sequence[str] | None = None,
    fitted_k: int | Sequence[int] | None = None,
    true_k: int | None = None,
) -> pd.DataFrame:
    """The numbers :func:`mixsim.plots.plot_error_vs_n` draws, as a long table.

    Parameters are those of :func:`mixsim.plots.plot_error_vs_n`.

    Returns
    -------
    pandas.DataFrame
        Columns ``panel, series, study, gate, fitted_k, metric, kind, n, value, low, high,
        replicates, dropped, slope, ci_low, ci_high, exponent, tag``. ``kind`` is ``"point"``
        (the average at one n; ``low``/``high`` the band, ``replicates`` used, ``dropped`` NaN or
        <= 0 values left out), ``"fit"`` (the two ends of the line of the series' row of
        :func:`mixsim.study.rate_table`; ``slope``, ``ci_low``, ``ci_high``: the slope and its
        bootstrap interval, ``slope_low`` and ``slope_high`` there; absent without two sizes of
        two replicates or more) or ``"theory"`` (the two ends of the reference line drawn for the series' exponent;
        ``exponent``, ``tag`` the series' own; absent with a single n or where theory has none).
        Series that share an exponent share one line: over the union of their sizes, through the
        geometric mean of their anchors.
    """
    df, ctx = load(table, true_k)
    return error_vs_n_frame(df, ctx, metric, by=by, average=average, band=band, level=level, theory=theory,
                            anchor=anchor, gates=gates, fitted_k=fitted_k)


# ---------------------------------------------------------------------------------------------
# local slopes
# ---------------------------------------------------------------------------------------------

def local_frame(df: pd.DataFrame, ctx: RateContext, metric: str | Sequence[str], *, by: str | Sequence[str],
                average: str, gates: Any, fitted_k: Any, warn: bool = True) -> pd.DataFrame:
    """:func:`local_slopes_data` of a loaded table and its :class:`mixsim.study.RateContext`."""
    used = loggable(select(df, as_list(metric), gates, fitted_k), warn)
    local = local_rate_table(used, average=canonical_average(average))
    if local.empty:
        return local.assign(series=pd.Series(dtype=object), exponent=pd.Series(dtype=float), tag=pd.Series(dtype=object))
    rows = [tuple(r) for r in local[list(SERIES_KEYS)].itertuples(index=False)]
    keys = list(dict.fromkeys(rows))
    labels = series_labels(keys, as_by(by))
    predicted = {k: theory(ctx.families.get(k[1], k[1]), int(k[2]), ctx.true_k, k[3], ctx.expert) for k in keys}
    local.insert(0, "series", [labels[k] for k in rows])
    local["exponent"] = [predicted[k].get("theory_exponent", np.nan) for k in rows]
    local["tag"] = [predicted[k].get("theory_tag", "") for k in rows]
    return local


def local_slopes_data(
    table: pd.DataFrame | str | Path,
    metric: str | Sequence[str],
    *,
    by: str | Sequence[str] = "gate",
    average: str = "mean",
    gates: str | Sequence[str] | None = None,
    fitted_k: int | Sequence[int] | None = None,
    true_k: int | None = None,
) -> pd.DataFrame:
    """Slopes between neighbouring sample sizes (:func:`mixsim.study.local_rate_table`), with the
    theory's exponent per series.

    Parameters are those of :func:`mixsim.plots.plot_local_slopes`.

    Returns
    -------
    pandas.DataFrame
        Columns ``series, study, gate, fitted_k, metric, n_low, n_high, n_mid`` (geometric mean of
        the two sizes), ``slope`` (``diff(log average) / diff(log n)``), ``exponent`` and ``tag``
        (NaN / "" where theory has none). Series with a single n have no rows.
    """
    df, ctx = load(table, true_k)
    return local_frame(df, ctx, metric, by=by, average=average, gates=gates, fitted_k=fitted_k)
