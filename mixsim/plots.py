"""Figures of a convergence study: error against n on log-log axes, per-group panels, local slopes.

Every figure is drawn from a tidy table of the numbers it shows (one row per point, fitted-line
end or theory-line end), so what is saved as CSV beside a figure is exactly what was drawn:

* :func:`error_vs_n_data` / :func:`plot_error_vs_n` - the average error at each n with a band
  (Monte Carlo standard error or replicate quartiles), the least-squares line of
  :func:`mixsim.rates.fit_rate` with its slope and interval in the legend, and dashed reference
  slopes from :func:`mixsim.rates.theory_rate`;
* :func:`plot_groups` - one panel per parameter group (weights, gate slopes, expert slopes,
  expert intercepts, variances), so gates can be compared group by group: one legend for the
  figure, each panel's fitted slopes in a box in its upper corner;
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

Series look the same in every figure: a gate family has a fixed colour (softmax blue,
competition orange, sigmoid green, other families from the rest of the cycle), the fitted k a
fixed marker (k=2 circle, k=3 square, k=4 triangle, ...); labels read ``"softmax k=3"``, with the
metric when it varies and the study only where labels would otherwise coincide. Where several
series share the theory's exponent, one dashed reference line is drawn for that exponent.
Axes: sample sizes are labelled as plain integers (ticks on the sizes themselves when there are
at most 8 of them); a y range shorter than two powers of ten gets plain ``%g`` labels.

Functions that draw on one axes take ``ax=None`` (a new pyplot figure) and return the axes.
:func:`plot_study` draws on :class:`matplotlib.figure.Figure` objects without pyplot, so it
runs headless and leaves no open figures behind.
"""
from __future__ import annotations

import warnings
import weakref
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.ticker import (FixedLocator, FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter,
                               NullLocator)
from matplotlib.transforms import ScaledTranslation

from .losses import GROUPS, WEIGHTINGS
from .rates import AVERAGES, fit_rate
from .study import FAILED_STATUSES, RATE_EXCLUDED_METRICS, local_rate_table, as_table as _as_table, rate_context as _context, RateContext as _Context, theory as _theory

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
#: Plain names, for "competition k=3: no gate slopes".
_GROUP_NAMES = {
    "weight": "weights",
    "gate_slope": "gate slopes",
    "expert_slope": "expert slopes",
    "expert_intercept": "expert intercepts",
    "variance": "variances",
}
_AVERAGE_TEXT = {"mean": "mean", "median": "median", "logmean": "geometric mean"}
#: Fixed colour per gate family, so a gate looks the same in every figure; other families take
#: the spare colours (a stable choice per name, moved on where two would coincide).
_GATE_COLOURS = {"softmax": "tab:blue", "competition": "tab:orange", "sigmoid": "tab:green"}
_GATE_ORDER = tuple(_GATE_COLOURS)
_SPARE_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_COLORS = (*_GATE_COLOURS.values(), *_SPARE_COLOURS)
#: Marker of fitted k = 2, 3, 4, ... (k = 1 takes the last).
_MARKERS = ("o", "s", "^", "D", "v", "P")
#: A theory line shared by series of different colours.
_THEORY_COLOUR = "0.35"
_TAG_LINES = [
    "theory tags: [A] primary source,",
    "  [B] secondary sources, [C] reconstruction;",
    "  [A/B], [A/C]: both (e.g. a primary-source",
    "  claim in a reconstructed form)",
]
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
    return str(value)


def _series_labels(keys: list[tuple], by: Sequence[str]) -> dict[tuple, str]:
    """Label per series, always in the order gate, k, metric, study: ``"softmax k=3"``; the metric
    when it varies (or is in ``by``); the study when it is in ``by``, or else only on labels that
    would otherwise coincide (``"softmax k=3, softmax_overfit_auto"``)."""
    index = {c: i for i, c in enumerate(SERIES_KEYS)}
    shown = ["gate", "fitted_k"]
    if "metric" in by or len({k[index["metric"]] for k in keys}) > 1:
        shown.append("metric")
    labels = {k: " ".join(_format_key(c, k[index[c]]) for c in shown if str(k[index[c]]) != "") for k in keys}
    counts = pd.Series(list(labels.values()), dtype=object).value_counts()
    return {k: f"{text}, {k[index['study']]}" if "study" in by or counts[text] > 1 else text
            for k, text in labels.items()}


def _as_by(by: str | Sequence[str]) -> list[str]:
    out = [by] if isinstance(by, str) else list(by)
    bad = [c for c in out if c not in SERIES_KEYS]
    if bad or not out:
        raise ValueError(f"by must name one or more of {SERIES_KEYS}; got {by!r}")
    return out


def _family(gate: Any, families: Mapping[str, str] | None) -> str:
    return str((families or {}).get(gate, gate))


def _order_key(key: tuple, families: Mapping[str, str] | None = None) -> tuple:
    """Series order: softmax, competition, sigmoid, other families; then gate label, k, metric, study."""
    family = _family(key[1], families)
    rank = _GATE_ORDER.index(family) if family in _GATE_ORDER else len(_GATE_ORDER)
    return (rank, family, str(key[1]), int(key[2]), *(str(v) for v in key[3:]), str(key[0]))


def _sorted_keys(keys: Sequence[tuple], families: Mapping[str, str] | None = None) -> list[tuple]:
    return sorted(dict.fromkeys(keys), key=lambda k: _order_key(k, families))


def _gate_colour(gate: Any, families: Mapping[str, str] | None, spare: dict[str, str]) -> str:
    family = _family(gate, families)
    if family in _GATE_COLOURS:
        return _GATE_COLOURS[family]
    if family not in spare:
        start = zlib.crc32(family.encode()) % len(_SPARE_COLOURS)
        ring = _SPARE_COLOURS[start:] + _SPARE_COLOURS[:start]
        free = [c for c in ring if c not in spare.values()]
        spare[family] = free[0] if free else ring[0]
    return spare[family]


def _styles(keys: list[tuple], by: Sequence[str], families: Mapping[str, str] | None = None
            ) -> dict[tuple, tuple[str, str, bool]]:
    """(colour, marker, filled) per series key (``(study, gate, fitted_k[, metric])``).

    With ``"gate"`` in ``by`` the colour is the gate family's fixed colour; otherwise one colour per
    value of the ``by`` columns. The marker is fixed by the fitted k; series that would still look
    alike (same colour and k) get an open marker, then the next marker."""
    columns = [SERIES_KEYS.index(c) for c in by]
    colour_of: dict[Any, str] = {}
    taken: set[tuple[str, str, bool]] = set()
    out = {}
    for key in _sorted_keys(keys, families):
        if "gate" in by:
            colour = _gate_colour(key[1], families, colour_of)
        else:
            group = tuple(key[i] for i in columns if i < len(key))
            colour = colour_of.setdefault(group, _COLORS[len(colour_of) % len(_COLORS)])
        first = (int(key[2]) - 2) % len(_MARKERS)
        for i in range(2 * len(_MARKERS)):
            style = (colour, _MARKERS[(first + i // 2) % len(_MARKERS)], i % 2 == 0)
            if style not in taken:
                break
        taken.add(style)
        out[key] = style
    return out


def _proxy(style: tuple[str, str, bool], **line: Any) -> Line2D:
    """A legend handle: the series' marker on its line."""
    colour, marker, filled = style
    return Line2D([], [], color=colour, marker=marker, ms=5, mfc=colour if filled else "white", **line)


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
    groups = dict(list(used.groupby(list(SERIES_KEYS), sort=True)))
    for key in _sorted_keys(list(groups), ctx.families):
        group = groups[key]
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


def _share_theory(data: pd.DataFrame) -> pd.DataFrame:
    """One reference line per exponent: series that share an exponent get the same line, over the
    union of their sizes, through the geometric mean of their own lines (``log C`` averaged);
    a series alone with its exponent keeps its own line."""
    theory = data[data["kind"] == "theory"]
    if theory.empty:
        return data
    data = data.copy()
    for _, rows in theory.groupby(theory["exponent"].astype(float).round(12)):
        exponent = float(rows["exponent"].iloc[0])
        n, y = rows["n"].to_numpy(dtype=float), rows["value"].to_numpy(dtype=float)
        log_c = float(np.mean(np.log(y) - exponent * np.log(n)))  # two rows per series: a mean over series
        ends = np.array([n.min(), n.max()])
        values = np.exp(log_c + exponent * np.log(ends))
        for _, pair in rows.groupby(list(SERIES_KEYS), sort=False):
            data.loc[pair.index, "n"] = ends.astype(int)
            data.loc[pair.index, "value"] = values
    return data


def _empty_data() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in DATA_COLUMNS})


def _finish_data(frames: list[pd.DataFrame], selected: pd.DataFrame, used: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Concatenate series, add labels and dropped counts, order the columns."""
    if not frames:
        return _empty_data()
    data = _share_theory(pd.concat(frames, ignore_index=True))
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
        reference line drawn for the series' exponent; ``exponent``, ``tag`` the series' own;
        absent with a single n or where theory has none). Series that share an exponent share
        one line: over the union of their sizes, through the geometric mean of their anchors.
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


def _draw_series(ax: Axes, s: pd.DataFrame, style: tuple[str, str, bool]) -> tuple[Any, str]:
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
    text = f"{label}: {_fit_text(fit)}" if len(fit) else f"{label}: one n, no slope"
    points.set_label(text)
    if not len(fit):
        return points.lines[0], text
    (line,) = ax.plot(fit["n"], fit["value"], "-", color=colour, lw=1.5, zorder=2)
    return (points.lines[0], line), text


def _theory_label(exponent: float, tags: Any) -> str:
    return f"theory {_exponent_text(exponent)} [{', '.join(sorted(set(map(str, tags))))}]"


def _theory_colour(keys: Sequence[tuple], styles: Mapping[tuple, tuple[str, str, bool]]) -> str:
    """The series' colour when all series of a theory line share it, grey otherwise."""
    colours = {styles[k][0] for k in keys}
    return colours.pop() if len(colours) == 1 else _THEORY_COLOUR


def _draw_theory(ax: Axes, data: pd.DataFrame, styles: Mapping[tuple, tuple[str, str, bool]]) -> list[tuple[Any, str]]:
    """One dashed line per distinct exponent (:func:`_share_theory` gave its series the same ends)."""
    theory = data[data["kind"] == "theory"]
    out = []
    for _, rows in theory.groupby(theory["exponent"].astype(float).round(12), sort=True):
        keys = _series_keys(rows)
        line_rows = _series_rows(rows, keys[0])
        label = _theory_label(float(rows["exponent"].iloc[0]), rows["tag"])
        (line,) = ax.plot(line_rows["n"], line_rows["value"], "--", color=_theory_colour(keys, styles), lw=1.2,
                          alpha=0.8, zorder=1, label=label)
        out.append((line, label))
    return out


# ---------------------------------------------------------------------------------------------
# axes: ticks and labels
# ---------------------------------------------------------------------------------------------

def _powers_of_ten(lo: float, hi: float) -> int:
    """How many powers of ten lie in [lo, hi]."""
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        return 0
    return max(0, int(np.floor(np.log10(hi) + 1e-9) - np.ceil(np.log10(lo) - 1e-9)) + 1)


class _NiceLogLocator(Locator):
    """Log-axis ticks that always give two or more labelled ticks: powers of ten where two or more
    fall in view (and the view is wider than ``dense_below`` decades), else 1-2-5 (then 1-2-3-5,
    then every digit and 1.5, 2.5) times powers of ten, whichever first gives three ticks, else
    evenly spaced values."""

    _SUBS = ((1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))

    def __init__(self, dense_below: float = 0.0):
        self.dense_below = dense_below

    def __call__(self) -> np.ndarray:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        vmin, vmax = sorted((float(vmin), float(vmax)))
        if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin > 0):
            return LogLocator(base=10.0, numticks=12).tick_values(max(vmin, 1e-300), max(vmax, 1e-299))

        def inside(ticks: np.ndarray) -> np.ndarray:
            ticks = np.asarray(ticks, dtype=float)
            return ticks[(ticks >= vmin * (1 - 1e-9)) & (ticks <= vmax * (1 + 1e-9)) & (ticks > 0)]

        if _powers_of_ten(vmin, vmax) >= 2 and np.log10(vmax / vmin) > self.dense_below:
            return inside(LogLocator(base=10.0, subs=(1.0,), numticks=12).tick_values(vmin, vmax))
        for subs in self._SUBS:
            ticks = inside(LogLocator(base=10.0, subs=subs, numticks=40).tick_values(vmin, vmax))
            if len(ticks) >= 3:
                return ticks
        return inside(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax))


def _count_label(value: float, pos: Any = None) -> str:
    """Sample sizes as plain integers: ``1,000``, ``17,019``, ``100,000``."""
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _log_y_formatter(axis: Any) -> FuncFormatter:
    """Powers of ten (``10^-2``) where two or more are in view, else plain ``%g`` labels."""
    def label(value: float, pos: Any = None) -> str:
        if _powers_of_ten(*sorted(axis.get_view_interval())) >= 2 and value > 0:
            exponent = np.log10(value)
            if abs(exponent - round(exponent)) < 1e-9:
                return rf"$\mathdefault{{10^{{{int(round(exponent))}}}}}$"
        return f"{value:g}"
    return FuncFormatter(label)


def _format_log_y(ax: Axes) -> None:
    """Log y ticks that read well on short ranges: plain labels, never one alone, no minor labels."""
    ax.yaxis.set_major_locator(_NiceLogLocator())
    ax.yaxis.set_major_formatter(_log_y_formatter(ax.yaxis))
    ax.yaxis.set_minor_formatter(NullFormatter())


#: Rotation of the x tick labels, per axes, for the legend placed under them.
_X_ROTATION: "weakref.WeakKeyDictionary[Axes, float]" = weakref.WeakKeyDictionary()


def _tick_font_points(which: str = "xtick.labelsize") -> float:
    return float(FontProperties(size=rcParams[which]).get_size_in_points())


def _visible_x_ticks(ax: Axes) -> tuple[np.ndarray, list[str]]:
    lo, hi = sorted(ax.get_xlim())
    ticks = np.asarray(ax.xaxis.get_major_locator().tick_values(lo, hi), dtype=float)
    ticks = np.sort(ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))])
    return ticks, [_count_label(t) for t in ticks]


def _label_width(text: str, font: float) -> float:
    """Width in points of a sample-size label (digits 0.64 em, separators 0.32 em)."""
    return font * sum(0.32 if c in ",." else 0.64 for c in text)


def _rotate_if_crowded(ax: Axes) -> None:
    """Rotate the sample-size labels when neighbours would come closer than 0.6 em (judged from
    the axes' width before layout, less a margin for what the layout takes away)."""
    ticks, labels = _visible_x_ticks(ax)
    angle = 0.0
    if len(ticks) > 1:
        lo, hi = sorted(ax.get_xlim())
        width = ax.get_position().width * ax.figure.get_figwidth() * 72 * 0.9
        gaps = np.diff(np.log(ticks)) / np.log(hi / lo) * width
        font = _tick_font_points()
        widths = np.array([_label_width(t, font) for t in labels])
        if np.any(gaps < (widths[:-1] + widths[1:]) / 2 + 0.6 * font):
            angle = 35.0
    if angle:
        ax.tick_params(axis="x", which="major", labelrotation=angle)
        for text in ax.get_xticklabels(which="major"):
            text.set_horizontalalignment("right")
    _X_ROTATION[ax] = angle


def _format_log_x(ax: Axes, n: Any, margin: float = 0.05) -> None:
    """Sample-size axis: limits ``margin`` (a fraction of the log range) beyond the sizes; with 8
    sizes or fewer a labelled tick on each size (a single size also gets round neighbours), else
    1-2-5 or power-of-ten ticks; labels as plain integers; no minor labels."""
    sizes = np.unique(np.asarray(n, dtype=float))
    sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
    if not sizes.size:
        return
    lo, hi = sizes[0], sizes[-1]
    stretch = 3.0 if hi == lo else (hi / lo) ** margin  # a single size: matplotlib would leave a zero-width axis
    ax.set_xlim(lo / stretch, hi * stretch)
    if sizes.size <= 8:
        ticks = sizes
        if sizes.size == 1:
            nice = _NiceLogLocator(dense_below=2.5).tick_values(lo / stretch, hi * stretch)
            ticks = np.sort(np.concatenate([sizes, nice[np.abs(np.log10(nice / lo)) > 0.15]]))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(_NiceLogLocator(dense_below=2.5))
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _rotate_if_crowded(ax)


def _series_keys(data: pd.DataFrame) -> list[tuple]:
    """Distinct (study, gate, fitted_k, metric) of a plotted table, in order of appearance."""
    return list(dict.fromkeys(tuple(r) for r in data[list(SERIES_KEYS)].itertuples(index=False)))


def _series_rows(data: pd.DataFrame, key: tuple) -> pd.DataFrame:
    return data[(data[list(SERIES_KEYS)] == pd.Series(key, index=list(SERIES_KEYS))).all(axis=1)]


def _below_x_labels(ax: Axes) -> float:
    """Points from the bottom of the axes to below its x tick labels and x label (an estimate from
    the font sizes and the labels' rotation, with a margin)."""
    font = _tick_font_points()
    angle = np.radians(_X_ROTATION.get(ax, 0.0))
    labels = _visible_x_ticks(ax)[1] if ax.get_xscale() == "log" else ["000000"]
    longest = max((_label_width(t, font) for t in labels), default=font)
    ticks = longest * np.sin(angle) + 1.2 * font * np.cos(angle)
    label = _tick_font_points("axes.labelsize") * 1.2 if ax.get_xlabel() else 0.0
    return float(rcParams["xtick.major.size"] + rcParams["xtick.major.pad"] + ticks + rcParams["axes.labelpad"]
                 + label + 4.0)


def _legend_below(ax: Axes, handles: Sequence[Any], labels: Sequence[str], size: float, title: str = "") -> None:
    """A legend under the axes' x label, so that it hides no point and no label (constrained
    layout makes room)."""
    below = ax.transAxes + ScaledTranslation(0, -_below_x_labels(ax) / 72, ax.figure.dpi_scale_trans)
    ax.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=None)}, fontsize=size, title=title or None,
              title_fontsize=size, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
              frameon=False)


def _draw_error_vs_n_axes(ax: Axes, data: pd.DataFrame, ylabel: str,
                          styles: Mapping[tuple, tuple[str, str, bool]]) -> tuple[list, list]:
    """Log-log axes with the series (in the table's order) and the theory lines, no legend;
    returns the legend entries (handle, label) of the series and of the theory lines."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size n")
    ax.set_ylabel(ylabel)
    _DRAWN[ax] = data
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        return [], []
    series = [_draw_series(ax, _series_rows(data, key), styles[key]) for key in _series_keys(data)]
    theory = _draw_theory(ax, data, styles)
    _format_log_x(ax, data.loc[data["kind"] == "point", "n"])
    _format_log_y(ax)
    ax.grid(True, which="major", alpha=0.3)
    return series, theory


def _draw_error_vs_n(ax: Axes, data: pd.DataFrame, by: Sequence[str], ylabel: str, legend_title: str,
                     legend_size: float = 8, styles: Mapping[tuple, tuple[str, str, bool]] | None = None,
                     families: Mapping[str, str] | None = None) -> Axes:
    """Draw an error-vs-n table on ``ax`` (log-log) with a legend below, and remember it for
    :func:`plotted_data`. ``styles`` maps series keys to (colour, marker, filled)."""
    styles = styles if styles is not None else _styles(_series_keys(data), by, families)
    series, theory = _draw_error_vs_n_axes(ax, data, ylabel, styles)
    if series:
        handles, labels = zip(*series, *theory)
        _legend_below(ax, handles, labels, legend_size, legend_title)
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
    dashed line ``C n^exponent``, one per distinct exponent, labelled ``"theory n^-1/2 [A/B, B]"``
    (the exponent and the confidence tags of the series it stands for; in the colour of those
    series when they share one, grey otherwise).

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
    return _draw_error_vs_n(_new_axes(ax), data, _as_by(by), ylabel, _band_text(band, average), families=ctx.families)


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
    elif fig.get_layout_engine() is None:  # the figure legend sits outside the panels: the layout makes room
        fig.set_layout_engine("constrained")
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
    :func:`mixsim.losses.group_errors`); a sixth panel states what the marks and the theory
    tags mean. Each panel is drawn as :func:`plot_error_vs_n` draws, except for the legend: the
    series (the same in every panel, in the same colours) share one legend under the figure,
    and a box in each panel's upper corner (room is made for it above the data) gives every
    series' fitted slope with its interval and the theory's exponent with its tag, or says
    that a series has no errors of that group (``"competition k=3: no gate slopes"``). To
    compare gates side by side, pass a table holding both (e.g. two studies' tables
    concatenated; the study shows in the labels only where gate and k do not tell them apart).

    Parameters
    ----------
    table : DataFrame or path
        Results table or directory (see :func:`plot_error_vs_n`).
    gates, fitted_k : optional
        Keep only these gate labels / numbers of experts.
    weighting : {"unweighted", "weighted", "share", "centre"}, default "unweighted"
        Which group errors (:func:`mixsim.group_errors`): ``|D|`` per atom, ``e^{beta0} |D|`` (as
        in D1), ``|D|`` weighted by each atom's share of its cell's mass, or the error of the
        cell's mass-weighted mean. When over-fitted, ``share`` or ``centre`` (``unweighted`` is
        dominated by atoms of vanishing mass, THEORY.md section 8).
    cells : {"auto", "multi", "single"}, default "auto"
        Which Voronoi cells: ``"multi"`` (cells with two or more fitted atoms, where over-fitted
        rates are slow), ``"single"``, or ``"auto"``: multi for over-fitted models (fitted k >
        true k, or where multi-cell errors are not all zero when the true k is unknown), single
        otherwise. The chosen type is part of each series label.
    by, average, band, level, theory, true_k
        As in :func:`plot_error_vs_n`.
    fig : matplotlib Figure, optional
        Figure to draw the 2 x 3 panels and the figure legend on; default a new pyplot figure.
        One without a layout engine is given constrained layout (which places the legend).

    Returns
    -------
    numpy array of matplotlib Axes, shape (6,)
        The five group panels, then the notes panel.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    if cells not in ("auto", "multi", "single"):
        raise ValueError(f"cells must be 'auto', 'multi' or 'single'; got {cells!r}")
    _check_options(average, band, level)
    df, ctx = _load(table, true_k)
    return _draw_groups(df, ctx, gates=gates, fitted_k=fitted_k, weighting=weighting, cells=cells, by=by,
                        average=average, band=band, level=level, theory=theory, fig=fig)


def _draw_groups(df: pd.DataFrame, ctx: _Context, *, gates: Any, fitted_k: Any, weighting: str, cells: str,
                 by: str | Sequence[str], average: str, band: str, level: float, theory: bool,
                 fig: Figure | None) -> np.ndarray:
    by = _as_by(by)
    metrics = [f"{g}_{c}_{weighting}" for g in GROUPS for c in ("single", "multi")]
    selected = _select(df, metrics, gates, fitted_k)
    if selected.empty:
        raise ValueError(f"no finished per-group errors ({weighting}) in the table for gates={gates!r}, fitted_k={fitted_k!r}; "
                         "a study records them with metrics = [..., \"groups\"]")
    chosen = _resolve_cells(selected, cells, weighting, ctx.true_k)
    _loggable(pd.concat([_group_rows(selected, g, chosen, weighting) for g in GROUPS]))  # one warning for all panels
    fig, axes = _panel_grid(fig, len(GROUPS))
    # series are (study, gate, k): one style and one label for all panels
    keys = _sorted_keys([(s, g, int(k)) for s, g, k in zip(selected["study"], selected["gate"], selected["fitted_k"])],
                        ctx.families)
    styles = _styles(keys, by, ctx.families)
    names = _series_labels([k + ("",) for k in keys], [c for c in by if c != "metric"])
    names = {k: names[k + ("",)] for k in keys}
    labels = {k: f"{names[k]} ({chosen[k]})" for k in keys}
    drew_theory = False
    for ax, group in zip(axes, GROUPS):
        rows = _group_rows(selected, group, chosen, weighting)
        data = _error_vs_n_frame(rows, ctx, [f"{group}_{c}_{weighting}" for c in ("single", "multi")], by=by,
                                 average=average, band=band, level=level, theory=theory, anchor="centre",
                                 gates=None, fitted_k=None, warn=False)
        if len(data):
            data = data.assign(panel=group, series=[labels[(s, g, int(k))] for s, g, k in
                                                    zip(data["study"], data["gate"], data["fitted_k"])])
        _draw_error_vs_n_axes(ax, data, f"{weighting} error ({_AVERAGE_TEXT[average]})",
                              {k: styles[(k[0], k[1], int(k[2]))] for k in _series_keys(data)} if len(data) else {})
        ax.set_title(_GROUP_LABELS[group])
        _slope_box(ax, _slope_lines(data, keys, names, group))
        drew_theory |= bool(len(data)) and (data["kind"] == "theory").any()
    handles = [_proxy(styles[k], lw=1.5) for k in keys]
    entries = [labels[k] for k in keys]
    if drew_theory:
        handles.append(Line2D([], [], color=_THEORY_COLOUR, ls="--", lw=1.2))
        entries.append("theory's rate (dashed; exponent and [tag] in each panel's box)")
    fig.legend(handles, entries, loc="outside lower center", ncols=min(len(entries), 3), fontsize=9, frameon=False)
    _notes_panel(axes[len(GROUPS)], _group_notes(weighting, average, band, level, theory and ctx.true_k is not None))
    for ax in axes[len(GROUPS) + 1:]:
        ax.axis("off")
    return axes


def _slope_lines(data: pd.DataFrame, keys: Sequence[tuple], names: Mapping[tuple, str], group: str) -> list[str]:
    """One line per series of the figure: ``"softmax k=3: slope -0.57 [-0.86, -0.29]; theory -1/8 [B]"``,
    or ``"competition k=3: no gate slopes"`` where the panel has none of its errors."""
    lines = []
    for key in keys:
        rows = data[(data["study"] == key[0]) & (data["gate"] == key[1]) & (data["fitted_k"] == key[2])] if len(data) else data
        if rows.empty:
            lines.append(f"{names[key]}: no {_GROUP_NAMES[group]}")
            continue
        fit, th = rows[rows["kind"] == "fit"], rows[rows["kind"] == "theory"]
        line = f"{names[key]}: {_fit_text(fit)}" if len(fit) else f"{names[key]}: one n, no slope"
        if len(th):
            line += f"; theory {_fraction(th['exponent'].iloc[0])} [{th['tag'].iloc[0]}]"
        lines.append(line)
    return lines


def _slope_box(ax: Axes, lines: list[str], size: float = 7.0) -> None:
    """The panel's slopes in a box in its upper corner (right where the errors fall with n), with
    room made for it above the data by raising the upper y limit."""
    if not lines:
        return
    if ax.get_yscale() == "log" and ax.has_data():
        ax.autoscale_view()
        lo, hi = ax.get_ylim()
        height = ax.get_position().height * ax.figure.get_figheight() * 72 * 0.75  # points, less what layout takes
        share = min(0.5, (len(lines) * 1.25 * size + 10) / max(height, 1.0))
        ax.set_ylim(lo, hi * (hi / lo) ** (share / (1 - share)))
    right = True
    data = _DRAWN.get(ax)
    if data is not None and len(data):
        pts = data[data["kind"] == "point"]
        if pts["n"].nunique() > 1:
            right = float(np.corrcoef(np.log(pts["n"].astype(float)), np.log(pts["value"].astype(float)))[0, 1]) <= 0
    ax.text(0.98 if right else 0.02, 0.98, "\n".join(lines), transform=ax.transAxes, ha="right" if right else "left",
            va="top", multialignment="left", fontsize=size, gid="slopes", zorder=6,
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="0.8", alpha=0.9))


def _group_notes(weighting: str, average: str, band: str, level: float, theory: bool) -> list[str]:
    lines = [
        "Per-parameter-group errors (exponent 1)",
        f"  {weighting}, summed over atoms and cells",
        "",
        _band_text(band, average).replace("; ", "\n"),
        "solid: least-squares fit; box: its slope",
        f"  [{level:.0%} t-interval] per series",
        ("dashed: theory's rate where it has one, one\n  line per exponent (grey: shared by gates)"
         if theory else "no theory lines (turned off, or true k unknown)"),
        "",
        "(multi): cells with >= 2 fitted atoms",
        "(single): cells with exactly one",
    ]
    if theory:
        lines += ["", *_TAG_LINES]
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
        Each local slope is drawn at ``n_mid``, the geometric mean of its two sizes (ticks mark
        the sizes themselves when there are at most 8); one dashed line per distinct theory
        exponent, as in :func:`plot_error_vs_n`.
    """
    df, ctx = _load(table, true_k)
    data = _local_frame(df, ctx, metric, by=by, average=average, gates=gates, fitted_k=fitted_k)
    ylabel = f"local slope of log {_AVERAGE_TEXT[average]} {_metric_label(_as_list(metric))}"
    return _draw_local_slopes(_new_axes(ax), data, _as_by(by), ylabel, ctx.families)


#: What a local slope is, as the legend's title.
_LOCAL_TITLE = "each point: slope between neighbouring sizes, at their geometric midpoint"


def _draw_local_slopes(ax: Axes, data: pd.DataFrame, by: Sequence[str], ylabel: str,
                       families: Mapping[str, str] | None = None) -> Axes:
    ax.set_xscale("log")
    ax.set_xlabel("sample size n (midpoint of neighbouring sizes)")
    ax.set_ylabel(ylabel)
    _DRAWN[ax] = data
    if data.empty:
        ax.text(0.5, 0.5, "no local slopes (needs two or more sizes)", transform=ax.transAxes, ha="center", color="grey")
        return ax
    keys = _sorted_keys(_series_keys(data), families)
    styles = _styles(keys, by, families)
    for key in keys:
        _draw_local_series(ax, _series_rows(data, key), styles[key])
    theory = data[np.isfinite(data["exponent"].astype(float))]
    for exponent, rows in theory.groupby(theory["exponent"].astype(float).round(12), sort=True):
        ax.axhline(float(rows["exponent"].iloc[0]), ls="--", color=_theory_colour(_series_keys(rows), styles), lw=1.2,
                   alpha=0.8, label=_theory_label(float(rows["exponent"].iloc[0]), rows["tag"]))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.grid(True, alpha=0.3)
    _format_log_x(ax, np.concatenate([data["n_low"].to_numpy(float), data["n_high"].to_numpy(float)]), margin=0.03)
    _legend_below(ax, *ax.get_legend_handles_labels(), 8, _LOCAL_TITLE)
    return ax


def _draw_local_series(ax: Axes, s: pd.DataFrame, style: tuple[str, str, bool]) -> None:
    colour, marker, filled = style
    ax.plot(s["n_mid"], s["slope"], "-", marker=marker, color=colour, mfc=colour if filled else "white", ms=5, lw=1.2,
            label=str(s["series"].iloc[0]))


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
        _draw_error_vs_n(fig.subplots(), data, by, f"{_metric_label([metric])} (mean)", _band_text("se", "mean"),
                         families=ctx.families)
        written += save_figure(fig, out / f"error_vs_n_{metric}")
        fig = _new_figure((7.5, 5.5))
        data = _local_frame(df, ctx, metric, by=by, average="mean", gates=None, fitted_k=None, warn=False)  # warned above
        _draw_local_slopes(fig.subplots(), data, by, f"local slope of log mean {_metric_label([metric])}", ctx.families)
        written += save_figure(fig, out / f"local_slopes_{metric}")
    recorded = [w for w in ("unweighted", "weighted", "share", "centre") if has_groups and df["metric"].str.endswith(f"_{w}").any()]
    for weighting in recorded:
        fig = _new_figure((15.0, 11.0))
        _draw_groups(df, ctx, gates=None, fitted_k=None, weighting=weighting, cells="auto", by=by, average="mean",
                     band="se", level=0.95, theory=True, fig=fig)
        fig.suptitle(f"{', '.join(sorted(set(df['study'])))}: per-group errors ({weighting})")
        written += save_figure(fig, out / f"groups_{weighting}")
    return written
