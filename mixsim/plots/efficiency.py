"""The sample-efficiency figure of a network study: held-out error against n, per router, log-log.

:func:`sample_efficiency_data` summarises the replicates (geometric mean and t-interval per
router and n) and adds each router's slope from the study's rate path
(:func:`mixsim.study.series_rate`: the slope of the mean log error on log n; no slope is fitted
here); :func:`draw_sample_efficiency` draws it.
:func:`plot_sample_efficiency` does both (it was ``mixsim.nn.plot_sample_efficiency`` before issue 20).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from ..study.tables import has_rate, series_rate

__all__ = ["SUMMARY_COLUMNS", "summarise", "sample_efficiency_data", "draw_sample_efficiency", "plot_sample_efficiency"]

#: Columns of :func:`summarise`.
SUMMARY_COLUMNS = ["router", "n", "count", "center", "lower", "upper"]


def _successful(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows of ``metric`` that succeeded, with finite values > 0; the router in column ``router``."""
    if "router" not in results.columns and "gate" in results.columns:  # the study runner's table
        results = results.rename(columns={"gate": "router"})
    missing = {"router", "n", "metric", "value"} - set(results.columns)
    if missing:
        raise ValueError(f"results lacks columns {sorted(missing)}")
    ok = results[(results["metric"] == metric) & np.isfinite(results["value"]) & (results["value"] > 0)]
    if "status" in ok.columns:
        ok = ok[ok["status"] == "ok"]
    if ok.empty:
        raise ValueError(f"no successful rows with metric {metric!r}; metrics present: {sorted(results['metric'].unique())}")
    return ok


def summarise(results: pd.DataFrame, metric: str = "excess_mse", level: float = 0.95) -> pd.DataFrame:
    """Geometric mean and t-interval over seeds of ``metric`` per (router, n).

    Parameters
    ----------
    results : pandas.DataFrame
        Rows as returned by :func:`mixsim.study.run_nn_experiment`, or the study runner's table
        (``mixsim.load_results``, where the router is in column ``gate``): columns ``router``,
        ``n``, ``metric``, ``value``, ``status``.
    metric : str, default "excess_mse"
    level : float, default 0.95
        Coverage of the interval for the mean of log10(value) over seeds.

    Returns
    -------
    pandas.DataFrame
        Columns ``router``, ``n``, ``count``, ``center``, ``lower``, ``upper`` (error scale).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    ok = _successful(results, metric)
    rows = []
    for (router, n), grp in ok.groupby(["router", "n"], sort=True):
        logs = np.log10(grp["value"].to_numpy(dtype=float))
        m, c = logs.mean(), len(logs)
        half = stats.t.ppf(0.5 + level / 2, c - 1) * logs.std(ddof=1) / np.sqrt(c) if c > 1 else 0.0
        rows.append({"router": router, "n": n, "count": c, "center": 10**m, "lower": 10 ** (m - half), "upper": 10 ** (m + half)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def sample_efficiency_data(results: pd.DataFrame, metric: str = "excess_mse", level: float = 0.95) -> pd.DataFrame:
    """:func:`summarise` with each router's slope, the metric and the level: what the figure draws.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`summarise`, then ``slope`` (per router: :func:`mixsim.study.series_rate`
        with the log average, i.e. the line through the geometric means over seeds on n, over all
        sizes; NaN unless two sizes have two seeds each),
        ``metric`` and ``level``.
    """
    summary = summarise(results, metric, level)
    ok = _successful(results, metric)
    slopes = {}
    for router, grp in ok.groupby("router", sort=True):
        slopes[router] = series_rate(grp, average="log", n_boot=2)[0].slope if has_rate(grp) else np.nan
    return summary.assign(slope=summary["router"].map(slopes).astype(float), metric=metric, level=float(level))


def draw_sample_efficiency(data: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Log-log held-out error against training-set size, one line per router, intervals shaded.

    Parameters
    ----------
    data : pandas.DataFrame
        A table of :func:`sample_efficiency_data`.
    ax : matplotlib Axes, optional
        Draw here; default: a new figure (no pyplot state is touched).

    Returns
    -------
    matplotlib Axes
        The legend gives each router's slope.
    """
    if ax is None:
        ax = Figure(figsize=(6.4, 4.6)).add_subplot()
    for router, grp in data.groupby("router", sort=True):
        n = grp["n"].to_numpy(dtype=float)
        line, = ax.plot(n, grp["center"].to_numpy(), marker="o",
                        label=f"{router} (slope {float(grp['slope'].iloc[0]):+.2f} over all n)")
        ax.fill_between(n, grp["lower"].to_numpy(), grp["upper"].to_numpy(), color=line.get_color(), alpha=0.2, linewidth=0)
    reps = int(data["count"].max())
    level = float(data["level"].iloc[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ns = sorted(data["n"].unique())
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("training-set size n")
    ax.set_ylabel(f"held-out {data['metric'].iloc[0]}")
    ax.set_title(f"One-layer MoE regressor vs random MoE teacher\ngeometric mean over up to {reps} seeds, {level:.0%} interval")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_sample_efficiency(results: pd.DataFrame, metric: str = "excess_mse", *, ax: Axes | None = None, level: float = 0.95,
                           path: str | Path | None = None) -> Axes:
    """Log-log held-out error against training-set size, one line per router, intervals over seeds.

    Parameters
    ----------
    results : pandas.DataFrame
        See :func:`summarise`.
    metric : str, default "excess_mse"
    ax : matplotlib Axes, optional
        Draw here; default: a new figure (no pyplot state is touched).
    level : float, default 0.95
        Coverage of the shaded interval (t-interval of the mean log error over seeds).
    path : str or Path, optional
        Also save the figure there (PNG at 150 dpi); parent folders are created.

    Returns
    -------
    matplotlib Axes
        :func:`draw_sample_efficiency` of :func:`sample_efficiency_data`.
    """
    ax = draw_sample_efficiency(sample_efficiency_data(results, metric, level), ax)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    return ax
