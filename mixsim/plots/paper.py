"""Figures of the claim test (``mixsim repro``, ``paper_repro.py``): rate estimates per parameter group,
the per-pair slope differences between two gates (a forest plot per arm, both estimators) and the
matched gates; :func:`claim_figures` draws and saves them all.

All are drawn from estimates, never refitted: :func:`group_rates_data` reads the
:class:`mixsim.rates.RateEstimate` of each (study, truth, metric, estimator) (what
:func:`mixsim.rates.estimate_rate` returned for the rate table), :func:`forest_data` the rows of
a comparison table (one row per pair, estimator and group, from :func:`mixsim.rates.compare_rates`),
the matched gates the truths of the specs (:mod:`mixsim.plots.matched`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..losses import GROUPS
from ..study import load_results
from ..study.claim import ARMS, EXACT, ClaimTables
from .data import error_vs_n_data
from .draw import draw_error_vs_n
from .matched import draw_matched_gates, matched_gates_data
from .save import save_figure
from .style import GATE_COLOURS, GROUP_NAMES, MARKERS


@dataclass(frozen=True)
class GroupRatesData:
    """The numbers of a per-group rate figure.

    Attributes
    ----------
    points : pandas.DataFrame
        What the figure shows and saves beside it: one row per (group, study, n), columns
        ``group, gate, study, n, mean_error`` (the geometric mean of the replicates, or the
        estimate's declared average), ``low, high`` (its bootstrap band), ``rate``.
    lines : pandas.DataFrame
        The rate's line at the sizes it was fitted over (the upper half when the estimate fell
        back to it): ``group, gate, study, n, value, label`` (the legend entry).
    local : pandas.DataFrame
        Local slopes with their bootstrap intervals: ``group, gate, study, n_mid, slope, low, high``.
    groups : tuple of str
        Panels, in order.
    studies : tuple of str
    weighting : str
        The group errors' weighting, for the y label.
    truth : int, default 0
        The truth (matched pair) drawn, for the title.
    estimator : str or None, default None
        The estimator drawn (``"mle"``, ``"protocol"``), for the title; None for estimates keyed
        without one.
    """

    points: pd.DataFrame
    lines: pd.DataFrame
    local: pd.DataFrame
    groups: tuple[str, ...]
    studies: tuple[str, ...]
    weighting: str
    truth: int = 0
    estimator: str | None = None


def _gate_of(study: str) -> str:
    words = study.split("_")
    return next((w for w in words if w in GATE_COLOURS), words[0])


def group_rates_data(estimates: Mapping[tuple, Any], studies: Sequence[str], weighting: str, truth: int = 0,
                     groups: Sequence[str] = GROUPS, estimator: str | None = None) -> GroupRatesData:
    """The numbers of :func:`draw_group_rates` for the multi-atom cells of ``studies`` at one truth.

    Parameters
    ----------
    estimates : mapping
        ``(study, truth, metric, estimator) -> RateEstimate`` (:func:`mixsim.rates.estimate_rate`;
        ``ClaimTables.estimates``), or ``(study, truth, metric) -> RateEstimate`` with ``estimator``
        None; metrics ``"<group>_multi_<weighting>"``. Missing entries leave the panel without that study.
    studies : sequence of str
        Study names; the gate is the name's first word that names a gate family
        (``"softmax_overfit_ensemble"``, ``"matched_linear_softmax"`` -> softmax), else its first word.
    weighting : str
    truth : int, default 0
    groups : sequence of str, default :data:`mixsim.losses.GROUPS`
    estimator : str, optional
        The estimator whose rates are drawn (the keys' fourth entry); default None: keys of three entries.

    Returns
    -------
    GroupRatesData
    """
    points, lines, local = [], [], []
    for g in groups:
        for study in studies:
            key = (study, truth, f"{g}_multi_{weighting}")
            est = estimates.get(key if estimator is None else (*key, estimator))
            gate = _gate_of(study)
            if est is None:
                continue
            mean = np.exp(est.log_average)
            for k, n in enumerate(est.sizes):
                points.append({"group": g, "gate": gate, "study": study, "n": n, "mean_error": mean[k],
                               "low": est.average_low[k], "high": est.average_high[k], "rate": est.rate})
            label = (f"{gate}: {est.rate:.2f} [{est.rate_low:.2f}, {est.rate_high:.2f}]"
                     + ("" if est.power_law is not False else " (upper half)"))
            line_n = est.sizes if est.rate_source == "full" else est.sizes[len(est.sizes) // 2:]
            for n, value in zip(line_n, np.exp(est.rate_intercept) * line_n ** est.rate):
                lines.append({"group": g, "gate": gate, "study": study, "n": n, "value": value, "label": label})
            mid = np.sqrt(est.local_sizes[:, 0] * est.local_sizes[:, 1])
            for n_mid, slope, low, high in zip(mid, est.local_slopes, est.local_low, est.local_high):
                local.append({"group": g, "gate": gate, "study": study, "n_mid": n_mid, "slope": slope, "low": low,
                              "high": high})
    return GroupRatesData(pd.DataFrame(points), pd.DataFrame(lines, columns=["group", "gate", "study", "n", "value", "label"]),
                          pd.DataFrame(local, columns=["group", "gate", "study", "n_mid", "slope", "low", "high"]),
                          tuple(groups), tuple(studies), weighting, int(truth), estimator)


def _new_figure(fig: Figure | None, size: tuple[float, float]) -> Figure:
    return Figure(figsize=size, layout="constrained") if fig is None else fig


def draw_group_rates(data: GroupRatesData, fig: Figure | None = None, *, titles: Mapping[str, str] | None = None,
                     colours: Mapping[str, str] | None = None) -> np.ndarray:
    """Top row: averaged errors with their bands and each rate's line; bottom row: local slopes.

    Parameters
    ----------
    data : GroupRatesData
    fig : matplotlib Figure, optional
        Default a new one (17 x 7.5 inches, constrained layout; no pyplot).
    titles : mapping, optional
        Panel title per group; default :data:`mixsim.plots.GROUP_NAMES`.
    colours : mapping, optional
        Colour per gate; default :data:`mixsim.plots.GATE_COLOURS`.

    Returns
    -------
    numpy array of matplotlib Axes, shape (2, len(data.groups))
    """
    fig = _new_figure(fig, (17, 7.5))
    titles = GROUP_NAMES if titles is None else titles
    colours = GATE_COLOURS if colours is None else colours
    axes = fig.subplots(2, len(data.groups), squeeze=False)
    for j, g in enumerate(data.groups):
        top, bottom = axes[0, j], axes[1, j]
        for study in data.studies:
            pts = data.points[(data.points["group"] == g) & (data.points["study"] == study)] if len(data.points) else data.points
            if pts.empty:
                continue
            gate = pts["gate"].iloc[0]
            line = data.lines[(data.lines["group"] == g) & (data.lines["study"] == study)]
            local = data.local[(data.local["group"] == g) & (data.local["study"] == study)]
            colour = colours[gate]
            top.fill_between(pts["n"].to_numpy(), pts["low"].to_numpy(), pts["high"].to_numpy(), color=colour, alpha=0.2)
            top.plot(pts["n"].to_numpy(), pts["mean_error"].to_numpy(), "o", color=colour, label=line["label"].iloc[0])
            top.plot(line["n"].to_numpy(), line["value"].to_numpy(), "-", color=colour)
            slopes = local["slope"].to_numpy()
            bottom.errorbar(local["n_mid"].to_numpy(), slopes, yerr=[slopes - local["low"].to_numpy(),
                            local["high"].to_numpy() - slopes], fmt="o-", color=colour, capsize=3)
        top.set(xscale="log", yscale="log", title=titles[g], xlabel="n")
        bottom.set(xscale="log", xlim=top.get_xlim(), xlabel="n (between neighbouring sizes)",
                   ylabel="local slope (95% bootstrap)" if j == 0 else None)
        bottom.minorticks_off()
        bottom.axhline(-0.5, color="grey", ls=":", lw=0.8)
        top.legend(fontsize=7)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"geometric mean of {data.weighting} error\n(bands: 95% bootstrap)")
    which = "reference truths (pair 0)" if data.truth == 0 else f"truth {data.truth}"
    which += "" if data.estimator is None else f", estimator {data.estimator}"
    fig.suptitle(f"Over-fitted, multi-atom cells, {which}: {' vs '.join(data.studies)}")
    return axes


#: Colour of a pair's point per verdict of its paired interval; dropped pairs (kept False) are light grey.
VERDICT_COLOURS = {"faster": "tab:green", "slower": "tab:red", "cannot tell": "grey"}
_DROPPED_COLOUR = "0.82"
_OFFSET = 0.3  # total vertical spread of one pair's estimators (rows are 1 apart)


def forest_data(comparisons: pd.DataFrame, comparison: str = "claim", estimator: str | None = None) -> pd.DataFrame:
    """The rows of one comparison (``comparison`` column; an arm of claim test v3): slope difference a - b
    per truth (pair) and group, with ``difference_low``, ``difference_high`` and ``verdict`` (and
    ``estimator``, ``kept`` where the table has them); what :func:`draw_forest` draws.

    Parameters
    ----------
    comparisons : pandas.DataFrame
        A comparison table (:func:`mixsim.study.comparison_table`, or ``ClaimTables.comparisons``).
    comparison : str, default "claim"
    estimator : str, optional
        Keep only this estimator's rows (``"mle"`` or ``"protocol"``); default every row (a table
        without an ``estimator`` column needs the default).

    Returns
    -------
    pandas.DataFrame
    """
    rows = comparisons[comparisons["comparison"] == comparison]
    if estimator is None:
        return rows
    if "estimator" not in rows:
        raise ValueError(f"estimator={estimator!r}: the comparison table has no 'estimator' column (leave estimator=None)")
    return rows[rows["estimator"] == estimator]


def _estimators(data: pd.DataFrame) -> list:
    return list(dict.fromkeys(data["estimator"])) if "estimator" in data and len(data) else [None]


def _kept(rows: pd.DataFrame) -> np.ndarray:
    return rows["kept"].to_numpy(dtype=bool) if "kept" in rows else np.ones(len(rows), dtype=bool)


def _forest_legend(fig: Figure, estimators: list, markers: dict, dropped: bool) -> None:
    handles = [Line2D([], [], ls="none", marker=markers[e], color="k", label=f"estimator: {e}") for e in estimators
               if e is not None]
    handles += [Line2D([], [], ls="none", marker="o", color=c, label=f"paired interval: {v}") for v, c in VERDICT_COLOURS.items()]
    if dropped:
        handles.append(Line2D([], [], ls="none", marker="o", color=_DROPPED_COLOUR, label="dropped pair (gates too far apart)"))
    constrained = type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
    fig.legend(handles=handles, loc="outside lower center" if constrained else "lower center", ncols=min(len(handles), 6),
               fontsize=8, frameon=False)


def draw_forest(data: pd.DataFrame, fig: Figure | None = None, *, titles: Mapping[str, str] | None = None,
                groups: Sequence[str] = GROUPS, title: str | None = None) -> np.ndarray:
    """Slope difference (competition - softmax) with its interval, one row per truth (pair), one panel per group.

    Where ``data`` has several estimators (an ``estimator`` column), each row shows every one of
    them, a little apart vertically, each with its own marker (a legend under the panels says
    which). Points are coloured by their interval's verdict (:data:`VERDICT_COLOURS`); rows with
    ``kept`` False (pairs dropped for their gate distance) are light grey and their tick reads
    "j (dropped)".

    Parameters
    ----------
    data : pandas.DataFrame
        Rows of :func:`forest_data`: columns ``truth, group, difference, difference_low,
        difference_high, verdict``; optional ``estimator`` and ``kept``.
    fig : matplotlib Figure, optional
        Default a new one (17 x 6.5 inches, constrained layout; no pyplot).
    titles : mapping, optional
        Panel title per group; default :data:`mixsim.plots.GROUP_NAMES`.
    groups : sequence of str, default :data:`mixsim.losses.GROUPS`
        Panels, in order; those without rows are left out (competition has no gate slopes).
    title : str, optional
        The figure's title; default one saying what the points and colours are.

    Returns
    -------
    numpy array of matplotlib Axes
    """
    fig = _new_figure(fig, (17, 6.5))
    titles = GROUP_NAMES if titles is None else titles
    shown = [g for g in groups if g in set(data["group"])] or list(groups)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    estimators = _estimators(data)
    markers = {e: MARKERS[i % len(MARKERS)] for i, e in enumerate(estimators)}
    offsets = dict(zip(estimators, np.linspace(-_OFFSET / 2, _OFFSET / 2, len(estimators)) if len(estimators) > 1 else [0.0]))
    for ax, g in zip(axes, shown):
        sub = data[data["group"] == g]
        parts = [(e, sub if e is None else sub[sub["estimator"] == e]) for e in estimators]
        for e, rows in parts:  # every interval first, then every point (drawn on top)
            y, kept = rows["truth"].to_numpy(float) + offsets[e], _kept(rows)
            for mask, colour in ((kept, "grey"), (~kept, _DROPPED_COLOUR)):
                r = rows[mask]
                if len(r):
                    ax.errorbar(r["difference"], y[mask], xerr=[r["difference"] - r["difference_low"],
                                r["difference_high"] - r["difference"]], fmt="none", ecolor=colour, capsize=3)
        for e, rows in parts:
            colours = np.where(_kept(rows), rows["verdict"].map(VERDICT_COLOURS).to_numpy(dtype=object), _DROPPED_COLOUR)
            ax.scatter(rows["difference"], rows["truth"].to_numpy(float) + offsets[e], c=list(colours), marker=markers[e],
                       zorder=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(title=titles[g], xlabel="slope difference\ncompetition - softmax")
        ax.grid(alpha=0.3)
    truths = sorted(set(data["truth"]))
    dropped = set(data.loc[~_kept(data), "truth"]) if len(data) else set()
    axes[0].set_ylabel("truth (0 = reference)")
    axes[0].set_yticks(truths, [f"{t} (dropped)" if t in dropped else str(t) for t in truths])
    axes[0].set_ylim(max(truths, default=0) + 0.5, -0.5)
    if len(estimators) > 1 or dropped:
        _forest_legend(fig, estimators, markers, bool(dropped))
    fig.suptitle(title or "Per-truth slope differences with 95% bootstrap intervals (green: competition faster, red: slower)")
    return axes


def _first_d1(spec: Any) -> int | None:
    """The first truth (matched pair) with one input, or None."""
    return next((j for j, t in enumerate(spec.truths) if t.dim == 1), None)


def claim_figures(tables: ClaimTables, folder: str | Path) -> list[Path]:
    """Draw and save every figure of the claim test (each with the numbers it shows as CSV, by
    :func:`mixsim.plots.save_figure`); return the PNG paths.

    ``tables`` is :func:`mixsim.study.claim_tables`' result (claim test v3). Figures: the
    exact-fitted D1 of each reference study (error against n; ``<study>_D1``); per arm, the forest
    plot of the per-pair paired slope differences, both estimators on each row (``forest_<arm>``);
    the group rates of matched pair 0 of arm "linear", estimator "mle" (``groups_pair0_linear``);
    per arm, the gate weights of its first pair with d = 1 (pair 0) for both gates
    (``matched_gates_<arm>``). Nothing is refitted here.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Figure, stem: str, data: pd.DataFrame) -> None:
        save_figure(fig, folder / stem, data)
        written.append(folder / f"{stem}.png")

    for study in EXACT:
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        data = error_vs_n_data(load_results(tables.out / study), "D1", by=("gate", "fitted_k"), true_k=2)
        ax = draw_error_vs_n(data, fig.add_subplot(), by=("gate", "fitted_k"))
        ax.set_title(f"{study}: Voronoi loss D1 (exact fit)")
        save(fig, f"{study}_D1", data)
    arms = [arm for arm in ARMS if (tables.comparisons["comparison"] == arm).any()] if len(tables.comparisons) else []
    for arm in arms:
        fig = Figure(figsize=(17, 6.5), layout="constrained")
        forest = forest_data(tables.comparisons, arm)
        draw_forest(forest, fig, title=f"Arm {arm}: per-pair slope differences (competition - softmax) with paired 95% "
                                       "bootstrap intervals, both estimators (green: competition faster, red: slower)")
        save(fig, f"forest_{arm}", forest)
    if "linear" in ARMS:
        fig = Figure(figsize=(17, 7.5), layout="constrained")
        data = group_rates_data(tables.estimates, ARMS["linear"], tables.weighting, truth=0, estimator="mle")
        draw_group_rates(data, fig)
        save(fig, "groups_pair0_linear", data.points)
    for arm, (competition, softmax) in ARMS.items():
        if competition not in tables.specs or softmax not in tables.specs:
            continue
        spec = tables.specs[competition]
        j = _first_d1(spec)
        if j is None:
            continue
        fig = Figure(figsize=(6.4, 4.6), layout="constrained")
        data = matched_gates_data(spec.truths[j], tables.specs[softmax].truths[j], x_dist=spec.x_dist)
        ax = draw_matched_gates(data, fig.add_subplot())
        ax.set_title(f"arm {arm}, pair {j}: {ax.get_title()}")
        save(fig, f"matched_gates_{arm}", data)
    return written
