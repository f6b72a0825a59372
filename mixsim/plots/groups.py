"""Per-parameter-group figure: one error-vs-n panel per group (weights, gate slopes, expert slopes,
expert intercepts, variances), so gates can be compared group by group.

:func:`groups_data` builds the figure's numbers (a :class:`GroupsData`), :func:`draw_groups`
draws them, :func:`plot_groups` does both. One legend serves the whole figure; each panel's
fitted slopes (rows of :func:`mixsim.study.rate_table`) sit in a box in its upper corner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..losses import GROUPS, WEIGHTINGS
from ..study import RateContext
from .data import DATA_COLUMNS, check_options, error_vs_n_frame, load, loggable, select
from .draw import draw_error_vs_n_axes, series_keys
from .style import (AVERAGE_TEXT, GROUP_LABELS, GROUP_NAMES, TAG_LINES, THEORY_COLOUR, as_by, band_text, fit_text,
                    fraction, proxy, series_labels, series_styles, sorted_keys)


@dataclass(frozen=True)
class GroupsData:
    """The numbers of a per-group figure and what its legend and notes say.

    Attributes
    ----------
    table : pandas.DataFrame
        The rows drawn, with the columns of :func:`mixsim.plots.error_vs_n_data`; ``panel`` is the
        parameter group and ``series`` the figure-wide label (``"softmax k=3 (multi)"``).
    series : pandas.DataFrame
        One row per (study, gate, fitted_k) in figure order, also those with no rows in a panel:
        columns ``study, gate, fitted_k, name`` (``"softmax k=3"``), ``cells`` (the cell type drawn).
    weighting, average, band : str
    level : float
    theory : bool
        Whether theory lines were asked for and could be drawn (true k known).
    by : tuple of str
        Columns that tell series apart (colours).
    families : dict
        Gate family of each gate label.
    falling : dict
        Per group, whether its errors fall with n (the correlation of log error with log n is
        <= 0, or there is a single n): the panel's slope box then sits in the upper right corner,
        else upper left.
    """

    table: pd.DataFrame
    series: pd.DataFrame
    weighting: str
    average: str
    band: str
    level: float
    theory: bool
    by: tuple[str, ...] = ("gate",)
    families: dict[str, str] = field(default_factory=dict)
    falling: dict[str, bool] = field(default_factory=dict)


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


def _falls(points: pd.DataFrame) -> bool:
    """Whether errors fall with n: the correlation of log error with log n is <= 0 (or a single n)."""
    if points["n"].nunique() < 2:
        return True
    return float(np.corrcoef(np.log(points["n"].astype(float)), np.log(points["value"].astype(float)))[0, 1]) <= 0


def groups_data(
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
) -> GroupsData:
    """The numbers :func:`plot_groups` draws (parameters as there)."""
    df, ctx = load(table, true_k)
    return groups_frame(df, ctx, gates=gates, fitted_k=fitted_k, weighting=weighting, cells=cells, by=by,
                        average=average, band=band, level=level, theory=theory)


def groups_frame(df: pd.DataFrame, ctx: RateContext, *, gates: Any = None, fitted_k: Any = None,
                 weighting: str = "unweighted", cells: str = "auto", by: str | Sequence[str] = "gate",
                 average: str = "mean", band: str = "se", level: float = 0.95, theory: bool = True) -> GroupsData:
    """:func:`groups_data` of a loaded table and its :class:`mixsim.study.RateContext`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    if cells not in ("auto", "multi", "single"):
        raise ValueError(f"cells must be 'auto', 'multi' or 'single'; got {cells!r}")
    check_options(average, band, level)
    by = as_by(by)
    metrics = [f"{g}_{c}_{weighting}" for g in GROUPS for c in ("single", "multi")]
    selected = select(df, metrics, gates, fitted_k)
    if selected.empty:
        raise ValueError(f"no finished per-group errors ({weighting}) in the table for gates={gates!r}, fitted_k={fitted_k!r}; "
                         "a study records them with metrics = [..., \"groups\"]")
    chosen = _resolve_cells(selected, cells, weighting, ctx.true_k)
    loggable(pd.concat([_group_rows(selected, g, chosen, weighting) for g in GROUPS]))  # one warning for all panels
    # series are (study, gate, k): one style and one label for all panels
    keys = sorted_keys([(s, g, int(k)) for s, g, k in zip(selected["study"], selected["gate"], selected["fitted_k"])],
                       ctx.families)
    names = series_labels([k + ("",) for k in keys], [c for c in by if c != "metric"])
    names = {k: names[k + ("",)] for k in keys}
    frames = []
    for group in GROUPS:
        rows = _group_rows(selected, group, chosen, weighting)
        data = error_vs_n_frame(rows, ctx, [f"{group}_{c}_{weighting}" for c in ("single", "multi")], by=by,
                                average=average, band=band, level=level, theory=theory, anchor="centre",
                                gates=None, fitted_k=None, warn=False)
        if len(data):
            frames.append(data.assign(panel=group, series=[f"{names[(s, g, int(k))]} ({chosen[(s, g, int(k))]})"
                                                           for s, g, k in zip(data["study"], data["gate"], data["fitted_k"])]))
    drawn = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: pd.Series(dtype=object) for c in DATA_COLUMNS})
    series = pd.DataFrame([{"study": k[0], "gate": k[1], "fitted_k": k[2], "name": names[k], "cells": chosen[k]}
                           for k in keys])
    falling = {group: _falls(drawn[(drawn["panel"] == group) & (drawn["kind"] == "point")]) for group in GROUPS}
    return GroupsData(drawn, series, weighting, average, band, level, theory and ctx.true_k is not None, tuple(by),
                      dict(ctx.families), falling)


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------

def _slope_lines(data: pd.DataFrame, series: pd.DataFrame, group: str) -> list[str]:
    """One line per series of the figure: ``"softmax k=3: slope -0.57 [-0.86, -0.29]; theory -1/8 [B]"``,
    or ``"competition k=3: no gate slopes"`` where the panel has none of its errors."""
    lines = []
    for key in series.itertuples(index=False):
        rows = data[(data["study"] == key.study) & (data["gate"] == key.gate) & (data["fitted_k"] == key.fitted_k)] \
            if len(data) else data
        if rows.empty:
            lines.append(f"{key.name}: no {GROUP_NAMES[group]}")
            continue
        fit, th = rows[rows["kind"] == "fit"], rows[rows["kind"] == "theory"]
        line = f"{key.name}: {fit_text(fit)}" if len(fit) else f"{key.name}: one n, no slope"
        if len(th):
            line += f"; theory {fraction(th['exponent'].iloc[0])} [{th['tag'].iloc[0]}]"
        lines.append(line)
    return lines


def _slope_box(ax: Axes, lines: list[str], right: bool, size: float = 7.0) -> None:
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
    ax.text(0.98 if right else 0.02, 0.98, "\n".join(lines), transform=ax.transAxes, ha="right" if right else "left",
            va="top", multialignment="left", fontsize=size, gid="slopes", zorder=6,
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="0.8", alpha=0.9))


def _notes(data: GroupsData) -> list[str]:
    lines = [
        "Per-parameter-group errors (exponent 1)",
        f"  {data.weighting}, summed over atoms and cells",
        "",
        band_text(data.band, data.average).replace("; ", "\n"),
        "solid: least-squares fit; box: its slope",
        f"  [{data.level:.0%} bootstrap interval] per series",
        ("dashed: theory's rate where it has one, one\n  line per exponent (grey: shared by gates)"
         if data.theory else "no theory lines (turned off, or true k unknown)"),
        "",
        "(multi): cells with >= 2 fitted atoms",
        "(single): cells with exactly one",
    ]
    if data.theory:
        lines += ["", *TAG_LINES]
    return lines


def _panel_grid(fig: Figure | None, n_panels: int) -> tuple[Figure, np.ndarray]:
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(15.0, 11.0), layout="constrained")
    elif fig.get_layout_engine() is None:  # the figure legend sits outside the panels: the layout makes room
        fig.set_layout_engine("constrained")
    axes = fig.subplots(2, (n_panels + 2) // 2, squeeze=False).ravel()
    return fig, axes


def draw_groups(data: GroupsData, fig: Figure | None = None) -> np.ndarray:
    """Draw a :class:`GroupsData` as :func:`plot_groups` describes; returns the axes, shape (6,)."""
    fig, axes = _panel_grid(fig, len(GROUPS))
    keys = [(s.study, s.gate, int(s.fitted_k)) for s in data.series.itertuples(index=False)]
    styles = series_styles(keys, list(data.by), data.families)
    labels = {k: f"{s.name} ({s.cells})" for k, s in zip(keys, data.series.itertuples(index=False))}
    table = data.table
    drew_theory = False
    for ax, group in zip(axes, GROUPS):
        panel = table[table["panel"] == group].reset_index(drop=True) if len(table) else table
        draw_error_vs_n_axes(ax, panel, f"{data.weighting} error ({AVERAGE_TEXT[data.average]})",
                             {k: styles[(k[0], k[1], int(k[2]))] for k in series_keys(panel)} if len(panel) else {})
        ax.set_title(GROUP_LABELS[group])
        _slope_box(ax, _slope_lines(panel, data.series, group), data.falling.get(group, True))
        drew_theory |= bool(len(panel)) and (panel["kind"] == "theory").any()
    handles = [proxy(styles[k], lw=1.5) for k in keys]
    entries = [labels[k] for k in keys]
    if drew_theory:
        handles.append(Line2D([], [], color=THEORY_COLOUR, ls="--", lw=1.2))
        entries.append("theory's rate (dashed; exponent and [tag] in each panel's box)")
    fig.legend(handles, entries, loc="outside lower center", ncols=min(len(entries), 3), fontsize=9, frameon=False)
    notes = axes[len(GROUPS)]
    notes.axis("off")
    notes.text(0.02, 0.98, "\n".join(_notes(data)), transform=notes.transAxes, va="top", ha="left", fontsize=9, wrap=True)
    for ax in axes[len(GROUPS) + 1:]:
        ax.axis("off")
    return axes


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
    tags mean. Each panel is drawn as :func:`mixsim.plots.plot_error_vs_n` draws, except for the
    legend: the series (the same in every panel, in the same colours) share one legend under the
    figure, and a box in each panel's upper corner (room is made for it above the data) gives
    every series' fitted slope with its interval and the theory's exponent with its tag, or says
    that a series has no errors of that group (``"competition k=3: no gate slopes"``). To
    compare gates side by side, pass a table holding both (e.g. two studies' tables
    concatenated; the study shows in the labels only where gate and k do not tell them apart).
    The same as ``draw_groups(groups_data(table, ...), fig)``.

    Parameters
    ----------
    table : DataFrame or path
        Results table or directory (see :func:`mixsim.plots.plot_error_vs_n`).
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
        As in :func:`mixsim.plots.plot_error_vs_n`.
    fig : matplotlib Figure, optional
        Figure to draw the 2 x 3 panels and the figure legend on; default a new pyplot figure.
        One without a layout engine is given constrained layout (which places the legend).

    Returns
    -------
    numpy array of matplotlib Axes, shape (6,)
        The five group panels, then the notes panel.
    """
    data = groups_data(table, gates=gates, fitted_k=fitted_k, weighting=weighting, cells=cells, by=by,
                       average=average, band=band, level=level, theory=theory, true_k=true_k)
    return draw_groups(data, fig)
