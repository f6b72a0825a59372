"""Drawing an error-vs-n or local-slope figure from its table (:mod:`mixsim.plots.data`).

``draw_*(data, ax=None, ...)`` draws a figure table on one axes and returns the axes;
``plot_*(table, metric, ...)`` builds the table from a results table or directory and draws it.
The table drawn stays with the axes it was drawn on (no module state):
:func:`plotted_data` reads it back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .data import error_vs_n_frame, load, local_frame
from .style import (AVERAGE_TEXT, SERIES_KEYS, Style, as_by, as_list, band_text, canonical_average, fit_text, metric_label,
                    series_styles, sorted_keys, theory_colour, theory_label)
from .ticks import format_log_x, format_log_y, legend_below

# The name of the attribute by which an axes carries the table it was drawn from.
_DATA_ATTRIBUTE = "_mixsim_plotted"


def remember(ax: Axes, data: pd.DataFrame) -> None:
    """Attach the table ``ax`` was drawn from to ``ax`` itself, for :func:`plotted_data`."""
    setattr(ax, _DATA_ATTRIBUTE, data)


def plotted_data(obj: Axes | Figure) -> pd.DataFrame:
    """The numbers an axes (or every axes of a figure) was drawn from by :mod:`mixsim.plots`.

    Returns
    -------
    pandas.DataFrame
        For a figure, the tables of its axes concatenated in order (empty if none was drawn here).
    """
    if isinstance(obj, Axes):
        return getattr(obj, _DATA_ATTRIBUTE, pd.DataFrame()).copy()
    frames = [getattr(ax, _DATA_ATTRIBUTE, None) for ax in obj.axes]
    frames = [f for f in frames if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (7.0, 5.0)) -> Axes:
    """``ax``, or the axes of a new pyplot figure with constrained layout."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def series_keys(data: pd.DataFrame) -> list[tuple]:
    """Distinct (study, gate, fitted_k, metric) of a figure table, in order of appearance."""
    return list(dict.fromkeys(tuple(r) for r in data[list(SERIES_KEYS)].itertuples(index=False)))


def series_rows(data: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of one series of a figure table."""
    return data[(data[list(SERIES_KEYS)] == pd.Series(key, index=list(SERIES_KEYS))).all(axis=1)]


# ---------------------------------------------------------------------------------------------
# error vs n
# ---------------------------------------------------------------------------------------------

def _draw_series(ax: Axes, s: pd.DataFrame, style: Style) -> tuple[Any, str]:
    """Points with bars and the fitted line of one series; returns its (handle, label) for a legend.

    The points also carry the label, so that a legend the caller makes later still names them."""
    colour, marker, filled = style
    label = str(s["series"].iloc[0])
    pts, fit = (s[s["kind"] == kind] for kind in ("point", "fit"))
    n, y = pts["n"].to_numpy(dtype=float), pts["value"].to_numpy(dtype=float)
    low, high = pts["low"].to_numpy(dtype=float), pts["high"].to_numpy(dtype=float)
    has_band = np.isfinite(low) & np.isfinite(high)
    # a lower bar end at or below 0 cannot be drawn on a log axis: show it reaching far down
    yerr = np.vstack([np.where(has_band, y - np.where(low > 0, low, y * 1e-3), 0), np.where(has_band, high - y, 0)])
    points = ax.errorbar(n, y, yerr=yerr, fmt=marker, color=colour, mfc=colour if filled else "white", ms=5,
                         capsize=2, elinewidth=1, lw=0, zorder=3)
    text = f"{label}: {fit_text(fit)}" if len(fit) else f"{label}: one n, no slope"
    points.set_label(text)
    if not len(fit):
        return points.lines[0], text
    (line,) = ax.plot(fit["n"], fit["value"], "-", color=colour, lw=1.5, zorder=2)
    return (points.lines[0], line), text


def _draw_theory(ax: Axes, data: pd.DataFrame, styles: Mapping[tuple, Style]) -> list[tuple[Any, str]]:
    """One dashed line per distinct exponent (series sharing one were given the same ends)."""
    rows_of_theory = data[data["kind"] == "theory"]
    out = []
    for _, rows in rows_of_theory.groupby(rows_of_theory["exponent"].astype(float).round(12), sort=True):
        keys = series_keys(rows)
        line_rows = series_rows(rows, keys[0])
        label = theory_label(float(rows["exponent"].iloc[0]), rows["tag"])
        (line,) = ax.plot(line_rows["n"], line_rows["value"], "--", color=theory_colour(keys, styles), lw=1.2,
                          alpha=0.8, zorder=1, label=label)
        out.append((line, label))
    return out


def draw_error_vs_n_axes(ax: Axes, data: pd.DataFrame, ylabel: str, styles: Mapping[tuple, Style]) -> tuple[list, list]:
    """Log-log axes with the series (in the table's order) and the theory lines, no legend;
    returns the legend entries (handle, label) of the series and of the theory lines."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size n")
    ax.set_ylabel(ylabel)
    remember(ax, data)
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        return [], []
    series = [_draw_series(ax, series_rows(data, key), styles[key]) for key in series_keys(data)]
    theory = _draw_theory(ax, data, styles)
    format_log_x(ax, data.loc[data["kind"] == "point", "n"])
    format_log_y(ax)
    ax.grid(True, which="major", alpha=0.3)
    return series, theory


def draw_error_vs_n(
    data: pd.DataFrame,
    ax: Axes | None = None,
    *,
    by: str | Sequence[str] = "gate",
    average: str = "mean",
    band: str = "se",
    families: Mapping[str, str] | None = None,
    ylabel: str | None = None,
    legend_size: float = 8,
) -> Axes:
    """Draw a table of :func:`mixsim.plots.error_vs_n_data` on log-log axes, with a legend below.

    Parameters
    ----------
    data : pandas.DataFrame
        The figure table (columns :data:`mixsim.plots.DATA_COLUMNS`).
    ax : matplotlib Axes, optional
        Axes to draw on; default a new pyplot figure.
    by, average, band
        As the table was built with: they set colours, the y label and the legend's title.
    families : mapping, optional
        Gate family of each gate label (for the fixed colours); default the labels themselves.
    ylabel : str, optional
        Default: the metric (or "error" where several are drawn) and the average.
    legend_size : float, default 8

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    if ylabel is None:
        ylabel = f"{metric_label(sorted(set(data['metric'])) or ['error'])} ({AVERAGE_TEXT[canonical_average(average)]})"
    styles = series_styles(series_keys(data), as_by(by), families)
    series, theory = draw_error_vs_n_axes(ax, data, ylabel, styles)
    if series:
        handles, labels = zip(*series, *theory)
        legend_below(ax, handles, labels, legend_size, band_text(band, average))
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
    points at the average over replicates with a band, the least-squares line of the series' row
    of :func:`mixsim.study.rate_table` labelled ``"softmax k=3: slope -0.52 [-0.60, -0.44]"``
    (its bootstrap interval at ``level``), and where :func:`mixsim.rates.theory_rate` has a prediction a
    dashed line ``C n^exponent``, one per distinct exponent, labelled ``"theory n^-1/2 [A/B, B]"``
    (the exponent and the confidence tags of the series it stands for; in the colour of those
    series when they share one, grey otherwise). The same as
    ``draw_error_vs_n(error_vs_n_data(table, metric, ...), ax, ...)``.

    Parameters
    ----------
    table : DataFrame or path
        A results table (:func:`mixsim.load_results`) or a results directory / file. A directory
        also supplies the true k and each gate label's family, for the theory lines.
    metric : str or sequence of str
        Metric name(s) of the ``metric`` column, e.g. ``"D1"`` or ``"variance_multi_unweighted"``.
    by : str or sequence of str, default "gate"
        Columns among ``study, gate, fitted_k, metric`` that tell series apart. With ``"gate"``
        among them each gate family has its fixed colour (softmax blue, competition orange,
        sigmoid green); otherwise each value of these columns gets a colour. The fitted k sets the
        marker. Labels read gate, k, then the metric (where it varies or is in ``by``) and the
        study (where it is in ``by``, or labels would otherwise coincide).
    average : {"mean", "median", "log"}, default "mean"
        Summary of the replicates at one n (the spec's names; ``"log"``, the geometric mean, may
        also be spelled ``"logmean"``); also what the slope is fitted to.
    band : {"se", "quartiles", "none"}, default "se"
        Bars around each point (:data:`mixsim.plots.BANDS`); their meaning is the legend's title.
        ``"se"`` needs ``average`` "mean" or "log".
    level : float, default 0.95
        Confidence level of the slope's bootstrap interval (:func:`mixsim.rates.estimate_rate`).
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
    df, ctx = load(table, true_k)
    data = error_vs_n_frame(df, ctx, metric, by=by, average=average, band=band, level=level, theory=theory,
                            anchor=anchor, gates=gates, fitted_k=fitted_k)
    ylabel = f"{metric_label(as_list(metric))} ({AVERAGE_TEXT[average]})"
    return draw_error_vs_n(data, ax, by=by, average=average, band=band, families=ctx.families, ylabel=ylabel)


# ---------------------------------------------------------------------------------------------
# local slopes
# ---------------------------------------------------------------------------------------------

#: What a local slope is, as the legend's title.
_LOCAL_TITLE = "each point: slope between neighbouring sizes, at their geometric midpoint"


def draw_local_slopes(
    data: pd.DataFrame,
    ax: Axes | None = None,
    *,
    by: str | Sequence[str] = "gate",
    average: str = "mean",
    families: Mapping[str, str] | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Draw a table of :func:`mixsim.plots.local_slopes_data`: local slopes against n (log x),
    with the theory's exponents dashed; ``ylabel`` defaults to one naming the average and metric."""
    ax = new_axes(ax)
    if ylabel is None:
        ylabel = f"local slope of log {AVERAGE_TEXT[canonical_average(average)]} {metric_label(sorted(set(data['metric'])) or ['error'])}"
    ax.set_xscale("log")
    ax.set_xlabel("sample size n (midpoint of neighbouring sizes)")
    ax.set_ylabel(ylabel)
    remember(ax, data)
    if data.empty:
        ax.text(0.5, 0.5, "no local slopes (needs two or more sizes)", transform=ax.transAxes, ha="center", color="grey")
        return ax
    keys = sorted_keys(series_keys(data), families)
    styles = series_styles(keys, as_by(by), families)
    for key in keys:
        s = series_rows(data, key)
        colour, marker, filled = styles[key]
        ax.plot(s["n_mid"], s["slope"], "-", marker=marker, color=colour, mfc=colour if filled else "white", ms=5,
                lw=1.2, label=str(s["series"].iloc[0]))
    with_theory = data[np.isfinite(data["exponent"].astype(float))]
    for _, rows in with_theory.groupby(with_theory["exponent"].astype(float).round(12), sort=True):
        ax.axhline(float(rows["exponent"].iloc[0]), ls="--", color=theory_colour(series_keys(rows), styles), lw=1.2,
                   alpha=0.8, label=theory_label(float(rows["exponent"].iloc[0]), rows["tag"]))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.grid(True, alpha=0.3)
    format_log_x(ax, np.concatenate([data["n_low"].to_numpy(float), data["n_high"].to_numpy(float)]), margin=0.03)
    legend_below(ax, *ax.get_legend_handles_labels(), 8, _LOCAL_TITLE)
    return ax


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
    reached, and a single fitted slope over all n mixes regimes. The same as
    ``draw_local_slopes(local_slopes_data(table, metric, ...), ax, ...)``.

    Parameters
    ----------
    table, metric, by, average, gates, fitted_k, true_k
        As in :func:`plot_error_vs_n`.
    ax : matplotlib Axes, optional
        Axes to draw on; default a new pyplot figure.

    Returns
    -------
    matplotlib.axes.Axes
        Each local slope is drawn at ``n_mid``, the geometric mean of its two sizes (ticks mark
        the sizes themselves when there are at most 8); one dashed line per distinct theory
        exponent, as in :func:`plot_error_vs_n`.
    """
    df, ctx = load(table, true_k)
    data = local_frame(df, ctx, metric, by=by, average=average, gates=gates, fitted_k=fitted_k)
    ylabel = f"local slope of log {AVERAGE_TEXT[average]} {metric_label(as_list(metric))}"
    return draw_local_slopes(data, ax, by=by, average=average, families=ctx.families, ylabel=ylabel)
