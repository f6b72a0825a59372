"""Figure of the sample-efficiency experiment: held-out error against n, per router, log-log."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["summarise", "plot_sample_efficiency"]


def summarise(results: Any, metric: str = "excess_mse", level: float = 0.95):
    """Geometric mean and t-interval over seeds of ``metric`` per (router, n).

    Parameters
    ----------
    results : pandas.DataFrame
        Rows as returned by :func:`mixsim.nn.run_experiment`, or the study runner's table
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
    import pandas as pd
    from scipy import stats

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
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
    rows = []
    for (router, n), grp in ok.groupby(["router", "n"], sort=True):
        logs = np.log10(grp["value"].to_numpy(dtype=float))
        m, c = logs.mean(), len(logs)
        half = stats.t.ppf(0.5 + level / 2, c - 1) * logs.std(ddof=1) / np.sqrt(c) if c > 1 else 0.0
        rows.append({"router": router, "n": n, "count": c, "center": 10**m, "lower": 10 ** (m - half), "upper": 10 ** (m + half)})
    return pd.DataFrame(rows)


def plot_sample_efficiency(results: Any, metric: str = "excess_mse", *, ax: Any = None, level: float = 0.95,
                           path: str | Path | None = None) -> Any:
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
        The legend gives each router's least-squares slope of log error on log n.
    """
    summary = summarise(results, metric, level)
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6.4, 4.6)).add_subplot()
    for router, grp in summary.groupby("router", sort=True):
        n = grp["n"].to_numpy(dtype=float)
        center = grp["center"].to_numpy()
        slope = np.polyfit(np.log10(n), np.log10(center), 1)[0] if len(n) > 1 else np.nan
        line, = ax.plot(n, center, marker="o", label=f"{router} (slope {slope:+.2f} over all n)")
        ax.fill_between(n, grp["lower"].to_numpy(), grp["upper"].to_numpy(), color=line.get_color(), alpha=0.2, linewidth=0)
    reps = int(summary["count"].max())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ns = sorted(summary["n"].unique())
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("training-set size n")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"One-layer MoE regressor vs random MoE teacher\ngeometric mean over up to {reps} seeds, {level:.0%} interval")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    return ax
