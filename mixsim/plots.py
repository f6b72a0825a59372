"""Figures of a convergence study: error against n on log-log axes, per-group panels, local slopes.

Every figure is drawn from a tidy table of the numbers it shows (one row per point, fitted-line
end or theory-line end), so what is saved as CSV beside a figure is exactly what was drawn:

* :func:`error_vs_n_data` / :func:`plot_error_vs_n` - the average error at each n with a band
  (Monte Carlo standard error or replicate quartiles), the least-squares line of
  :func:`mixsim.rates.fit_rate` with its slope and interval in the legend, and dashed reference
  slopes from :func:`mixsim.rates.theory_rate`;
* :func:`plot_groups` - one panel per parameter group (weights, gate slopes, expert slopes,
  expert intercepts, variances), so gates can be compared group by group;
* :func:`local_slopes_data` / :func:`plot_local_slopes` - slopes between neighbouring sizes
  against n, with the theory's exponent: has the asymptotic regime been reached?
* :func:`save_figure` - PNG, PDF and the plotted numbers as CSV; :func:`plot_study` - a study's
  standard figures (``mixsim plot DIR``).

Rows are used as :func:`mixsim.study.rate_table` uses them: failed fits (status ``error`` or
``metric_error``) are left out; fits that did not meet their tolerance are kept. Values that are
NaN or <= 0 cannot sit on a log scale: they are dropped with a :class:`PlotWarning`, except for a
series that is exactly 0 in every replicate (a cell type the fits do not have, such as
multi-atom cells of an exact-fitted model), which is left out silently. Rate tables are not
duplicated here: use :func:`mixsim.study.rate_table`.

Functions that draw on one axes take ``ax=None`` (a new pyplot figure) and return the axes.
:func:`plot_study` draws on :class:`matplotlib.figure.Figure` objects without pyplot, so it
runs headless and leaves no open figures behind.
"""
from __future__ import annotations

import warnings
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

from ._results import FAILED_STATUSES
from .losses import GROUPS
from .rates import AVERAGES, fit_rate
from .study import RATE_EXCLUDED_METRICS, _as_table, _context, _Context, _theory, local_rate_table

__all__ = [
    "BANDS",
    "PlotWarning",
    "error_vs_n_data",
    "plot_error_vs_n",
    "plot_groups",
    "local_slopes_data",
    "plot_local_slopes",
    "plotted_data",
    "save_figure",
    "plot_study",
]

SERIES_KEYS = ("study", "gate", "fitted_k", "metric")
DATA_COLUMNS = [
    "panel", "series", *SERIES_KEYS, "kind", "n", "value", "low", "high", "replicates", "dropped",
    "slope", "ci_low", "ci_high", "exponent", "tag",
]

#: Metrics drawn by :func:`plot_study` as error-vs-n and local-slope figures, when present.
MAIN_METRICS = ("D1", "D2", "hellinger", "tv")

_METRIC_LABELS = {
    "D1": "Voronoi loss D1",
    "D2": "Voronoi loss D2",
    "hellinger": "expected Hellinger distance",
    "tv": "expected total-variation distance",
}
_GROUP_LABELS = {
    "weight": r"weights (cell sums of $e^{\beta_0}$)",
    "gate_slope": r"gate slopes $\beta_1$",
    "expert_slope": r"expert slopes $a$",
    "expert_intercept": r"expert intercepts $b$",
    "variance": r"variances $\sigma^2$",
}
_AVERAGE_TEXT = {"mean": "mean", "median": "median", "logmean": "geometric mean"}
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_DPI = 150

# The numbers each axes was drawn from, for plotted_data() and save_figure().
_DRAWN: "weakref.WeakKeyDictionary[Axes, pd.DataFrame]" = weakref.WeakKeyDictionary()


class PlotWarning(UserWarning):
    """Values left out of a figure (NaN or <= 0 on a log scale)."""


# ---------------------------------------------------------------------------------------------
# bands: what the bars around each point mean
# ---------------------------------------------------------------------------------------------

def _se_band(values: np.ndarray, average: str) -> tuple[float, float]:
    """Average -/+ one Monte Carlo standard error (of the mean, or of the mean log for logmean;
    a median has none: :func:`_check_options` refuses that pair)."""
    if values.size < 2:
        return np.nan, np.nan
    if average == "logmean":
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
#: ``average="logmean"`` the geometric mean times/divided by exp(s.e. of the mean log)),
#: ``"quartiles"`` (25% and 75% of the replicates), ``"none"``.
BANDS: dict[str, Callable[[np.ndarray, str], tuple[float, float]]] = {
    "se": _se_band,
    "quartiles": _quartile_band,
    "none": _no_band,
}


def _band_text(band: str, average: str) -> str:
    avg = _AVERAGE_TEXT[average]
    se = "×/÷ exp(1 Monte Carlo s.e. of the mean log)" if average == "logmean" else "±1 Monte Carlo s.e."
    return {
        "se": f"points: {avg} over replicates; bars: {se}",
        "quartiles": f"points: {avg} over replicates; bars: replicate quartiles (25%, 75%)",
        "none": f"points: {avg} over replicates",
    }[band]


def _check_options(average: str, band: str, level: float) -> None:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {tuple(AVERAGES)}; got {average!r}")
    if band not in BANDS:
        raise ValueError(f"band must be one of {tuple(BANDS)}; got {band!r}")
    if band == "se" and average == "median":
        raise ValueError("band='se' is a standard error of a mean; with average='median' use band='quartiles' or 'none'")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level!r}")


# ---------------------------------------------------------------------------------------------
# rows: what enters a figure
# ---------------------------------------------------------------------------------------------

def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, (str, int, np.integer)) else list(value)


def _select(df: pd.DataFrame, metrics: Sequence[str], gates: Any, fitted_k: Any) -> pd.DataFrame:
    """Finished fits of the chosen metrics, gates and numbers of experts."""
    keep = df["metric"].isin(list(metrics)) & ~df["status"].isin(FAILED_STATUSES)
    if gates is not None:
        keep &= df["gate"].isin(_as_list(gates))
    if fitted_k is not None:
        keep &= df["fitted_k"].isin([int(k) for k in _as_list(fitted_k)])
    return df[keep]


def _loggable(df: pd.DataFrame, warn: bool = True) -> pd.DataFrame:
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
# series labels, colours and markers
# ---------------------------------------------------------------------------------------------

def _format_key(column: str, value: Any) -> str:
    if column == "fitted_k":
        return f"k={int(value)}"
    if column == "study":
        return f"[{value}]"
    return str(value)


def _series_labels(keys: list[tuple], by: Sequence[str]) -> dict[tuple, str]:
    """Label per series: the ``by`` columns first, then gate and k, then metric and study if they vary."""
    varying = [c for i, c in enumerate(SERIES_KEYS) if len({k[i] for k in keys}) > 1]
    shown = list(dict.fromkeys([*by, "gate", "fitted_k", *varying]))
    index = {c: i for i, c in enumerate(SERIES_KEYS)}
    return {k: " ".join(_format_key(c, k[index[c]]) for c in shown) for k in keys}


def _as_by(by: str | Sequence[str]) -> list[str]:
    out = [by] if isinstance(by, str) else list(by)
    bad = [c for c in out if c not in SERIES_KEYS]
    if bad or not out:
        raise ValueError(f"by must name one or more of {SERIES_KEYS}; got {by!r}")
    return out


def _styles(keys: list[tuple], by: Sequence[str], width: int = 4) -> dict[tuple, tuple[str, str]]:
    """(colour, marker) per series key (the first ``width`` of the series columns): one colour per
    value of the ``by`` columns, markers within it."""
    index = [SERIES_KEYS.index(c) for c in by if SERIES_KEYS.index(c) < width]
    colour_of: dict[tuple, str] = {}
    count: dict[tuple, int] = {}
    out = {}
    for key in sorted(keys, key=str):
        group = tuple(key[i] for i in index)
        colour = colour_of.setdefault(group, _COLORS[len(colour_of) % len(_COLORS)])
        out[key] = (colour, _MARKERS[count.get(group, 0) % len(_MARKERS)])
        count[group] = count.get(group, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# the numbers of an error-vs-n figure
# ---------------------------------------------------------------------------------------------

def _points(group: pd.DataFrame, average: str, band: str) -> pd.DataFrame:
    """One row per n: the average over replicates, the band, the number of replicates."""
    rows = []
    for n, g in group.groupby("n", sort=True):
        values = g["value"].to_numpy(dtype=float)
        low, high = BANDS[band](values, average)
        rows.append({"kind": "point", "n": int(n), "value": float(AVERAGES[average](values, 0)),
                     "low": low, "high": high, "replicates": int(values.size)})
    return pd.DataFrame(rows)


def _fit_rows(group: pd.DataFrame, average: str, level: float) -> tuple[pd.DataFrame, Any]:
    """The fitted line's two ends (empty with fewer than two sizes) and the RateFit (or None)."""
    if group["n"].nunique() < 2:
        return pd.DataFrame(), None
    rate = fit_rate(group["n"].to_numpy(), group["value"].to_numpy(), average=average, level=level, n_boot=0)
    ends = rate.sizes[[0, -1]]
    fitted = np.exp(rate.intercept + rate.slope * np.log(ends))
    rows = pd.DataFrame({"kind": "fit", "n": ends.astype(int), "value": fitted, "slope": rate.slope,
                         "ci_low": rate.ci_low, "ci_high": rate.ci_high})
    return rows, rate


def _theory_rows(points: pd.DataFrame, rate: Any, exponent: float, tag: str, anchor: str) -> pd.DataFrame:
    """A reference line ``C n^exponent`` over the points' range, through the anchor."""
    n = points["n"].to_numpy(dtype=float)
    if anchor == "first":
        n0, y0 = n[0], float(points["value"].iloc[0])
    else:  # the fitted line's geometric centre
        n0 = float(np.exp(np.mean(np.log(rate.sizes))))
        y0 = float(np.exp(rate.intercept + rate.slope * np.log(n0)))
    ends = n[[0, -1]]
    return pd.DataFrame({"kind": "theory", "n": ends.astype(int), "value": y0 * (ends / n0) ** exponent,
                         "exponent": exponent, "tag": tag})


def _series_frames(used: pd.DataFrame, ctx: _Context, average: str, band: str, level: float,
                   theory: bool, anchor: str) -> list[pd.DataFrame]:
    frames = []
    for key, group in used.groupby(list(SERIES_KEYS), sort=True):
        points = _points(group, average, band)
        fit, rate = _fit_rows(group, average, level)
        parts = [points, fit]
        study, gate, k, metric = key
        predicted = _theory(ctx.families.get(gate, gate), int(k), ctx.true_k, metric, ctx.expert) if theory else {}
        if predicted and len(points) > 1:  # (a reference slope through a single size would have no length)
            parts.append(_theory_rows(points, rate, predicted["theory_exponent"], predicted["theory_tag"], anchor))
        frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
        frames.append(frame.assign(study=study, gate=gate, fitted_k=int(k), metric=metric))
    return frames


def _empty_data() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in DATA_COLUMNS})


def _finish_data(frames: list[pd.DataFrame], selected: pd.DataFrame, used: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Concatenate series, add labels and dropped counts, order the columns."""
    if not frames:
        return _empty_data()
    data = pd.concat(frames, ignore_index=True)
    keys = [tuple(row) for row in data[list(SERIES_KEYS)].drop_duplicates().itertuples(index=False)]
    labels = _series_labels(keys, by)
    data["series"] = [labels[tuple(r)] for r in data[list(SERIES_KEYS)].itertuples(index=False)]
    dropped = _dropped_counts(selected, used)
    data["dropped"] = [int(dropped.get((*tuple(r[:4]), r[4]), 0)) if kind == "point" else np.nan
                       for r, kind in zip(data[[*SERIES_KEYS, "n"]].itertuples(index=False), data["kind"])]
    data["panel"] = ""
    return data.reindex(columns=DATA_COLUMNS)


def _load(table: pd.DataFrame | str | Path, true_k: int | None) -> tuple[pd.DataFrame, _Context]:
    """The table and what its study says (true k, gate families, expert); loads a path once."""
    return _as_table(table), _context(table, true_k)


def _error_vs_n_frame(df: pd.DataFrame, ctx: _Context, metric: str | Sequence[str], *, by: str | Sequence[str],
                      average: str, band: str, level: float, theory: bool, anchor: str, gates: Any,
                      fitted_k: Any, warn: bool = True) -> pd.DataFrame:
    _check_options(average, band, level)
    if anchor not in ("centre", "first"):
        raise ValueError(f"anchor must be 'centre' or 'first'; got {anchor!r}")
    selected = _select(df, _as_list(metric), gates, fitted_k)
    used = _loggable(selected, warn)
    frames = _series_frames(used, ctx, average, band, level, theory, anchor)
    return _finish_data(frames, selected, used, _as_by(by))


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
    """The numbers :func:`plot_error_vs_n` draws, as a long table.

    Parameters are those of :func:`plot_error_vs_n`.

    Returns
    -------
    pandas.DataFrame
        Columns ``panel, series, study, gate, fitted_k, metric, kind, n, value, low, high,
        replicates, dropped, slope, ci_low, ci_high, exponent, tag``. ``kind`` is ``"point"``
        (the average at one n; ``low``/``high`` the band, ``replicates`` used, ``dropped`` NaN or
        <= 0 values left out), ``"fit"`` (the two ends of the least-squares line; ``slope``,
        ``ci_low``, ``ci_high``; absent with a single n) or ``"theory"`` (the two ends of the
        reference line; ``exponent``, ``tag``; absent with a single n or where theory has none).
    """
    df, ctx = _load(table, true_k)
    return _error_vs_n_frame(df, ctx, metric, by=by, average=average, band=band, level=level, theory=theory,
                             anchor=anchor, gates=gates, fitted_k=fitted_k)


# ---------------------------------------------------------------------------------------------
# drawing an error-vs-n axes from its numbers
# ---------------------------------------------------------------------------------------------

def _fraction(exponent: float) -> str:
    """``-0.125`` -> ``"-1/8"`` (theory's exponents are simple fractions)."""
    frac = Fraction(float(exponent)).limit_denominator(24)
    return f"{frac.numerator}/{frac.denominator}" if frac.denominator != 1 else f"{frac.numerator}"


def _exponent_text(exponent: float) -> str:
    return rf"$n^{{{_fraction(exponent)}}}$"


def _fit_text(fit: pd.DataFrame) -> str:
    row = fit.iloc[0]
    if np.isfinite(row["ci_low"]):
        return f"slope {row['slope']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return f"slope {row['slope']:.2f} (two sizes: no interval)"


def _draw_series(ax: Axes, s: pd.DataFrame, colour: str, marker: str) -> list[tuple[Any, str]]:
    """Points with bars, fitted line and theory line of one series; returns (handle, label) pairs."""
    label = str(s["series"].iloc[0])
    pts, fit, th = (s[s["kind"] == kind] for kind in ("point", "fit", "theory"))
    n, y = pts["n"].to_numpy(dtype=float), pts["value"].to_numpy(dtype=float)
    low, high = pts["low"].to_numpy(dtype=float), pts["high"].to_numpy(dtype=float)
    has_band = np.isfinite(low) & np.isfinite(high)
    # a lower bar end at or below 0 cannot be drawn on a log axis: show it reaching far down
    yerr = np.vstack([np.where(has_band, y - np.where(low > 0, low, y * 1e-3), 0), np.where(has_band, high - y, 0)])
    points = ax.errorbar(n, y, yerr=yerr, fmt=marker, color=colour, ms=5, capsize=2, elinewidth=1, lw=0, zorder=3)
    out: list[tuple[Any, str]] = []
    if len(fit):
        (line,) = ax.plot(fit["n"], fit["value"], "-", color=colour, lw=1.5, zorder=2)
        out.append(((points.lines[0], line), f"{label}: {_fit_text(fit)}"))
    else:
        out.append((points.lines[0], f"{label}: one n, no slope"))
    if len(th):
        (tline,) = ax.plot(th["n"], th["value"], "--", color=colour, lw=1.2, alpha=0.8, zorder=1)
        row = th.iloc[0]
        out.append((tline, f"{label} theory: {_exponent_text(row['exponent'])} [{row['tag']}]"))
    return out


def _format_log_x(ax: Axes, n: Any) -> None:
    """Readable sample-size ticks: labels at 1, 2, 5 x 10^j when the sizes span 2.5 decades or less,
    no labels on minor ticks (they collide on short ranges)."""
    n = np.asarray(n, dtype=float)
    n = n[np.isfinite(n) & (n > 0)]
    ax.xaxis.set_minor_formatter(NullFormatter())
    if n.size and n.max() == n.min():  # a single size: matplotlib would leave a zero-width axis
        ax.set_xlim(n.min() / 2, n.max() * 2)
    if n.size and np.log10(n.max() / n.min()) <= 2.5:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(10, 10)))


def _series_keys(data: pd.DataFrame) -> list[tuple]:
    """Distinct (study, gate, fitted_k, metric) of a plotted table, in order of appearance."""
    return list(dict.fromkeys(tuple(r) for r in data[list(SERIES_KEYS)].itertuples(index=False)))


def _series_rows(data: pd.DataFrame, key: tuple) -> pd.DataFrame:
    return data[(data[list(SERIES_KEYS)] == pd.Series(key, index=list(SERIES_KEYS))).all(axis=1)]


def _legend_below(ax: Axes, handles: Sequence[Any], labels: Sequence[str], size: float, title: str = "") -> None:
    """A legend under the axes, so that it never hides a point (constrained layout makes room)."""
    ax.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=None)}, fontsize=size, title=title or None,
              title_fontsize=size, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)


def _draw_error_vs_n(ax: Axes, data: pd.DataFrame, by: Sequence[str], ylabel: str, legend_title: str,
                     legend_size: float = 8, styles: Mapping[tuple, tuple[str, str]] | None = None) -> Axes:
    """Draw an error-vs-n table on ``ax`` (log-log) and remember it for :func:`plotted_data`.

    ``styles`` maps series keys to (colour, marker), to keep colours equal across panels."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size n")
    ax.set_ylabel(ylabel)
    _DRAWN[ax] = data
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        return ax
    keys = _series_keys(data)
    styles = styles if styles is not None else _styles(keys, by)
    entries = []
    for key in keys:
        entries += _draw_series(ax, _series_rows(data, key), *styles[key])
    handles, labels = zip(*entries)
    _legend_below(ax, handles, labels, legend_size, legend_title)
    _format_log_x(ax, data["n"])
    ax.grid(True, which="major", alpha=0.3)
    return ax


def _metric_label(metrics: Sequence[str]) -> str:
    names = [_METRIC_LABELS.get(m, _group_metric_label(m)) for m in metrics]
    return names[0] if len(set(names)) == 1 else "error"


def _group_metric_label(metric: str) -> str:
    parts = metric.rsplit("_", 2)
    if len(parts) == 3 and parts[0] in GROUPS:
        return f"{parts[0].replace('_', ' ')} error ({parts[1]} cells, {parts[2]})"
    return metric


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (7.0, 5.0)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def plot_error_vs_n(
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
    ax: Axes | None = None,
) -> Axes:
    """Error against sample size on log-log axes, with fitted slopes and the theory's slopes.

    Every (study, gate, fitted k, metric) in the selected rows is its own series (never pooled):
    points at the average over replicates with a band, the least-squares line of
    :func:`mixsim.rates.fit_rate` labelled ``"softmax k=3: slope -0.52 [-0.60, -0.44]"`` (the
    t-interval at ``level``), and where :func:`mixsim.rates.theory_rate` has a prediction a
    dashed line ``C n^exponent`` labelled with the exponent and its confidence tag.

    Parameters
    ----------
    table : DataFrame or path
        A results table (:func:`mixsim.load_results`) or a results directory / file. A directory
        also supplies the true k and each gate label's family, for the theory lines.
    metric : str or sequence of str
        Metric name(s) of the ``metric`` column, e.g. ``"D1"`` or ``"variance_multi_unweighted"``.
    by : str or sequence of str, default "gate"
        Columns among ``study, gate, fitted_k, metric`` whose values get their own colour; series
        that share them differ by marker. Labels start with these columns.
    average : {"mean", "median", "logmean"}, default "mean"
        Summary of the replicates at one n (:data:`mixsim.rates.AVERAGES`); also what the slope
        is fitted to.
    band : {"se", "quartiles", "none"}, default "se"
        Bars around each point (:data:`BANDS`); their meaning is the legend's title.
        ``"se"`` needs ``average`` "mean" or "logmean".
    level : float, default 0.95
        Confidence level of the slope's t-interval.
    theory : bool, default True
        Draw the theory's reference slopes.
    anchor : {"centre", "first"}, default "centre"
        The theory line passes through the fitted line's geometric centre, or the first point.
    gates, fitted_k : optional
        Keep only these gate labels / numbers of experts.
    true_k : int, optional
        True number of experts, for the theory lines (read from a results directory otherwise;
        a bare DataFrame gets no theory lines without it).
    ax : matplotlib Axes, optional
        Axes to draw on; default a new pyplot figure.

    Returns
    -------
    matplotlib.axes.Axes
        The plotted numbers are available as :func:`plotted_data(ax) <plotted_data>`.

    Warns
    -----
    PlotWarning
        When NaN or non-positive values of a series are left out.
    """
    df, ctx = _load(table, true_k)
    data = _error_vs_n_frame(df, ctx, metric, by=by, average=average, band=band, level=level, theory=theory,
                             anchor=anchor, gates=gates, fitted_k=fitted_k)
    ylabel = f"{_metric_label(_as_list(metric))} ({_AVERAGE_TEXT[average]})"
    return _draw_error_vs_n(_new_axes(ax), data, _as_by(by), ylabel, _band_text(band, average))


# ---------------------------------------------------------------------------------------------
# per-group panels
# ---------------------------------------------------------------------------------------------

def _resolve_cells(used: pd.DataFrame, cells: str, weighting: str, true_k: int | None) -> dict[tuple, str]:
    """Cell type per (study, gate, fitted_k): as given, or for ``"auto"`` the multi-atom cells of
    an over-fitted model (known true k) or wherever multi-cell errors are not all zero."""
    out = {}
    for key, group in used.groupby(["study", "gate", "fitted_k"], sort=True):
        if cells != "auto":
            out[key] = cells
        elif true_k is not None:
            out[key] = "multi" if int(key[2]) > true_k else "single"
        else:
            multi = group[group["metric"].str.endswith(f"_multi_{weighting}")]["value"]
            out[key] = "multi" if (multi > 0).any() else "single"
    return out


def _group_rows(df: pd.DataFrame, group: str, chosen: dict[tuple, str], weighting: str) -> pd.DataFrame:
    """Rows of one parameter group, each (study, gate, fitted_k) at its chosen cell type."""
    wanted = {key: f"{group}_{c}_{weighting}" for key, c in chosen.items()}
    keys = list(zip(df["study"], df["gate"], df["fitted_k"]))
    keep = [wanted.get(k) == m for k, m in zip(keys, df["metric"])]
    return df[np.asarray(keep, dtype=bool)]


def _panel_grid(fig: Figure | None, n_panels: int) -> tuple[Figure, np.ndarray]:
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(15.0, 11.0), layout="constrained")
    axes = fig.subplots(2, (n_panels + 2) // 2, squeeze=False).ravel()
    return fig, axes


def _notes_panel(ax: Axes, lines: list[str]) -> None:
    ax.axis("off")
    ax.text(0.02, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=9, wrap=True)


def plot_groups(
    table: pd.DataFrame | str | Path,
    *,
    gates: str | Sequence[str] | None = None,
    fitted_k: int | Sequence[int] | None = None,
    weighting: str = "unweighted",
    cells: str = "auto",
    by: str | Sequence[str] = "gate",
    average: str = "mean",
    band: str = "se",
    level: float = 0.95,
    theory: bool = True,
    true_k: int | None = None,
    fig: Figure | None = None,
) -> np.ndarray:
    """One log-log error-vs-n panel per parameter group, lines per gate (and fitted k).

    Panels: weights, gate slopes, expert slopes, expert intercepts, variances (the keys of
    :func:`mixsim.losses.group_errors`); a sixth panel states what the marks mean. Each panel
    follows :func:`plot_error_vs_n`. To compare gates side by side, pass a table holding both
    (e.g. two studies' tables concatenated; the study shows in the labels when it varies).

    Parameters
    ----------
    table : DataFrame or path
        Results table or directory (see :func:`plot_error_vs_n`).
    gates, fitted_k : optional
        Keep only these gate labels / numbers of experts.
    weighting : {"unweighted", "weighted"}, default "unweighted"
        Group errors as ``|D|`` per atom or ``e^{beta0} |D|`` (as in D1). THEORY.md section 7:
        weighted errors of a cell with tiny weight say little, so unweighted is the default.
    cells : {"auto", "multi", "single"}, default "auto"
        Which Voronoi cells: ``"multi"`` (cells with two or more fitted atoms, where over-fitted
        rates are slow), ``"single"``, or ``"auto"``: multi for over-fitted models (fitted k >
        true k, or where multi-cell errors are not all zero when the true k is unknown), single
        otherwise. The chosen type is part of each series label.
    by, average, band, level, theory, true_k
        As in :func:`plot_error_vs_n`.
    fig : matplotlib Figure, optional
        Figure to draw the 2 x 3 panels on; default a new pyplot figure.

    Returns
    -------
    numpy array of matplotlib Axes, shape (6,)
        The five group panels, then the notes panel.
    """
    if weighting not in ("unweighted", "weighted"):
        raise ValueError(f"weighting must be 'unweighted' or 'weighted'; got {weighting!r}")
    if cells not in ("auto", "multi", "single"):
        raise ValueError(f"cells must be 'auto', 'multi' or 'single'; got {cells!r}")
    _check_options(average, band, level)
    df, ctx = _load(table, true_k)
    return _draw_groups(df, ctx, gates=gates, fitted_k=fitted_k, weighting=weighting, cells=cells, by=by,
                        average=average, band=band, level=level, theory=theory, fig=fig)


def _draw_groups(df: pd.DataFrame, ctx: _Context, *, gates: Any, fitted_k: Any, weighting: str, cells: str,
                 by: str | Sequence[str], average: str, band: str, level: float, theory: bool,
                 fig: Figure | None) -> np.ndarray:
    metrics = [f"{g}_{c}_{weighting}" for g in GROUPS for c in ("single", "multi")]
    selected = _select(df, metrics, gates, fitted_k)
    if selected.empty:
        raise ValueError(f"no finished per-group errors ({weighting}) in the table for gates={gates!r}, fitted_k={fitted_k!r}; "
                         "a study records them with metrics = [..., \"groups\"]")
    chosen = _resolve_cells(selected, cells, weighting, ctx.true_k)
    _loggable(pd.concat([_group_rows(selected, g, chosen, weighting) for g in GROUPS]))  # one warning for all panels
    fig, axes = _panel_grid(fig, len(GROUPS))
    styles = _styles(list(dict.fromkeys(zip(selected["study"], selected["gate"], selected["fitted_k"]))), _as_by(by),
                     width=3)
    for ax, group in zip(axes, GROUPS):
        rows = _group_rows(selected, group, chosen, weighting)
        data = _error_vs_n_frame(rows, ctx, [f"{group}_{c}_{weighting}" for c in ("single", "multi")], by=by,
                                 average=average, band=band, level=level, theory=theory, anchor="centre",
                                 gates=None, fitted_k=None, warn=False)
        data = _relabel_cells(data, chosen, _as_by(by)).assign(panel=group)
        _draw_error_vs_n(ax, data, _as_by(by), f"{weighting} error ({_AVERAGE_TEXT[average]})", "", legend_size=7,
                         styles={k: styles[k[:3]] for k in _series_keys(data)})
        ax.set_title(_GROUP_LABELS[group])
    _notes_panel(axes[len(GROUPS)], _group_notes(weighting, average, band, level, theory and ctx.true_k is not None))
    for ax in axes[len(GROUPS) + 1:]:
        ax.axis("off")
    return axes


def _relabel_cells(data: pd.DataFrame, chosen: dict[tuple, str], by: Sequence[str]) -> pd.DataFrame:
    """Series labels without the long metric name, with the cell type instead."""
    if data.empty:
        return data
    keys = _series_keys(data)
    labels = _series_labels([k[:3] + ("",) for k in keys], [c for c in by if c != "metric"])
    new = {k: f"{labels[k[:3] + ('',)]} ({chosen[k[:3]]})" for k in keys}
    data = data.copy()
    data["series"] = [new[tuple(r)] for r in data[list(SERIES_KEYS)].itertuples(index=False)]
    return data


def _group_notes(weighting: str, average: str, band: str, level: float, theory: bool) -> list[str]:
    lines = [
        "Per-parameter-group errors (exponent 1)",
        f"  {weighting}, summed over atoms and cells",
        "",
        _band_text(band, average).replace("; ", "\n"),
        f"solid: least-squares fit, slope [{level:.0%} t-interval]",
        "dashed: theory's rate where it has one [tag]" if theory else "no theory lines (turned off, or true k unknown)",
        "",
        "(multi): cells with >= 2 fitted atoms",
        "(single): cells with exactly one",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# local slopes
# ---------------------------------------------------------------------------------------------

def _local_frame(df: pd.DataFrame, ctx: _Context, metric: str | Sequence[str], *, by: str | Sequence[str],
                 average: str, gates: Any, fitted_k: Any, warn: bool = True) -> pd.DataFrame:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {tuple(AVERAGES)}; got {average!r}")
    used = _loggable(_select(df, _as_list(metric), gates, fitted_k), warn)
    local = local_rate_table(used, average=average)
    if local.empty:
        return local.assign(series=pd.Series(dtype=object), exponent=pd.Series(dtype=float), tag=pd.Series(dtype=object))
    rows = [tuple(r) for r in local[list(SERIES_KEYS)].itertuples(index=False)]
    keys = list(dict.fromkeys(rows))
    labels = _series_labels(keys, _as_by(by))
    theory = {k: _theory(ctx.families.get(k[1], k[1]), int(k[2]), ctx.true_k, k[3], ctx.expert) for k in keys}
    local.insert(0, "series", [labels[k] for k in rows])
    local["exponent"] = [theory[k].get("theory_exponent", np.nan) for k in rows]
    local["tag"] = [theory[k].get("theory_tag", "") for k in rows]
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
    """Slopes between neighbouring sample sizes, with the theory's exponent per series.

    Parameters are those of :func:`plot_local_slopes`.

    Returns
    -------
    pandas.DataFrame
        Columns ``series, study, gate, fitted_k, metric, n_low, n_high, n_mid`` (geometric mean of
        the two sizes), ``slope`` (``diff(log average) / diff(log n)``), ``exponent`` and ``tag``
        (NaN / "" where theory has none). Series with a single n have no rows.
    """
    df, ctx = _load(table, true_k)
    return _local_frame(df, ctx, metric, by=by, average=average, gates=gates, fitted_k=fitted_k)


def plot_local_slopes(
    table: pd.DataFrame | str | Path,
    metric: str | Sequence[str],
    *,
    by: str | Sequence[str] = "gate",
    average: str = "mean",
    gates: str | Sequence[str] | None = None,
    fitted_k: int | Sequence[int] | None = None,
    true_k: int | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Local slopes between neighbouring n against n (log x), with the theory's exponent dashed.

    A local slope that still drifts at the largest n says the asymptotic regime has not been
    reached, and a single fitted slope over all n mixes regimes.

    Parameters
    ----------
    table, metric, by, average, gates, fitted_k, true_k
        As in :func:`plot_error_vs_n`.
    ax : matplotlib Axes, optional
        Axes to draw on; default a new pyplot figure.

    Returns
    -------
    matplotlib.axes.Axes
        Each local slope is drawn at ``n_mid``, the geometric mean of its two sizes.
    """
    df, ctx = _load(table, true_k)
    data = _local_frame(df, ctx, metric, by=by, average=average, gates=gates, fitted_k=fitted_k)
    ylabel = f"local slope of log {_AVERAGE_TEXT[average]} {_metric_label(_as_list(metric))}"
    return _draw_local_slopes(_new_axes(ax), data, _as_by(by), ylabel)


def _draw_local_slopes(ax: Axes, data: pd.DataFrame, by: Sequence[str], ylabel: str) -> Axes:
    ax.set_xscale("log")
    ax.set_xlabel("sample size n (each slope drawn at the geometric midpoint of its two sizes)")
    ax.set_ylabel(ylabel)
    _DRAWN[ax] = data
    if data.empty:
        ax.text(0.5, 0.5, "no local slopes (needs two or more sizes)", transform=ax.transAxes, ha="center", color="grey")
        return ax
    keys = _series_keys(data)
    styles = _styles(keys, by)
    for key in keys:
        _draw_local_series(ax, _series_rows(data, key), *styles[key])
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.grid(True, alpha=0.3)
    lo, hi = float(data["n_low"].min()), float(data["n_high"].max())
    ax.set_xlim(lo / (hi / lo) ** 0.03, hi * (hi / lo) ** 0.03)  # the sizes the slopes span, 3% margins
    _format_log_x(ax, [lo, hi])
    _legend_below(ax, *ax.get_legend_handles_labels(), 8)
    return ax


def _draw_local_series(ax: Axes, s: pd.DataFrame, colour: str, marker: str) -> None:
    label = str(s["series"].iloc[0])
    ax.plot(s["n_mid"], s["slope"], "-", marker=marker, color=colour, ms=5, lw=1.2, label=label)
    exponent = float(s["exponent"].iloc[0])
    if np.isfinite(exponent):
        ax.axhline(exponent, ls="--", color=colour, lw=1.2, alpha=0.8,
                   label=f"{label} theory: slope {_fraction(exponent)} [{s['tag'].iloc[0]}]")


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------

def plotted_data(obj: Axes | Figure) -> pd.DataFrame:
    """The numbers an axes (or every axes of a figure) was drawn from by this module.

    Returns
    -------
    pandas.DataFrame
        For a figure, the tables of its axes concatenated in order (empty if none was drawn here).
    """
    if isinstance(obj, Axes):
        return _DRAWN.get(obj, pd.DataFrame()).copy()
    frames = [_DRAWN[ax] for ax in obj.axes if ax in _DRAWN]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def save_figure(fig: Figure, path_stem: str | Path, data: pd.DataFrame | None = None, *, dpi: int = _DPI) -> list[Path]:
    """Write ``path_stem.png``, ``path_stem.pdf`` and the plotted numbers as ``path_stem.csv``.

    Parameters
    ----------
    fig : matplotlib Figure
    path_stem : str or Path
        Output path without suffix; parent folders are created.
    data : pandas.DataFrame, optional
        The numbers shown; default :func:`plotted_data(fig) <plotted_data>`.
    dpi : int, default 150
        Resolution of the PNG.

    Returns
    -------
    list of Path
        The PNG, PDF and CSV written.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    data = plotted_data(fig) if data is None else data
    paths = [stem.with_name(stem.name + suffix) for suffix in (".png", ".pdf", ".csv")]
    # constrained layout already makes room for the legends under the axes; a figure without a
    # layout engine (axes the caller made) is cropped to its contents instead
    bbox = None if fig.get_layout_engine() is not None else "tight"
    fig.savefig(paths[0], dpi=dpi, bbox_inches=bbox)
    fig.savefig(paths[1], bbox_inches=bbox)
    data.to_csv(paths[2], index=False)
    return paths


# ---------------------------------------------------------------------------------------------
# a study's standard figures
# ---------------------------------------------------------------------------------------------

def _study_metrics(df: pd.DataFrame) -> tuple[list[str], bool]:
    """Metrics for error-vs-n figures, and whether group errors are present."""
    present = set(df["metric"])
    has_groups = any(m.startswith(g + "_") for m in present for g in GROUPS)
    main = [m for m in MAIN_METRICS if m in present]
    if not main and not has_groups:  # e.g. a network study: every metric that is an error
        main = sorted(present - set(RATE_EXCLUDED_METRICS))
    return main, has_groups


def _new_figure(size: tuple[float, float]) -> Figure:
    return Figure(figsize=size, layout="constrained")


def plot_study(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw a study's standard figures into ``out_dir`` (default ``results_dir/figures``).

    Figures (each as PNG, PDF and CSV): ``error_vs_n_<metric>`` and ``local_slopes_<metric>``
    for D1, D2, hellinger and tv where recorded (every error metric for a network study), and
    ``groups_unweighted`` / ``groups_weighted`` when per-group errors were recorded. Lines per
    gate and fitted k; theory lines from the study's truth.

    Parameters
    ----------
    results_dir : str or Path
        A study results directory (``mixsim run --out DIR``).
    out_dir : str or Path, optional

    Returns
    -------
    list of Path
        The files written (empty, with a :class:`PlotWarning`, when no row can be plotted).
    """
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir / "figures"
    df, ctx = _load(results_dir, None)
    main, has_groups = _study_metrics(df[~df["status"].isin(FAILED_STATUSES)])
    if not main and not has_groups:
        warnings.warn(f"{results_dir}: no finished fits to plot", PlotWarning, stacklevel=2)
        return []
    by = ("gate", "fitted_k")
    written: list[Path] = []
    for metric in main:
        fig = _new_figure((7.5, 5.5))
        data = _error_vs_n_frame(df, ctx, metric, by=by, average="mean", band="se", level=0.95, theory=True,
                                 anchor="centre", gates=None, fitted_k=None)
        _draw_error_vs_n(fig.subplots(), data, by, f"{_metric_label([metric])} (mean)", _band_text("se", "mean"))
        written += save_figure(fig, out / f"error_vs_n_{metric}")
        fig = _new_figure((7.5, 5.5))
        data = _local_frame(df, ctx, metric, by=by, average="mean", gates=None, fitted_k=None, warn=False)  # warned above
        _draw_local_slopes(fig.subplots(), data, by, f"local slope of log mean {_metric_label([metric])}")
        written += save_figure(fig, out / f"local_slopes_{metric}")
    for weighting in ("unweighted", "weighted") if has_groups else ():
        fig = _new_figure((15.0, 11.0))
        _draw_groups(df, ctx, gates=None, fitted_k=None, weighting=weighting, cells="auto", by=by, average="mean",
                     band="se", level=0.95, theory=True, fig=fig)
        fig.suptitle(f"{', '.join(sorted(set(df['study'])))}: per-group errors ({weighting})")
        written += save_figure(fig, out / f"groups_{weighting}")
    return written
