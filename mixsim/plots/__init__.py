"""Figures of a convergence study: error against n on log-log axes, per-group panels, local slopes.

Plots are data, then drawing. Each figure has a builder that returns the numbers it shows (built
from the rate tables of :mod:`mixsim.study` and the results table: no slope is fitted here) and a
drawer that takes those numbers and returns its axes; ``plot_*`` does both:

* :func:`error_vs_n_data` -> :func:`draw_error_vs_n`; both: :func:`plot_error_vs_n`;
* :func:`local_slopes_data` -> :func:`draw_local_slopes`; both: :func:`plot_local_slopes`;
* :func:`groups_data` -> :func:`draw_groups`; both: :func:`plot_groups`;
* :func:`group_rates_data` -> :func:`draw_group_rates` and :func:`forest_data` ->
  :func:`draw_forest` (the claim test's figures, drawn by ``paper_repro.py``);
* :func:`sample_efficiency_data` -> :func:`draw_sample_efficiency`; both:
  :func:`plot_sample_efficiency` (the network study's figure);
* :func:`matched_gates_data` -> :func:`draw_matched_gates`; both: :func:`plot_matched_gates`
  (the gate weights of two matched truths against x, d = 1).

:func:`save_figure` writes PNG, PDF and the figure's numbers as CSV (pass the data it was drawn
from); :func:`plot_study` draws a study's standard figures (``mixsim plot DIR``). A drawn axes
carries the table it was drawn from (:func:`plotted_data`); nothing is kept in module state.

The files, in the order the data flows:

* :mod:`~mixsim.plots.style` - series order, labels, colours and markers; average names
  (``"log"``, the spec's name for the geometric mean, is canonical; ``"logmean"`` is accepted);
* :mod:`~mixsim.plots.data` - the tables of the error-vs-n and local-slope figures;
* :mod:`~mixsim.plots.ticks` - log axes and legend placement;
* :mod:`~mixsim.plots.draw` - error-vs-n and local-slope figures;
* :mod:`~mixsim.plots.groups` - one panel per parameter group;
* :mod:`~mixsim.plots.save` - saving, a study's standard figures;
* :mod:`~mixsim.plots.paper` - the claim test's figures (rate estimates per group, forest plot);
* :mod:`~mixsim.plots.efficiency` - the network study's sample-efficiency figure;
* :mod:`~mixsim.plots.matched` - the matched-gates figure.

Series look the same in every figure (:mod:`~mixsim.plots.style`); where several series share
the theory's exponent, one dashed reference line is drawn for that exponent. Functions that draw
on one axes take ``ax=None`` (a new pyplot figure) and return the axes; :func:`plot_study` draws
on :class:`matplotlib.figure.Figure` objects without pyplot, so it runs headless.
"""
from __future__ import annotations

from .data import BANDS, DATA_COLUMNS, error_vs_n_data, local_slopes_data
from .draw import draw_error_vs_n, draw_local_slopes, plot_error_vs_n, plot_local_slopes, plotted_data
from .efficiency import SUMMARY_COLUMNS, draw_sample_efficiency, plot_sample_efficiency, sample_efficiency_data, summarise
from .groups import GroupsData, draw_groups, groups_data, plot_groups
from .matched import MATCHED_COLUMNS, draw_matched_gates, matched_gates_data, plot_matched_gates
from .paper import GroupRatesData, claim_figures, draw_forest, draw_group_rates, forest_data, group_rates_data
from .save import DPI, plot_study, save_figure
from .style import (AVERAGE_NAMES, GATE_COLOURS, GROUP_LABELS, GROUP_NAMES, MAIN_METRICS, MARKERS, METRIC_LABELS, SERIES_KEYS,
                    PlotWarning)
from ..rates import AVERAGE_ALIASES, canonical_average  # the rates' rule for average names, re-exported

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
    # data, then drawing
    "draw_error_vs_n", "draw_local_slopes", "groups_data", "GroupsData", "draw_groups",
    "group_rates_data", "GroupRatesData", "draw_group_rates", "forest_data", "draw_forest", "claim_figures",
    "summarise", "sample_efficiency_data", "draw_sample_efficiency", "plot_sample_efficiency",
    "matched_gates_data", "draw_matched_gates", "plot_matched_gates", "MATCHED_COLUMNS",
    # names and styles
    "SERIES_KEYS", "DATA_COLUMNS", "SUMMARY_COLUMNS", "MAIN_METRICS", "METRIC_LABELS", "GROUP_LABELS", "GROUP_NAMES",
    "GATE_COLOURS", "MARKERS", "AVERAGE_NAMES", "AVERAGE_ALIASES", "canonical_average", "DPI",
]
