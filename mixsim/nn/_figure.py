"""Figure of the sample-efficiency experiment: held-out error against n, per router, log-log.

The figure is :mod:`mixsim.plots`' (:func:`mixsim.plots.sample_efficiency_data` and
:func:`mixsim.plots.draw_sample_efficiency`); this module keeps the network layer's name for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_sample_efficiency"]


def plot_sample_efficiency(results: Any, metric: str = "excess_mse", *, ax: Any = None, level: float = 0.95,
                           path: str | Path | None = None) -> Any:
    """Log-log held-out error against training-set size, one line per router, intervals over seeds.

    Parameters
    ----------
    results : pandas.DataFrame
        See :func:`mixsim.plots.summarise`.
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
        The legend gives each router's slope (:func:`mixsim.rates.fit_rate` of the geometric
        mean over seeds on n).
    """
    # Imported here so that the layer (import mixsim.nn, e.g. on a training node) does not load matplotlib.
    from ..plots import draw_sample_efficiency, sample_efficiency_data

    ax = draw_sample_efficiency(sample_efficiency_data(results, metric, level), ax)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    return ax
