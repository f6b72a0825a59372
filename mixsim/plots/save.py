"""Saving a figure with the numbers it shows, and a study's standard figures (``mixsim plot DIR``)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..losses import GROUPS
from ..study import FAILED_STATUSES, RATE_EXCLUDED_METRICS
from .data import error_vs_n_frame, load, local_frame
from .draw import draw_error_vs_n, draw_local_slopes, plotted_data
from .groups import draw_groups, groups_frame
from .style import AVERAGE_TEXT, MAIN_METRICS, PlotWarning, canonical_average, metric_label

#: Resolution of saved PNGs.
DPI = 150


def save_figure(fig: Figure, path_stem: str | Path, data: pd.DataFrame | None = None, *, dpi: int = DPI) -> list[Path]:
    """Write ``path_stem.png``, ``path_stem.pdf`` and the numbers shown as ``path_stem.csv``.

    Parameters
    ----------
    fig : matplotlib Figure
    path_stem : str or Path
        Output path without suffix; parent folders are created.
    data : pandas.DataFrame, optional
        The numbers shown, written as the CSV: pass the table the figure was drawn from. Default
        :func:`plotted_data(fig) <mixsim.plots.plotted_data>`, the tables its axes were drawn
        from by :mod:`mixsim.plots`.
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
    ``groups_<weighting>`` for each weighting of the per-group errors recorded. Lines per gate
    and fitted k; theory lines from the study's truth. Points, lines and slopes use the average the
    study declared before its run (``[rates] average`` in study.json), as ``mixsim rates`` does. Drawn on :class:`matplotlib.figure.Figure`
    objects without pyplot, so it runs headless and leaves no open figures behind.

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
    df, ctx = load(results_dir, None)
    main, has_groups = _study_metrics(df[~df["status"].isin(FAILED_STATUSES)])
    if not main and not has_groups:
        warnings.warn(f"{results_dir}: no finished fits to plot", PlotWarning, stacklevel=2)
        return []
    by = ("gate", "fitted_k")
    average = canonical_average(ctx.rates.get("average", "mean"))  # a directory without [rates]: the mean, as before
    band = "quartiles" if average == "median" else "se"
    words = AVERAGE_TEXT[average]
    written: list[Path] = []
    for metric in main:
        fig = _new_figure((7.5, 5.5))
        data = error_vs_n_frame(df, ctx, metric, by=by, average=average, band=band, level=0.95, theory=True,
                                anchor="centre", gates=None, fitted_k=None)
        draw_error_vs_n(data, fig.subplots(), by=by, families=ctx.families, ylabel=f"{metric_label([metric])} ({words})")
        written += save_figure(fig, out / f"error_vs_n_{metric}", data)
        fig = _new_figure((7.5, 5.5))
        data = local_frame(df, ctx, metric, by=by, average=average, gates=None, fitted_k=None, warn=False)  # warned above
        draw_local_slopes(data, fig.subplots(), by=by, families=ctx.families,
                          ylabel=f"local slope of log {words} {metric_label([metric])}")
        written += save_figure(fig, out / f"local_slopes_{metric}", data)
    recorded = [w for w in ("unweighted", "weighted", "share", "centre") if has_groups and df["metric"].str.endswith(f"_{w}").any()]
    for weighting in recorded:
        fig = _new_figure((15.0, 11.0))
        data = groups_frame(df, ctx, weighting=weighting, by=by, average=average, band=band)
        draw_groups(data, fig)
        fig.suptitle(f"{', '.join(sorted(set(df['study'])))}: per-group errors ({weighting})")
        written += save_figure(fig, out / f"groups_{weighting}", data.table)
    return written
