"""Figures of the claim test (``mixsim repro``, ``paper_repro.py``): rate estimates per parameter group,
and the per-truth slope differences between two gates (a forest plot); :func:`claim_figures` draws
and saves them all.

Both are drawn from estimates, never refitted: :func:`group_rates_data` reads the
:class:`mixsim.rates.RateEstimate` of each (study, truth, metric) (what
:func:`mixsim.rates.estimate_rate` returned for the rate table), :func:`forest_data` the rows of
a comparison table (one row per truth and group, from :func:`mixsim.rates.compare_rates`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..losses import GROUPS
from ..study import load_results
from ..study.claim import CONTROL, EXACT, OVERFIT, ClaimTables
from .data import error_vs_n_data
from .draw import draw_error_vs_n
from .save import save_figure
from .style import GATE_COLOURS, GROUP_NAMES


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
    """

    points: pd.DataFrame
    lines: pd.DataFrame
    local: pd.DataFrame
    groups: tuple[str, ...]
    studies: tuple[str, ...]
    weighting: str


def group_rates_data(estimates: Mapping[tuple, Any], studies: Sequence[str], weighting: str, truth: int = 0,
                     groups: Sequence[str] = GROUPS) -> GroupRatesData:
    """The numbers of :func:`draw_group_rates` for the multi-atom cells of ``studies`` at one truth.

    Parameters
    ----------
    estimates : mapping
        ``(study, truth, metric) -> RateEstimate`` (:func:`mixsim.rates.estimate_rate`); metrics
        ``"<group>_multi_<weighting>"``. Missing entries leave the panel without that study.
    studies : sequence of str
        Study names; the gate is the name's first word (``"softmax_overfit_ensemble"`` -> softmax).
    weighting : str
    truth : int, default 0
    groups : sequence of str, default :data:`mixsim.losses.GROUPS`

    Returns
    -------
    GroupRatesData
    """
    points, lines, local = [], [], []
    for g in groups:
        for study in studies:
            est = estimates.get((study, truth, f"{g}_multi_{weighting}"))
            gate = study.split("_")[0]
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
                          tuple(groups), tuple(studies), weighting)


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
    fig.suptitle(f"Over-fitted k = 3, two-atom cell, reference truths: {' vs '.join(data.studies)}")
    return axes


def forest_data(comparisons: pd.DataFrame, comparison: str = "claim") -> pd.DataFrame:
    """The rows of one comparison (``comparison`` column): slope difference a - b per truth and group,
    with ``difference_low``, ``difference_high`` and ``verdict``; what :func:`draw_forest` draws."""
    return comparisons[comparisons["comparison"] == comparison]


def draw_forest(data: pd.DataFrame, fig: Figure | None = None, *, titles: Mapping[str, str] | None = None,
                groups: Sequence[str] = GROUPS) -> np.ndarray:
    """Slope difference (competition - softmax) with its interval, one row per truth, one panel per group.

    Parameters
    ----------
    data : pandas.DataFrame
        Rows of :func:`forest_data`: columns ``truth, group, difference, difference_low,
        difference_high, verdict``.
    fig : matplotlib Figure, optional
        Default a new one (17 x 6.5 inches, constrained layout; no pyplot).
    titles : mapping, optional
        Panel title per group; default :data:`mixsim.plots.GROUP_NAMES`.
    groups : sequence of str, default :data:`mixsim.losses.GROUPS`
        Panels, in order; those without rows are left out (competition has no gate slopes).

    Returns
    -------
    numpy array of matplotlib Axes
    """
    fig = _new_figure(fig, (17, 6.5))
    titles = GROUP_NAMES if titles is None else titles
    shown = [g for g in groups if g in set(data["group"])] or list(groups)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, g in zip(axes, shown):
        sub = data[data["group"] == g]
        colours = sub["verdict"].map({"faster": "tab:green", "slower": "tab:red", "cannot tell": "grey"})
        ax.errorbar(sub["difference"], sub["truth"], xerr=[sub["difference"] - sub["difference_low"],
                    sub["difference_high"] - sub["difference"]], fmt="none", ecolor="grey", capsize=3)
        ax.scatter(sub["difference"], sub["truth"], c=list(colours), zorder=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(title=titles[g], xlabel="slope difference\ncompetition - softmax")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("truth (0 = reference)")
    truths = sorted(set(data["truth"]))
    axes[0].set_yticks(truths, [str(t) for t in truths])
    axes[0].set_ylim(max(truths, default=0) + 0.5, -0.5)
    fig.suptitle("Per-truth slope differences with 95% bootstrap intervals (green: competition faster, red: slower)")
    return axes


def claim_figures(tables: ClaimTables, folder: str | Path) -> list[Path]:
    """Draw and save every figure of the claim test (each with the numbers it shows as CSV, by
    :func:`mixsim.plots.save_figure`); return the PNG paths.

    ``tables`` is :func:`mixsim.study.claim_tables`' result: the exact-fitted D1 of each reference
    study (error against n), the over-fitted group rates of both gates, the forest plot of the
    per-truth slope differences, and the tanh control's group rates. Nothing is refitted here.
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
    fig = Figure(figsize=(17, 7.5), layout="constrained")
    data = group_rates_data(tables.estimates, OVERFIT, tables.weighting)
    draw_group_rates(data, fig)
    save(fig, "overfit_groups_softmax_vs_competition", data.points)

    fig = Figure(figsize=(17, 6.5), layout="constrained")
    forest = forest_data(tables.comparisons, "claim")
    draw_forest(forest, fig)
    save(fig, "forest_slope_differences", forest)

    fig = Figure(figsize=(17, 7.5), layout="constrained")
    data = group_rates_data(tables.estimates, CONTROL, tables.weighting)
    draw_group_rates(data, fig)
    save(fig, "control_tanh_groups", data.points)
    return written
