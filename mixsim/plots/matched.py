"""The matched-gates figure: the gate weights of two truths with the same experts against x (d = 1).

A claim test on matched truths (:func:`mixsim.matched_truth`) asks the reader to accept that the
two scenarios are the same up to the gate; this figure shows how close the gates are. One colour
per expert, a solid line for the first truth and a dashed one for the second; the title gives
:func:`mixsim.gate_distance` (the expected KL from the first to the second).
:func:`matched_gates_data` builds the table, :func:`draw_matched_gates` draws it,
:func:`plot_matched_gates` does both.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from ..matching import gate_distance
from ..model import X_DISTS, MoEParams, gate_and_mean
from .draw import new_axes, remember

__all__ = ["MATCHED_COLUMNS", "matched_gates_data", "draw_matched_gates", "plot_matched_gates"]

#: Columns of :func:`matched_gates_data`: which truth (0: the first, 1: the second), its gate
#: family, the expert, the input x, the gate weight, and the two truths' gate distance (every row).
MATCHED_COLUMNS = ["truth", "gate", "expert", "x", "weight", "distance"]
#: The inputs drawn by default for each input distribution (d = 1): its support, or +-3 sd.
_X_RANGES = {"uniform": (0.0, 1.0), "grid": (0.0, 1.0), "normal": (-3.0, 3.0)}


def matched_gates_data(truth: MoEParams, matched: MoEParams, x: Any = None, *, x_dist: str = "uniform",
                       num: int = 201) -> pd.DataFrame:
    """The gate weights of two truths with one input (d = 1) on a grid of x: what the figure draws.

    Parameters
    ----------
    truth, matched : MoEParams
        Two truths with the same number of experts and d = 1 (typically a truth and
        :func:`mixsim.matched_truth` of it).
    x : array of shape (num,), optional
        Inputs. Default: ``num`` even points over ``x_dist``'s range ([0, 1], or [-3, 3] for normal).
    x_dist : {"uniform", "grid", "normal"}, default "uniform"
        The input distribution, for the default range and for the gate distance in the title.
    num : int, default 201

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MATCHED_COLUMNS`, one row per truth, expert and x.
    """
    for name, value in (("truth", truth), ("matched", matched)):
        if not isinstance(value, MoEParams):
            raise TypeError(f"{name} must be a MoEParams; got {type(value).__name__}")
        if value.dim != 1:
            raise ValueError(f"{name}: the matched-gates figure draws weights against one input; got d = {value.dim}")
    if x_dist not in X_DISTS:
        raise ValueError(f"unknown x_dist {x_dist!r}; expected one of {tuple(X_DISTS)}")
    x = np.linspace(*_X_RANGES[x_dist], int(num)) if x is None else np.asarray(x, dtype=np.float64).reshape(-1)
    distance = gate_distance(truth, matched, x_dist=x_dist)  # also checks that k agrees
    frames = []
    for index, params in enumerate((truth, matched)):
        weight, _ = gate_and_mean(params, x[:, None])  # (num, k)
        k = params.n_experts
        frames.append(pd.DataFrame({"truth": index, "gate": params.gate, "expert": np.tile(np.arange(k), x.size),
                                    "x": np.repeat(x, k), "weight": weight.reshape(-1), "distance": distance}))
    return pd.concat(frames, ignore_index=True)[MATCHED_COLUMNS]


def draw_matched_gates(data: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Draw :func:`matched_gates_data`: weight against x, a colour per expert, solid (first truth) and dashed (second)."""
    missing = set(MATCHED_COLUMNS) - set(data.columns)
    if missing:
        raise ValueError(f"data lacks columns {sorted(missing)} (build it with matched_gates_data)")
    ax = new_axes(ax, figsize=(6.0, 4.0))
    styles = ("-", "--")
    for (index, expert), rows in data.groupby(["truth", "expert"], sort=True):
        ax.plot(rows["x"], rows["weight"], linestyle=styles[int(index) % 2], color=f"C{int(expert)}", linewidth=1.6)
    gates = data.groupby("truth", sort=True)["gate"].first()
    handles = [Line2D([], [], color="0.2", linestyle=styles[int(i) % 2], label=f"{g} ({'truth' if i == 0 else 'matched'})")
               for i, g in gates.items()]
    handles += [Line2D([], [], color=f"C{int(e)}", label=f"expert {int(e)}") for e in sorted(data["expert"].unique())]
    ax.legend(handles=handles, fontsize="small", frameon=False)
    ax.set_xlabel("x")
    ax.set_ylabel("gate weight")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"matched gates: expected KL {data['distance'].iloc[0]:.2g} nats")
    remember(ax, data)
    return ax


def plot_matched_gates(truth: MoEParams, matched: MoEParams, ax: Axes | None = None, **options: Any) -> Axes:
    """:func:`matched_gates_data` then :func:`draw_matched_gates`; ``options`` go to the data builder."""
    return draw_matched_gates(matched_gates_data(truth, matched, **options), ax=ax)
