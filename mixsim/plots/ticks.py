"""Log axes that read well: sample sizes as plain integers, y ticks on short ranges, legends below.

Sample sizes are labelled as plain integers (ticks on the sizes themselves when there are at
most 8 of them, rotated when neighbours would touch); a y range shorter than two powers of ten
gets plain ``%g`` labels. :func:`legend_below` puts a legend under the x labels, so that it hides
no point and no label.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.font_manager import FontProperties
from matplotlib.legend_handler import HandlerTuple
from matplotlib.ticker import FixedLocator, FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter, NullLocator
from matplotlib.transforms import ScaledTranslation


def _powers_of_ten(lo: float, hi: float) -> int:
    """How many powers of ten lie in [lo, hi]."""
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        return 0
    return max(0, int(np.floor(np.log10(hi) + 1e-9) - np.ceil(np.log10(lo) - 1e-9)) + 1)


class NiceLogLocator(Locator):
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


def count_label(value: float, pos: Any = None) -> str:
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


def format_log_y(ax: Axes) -> None:
    """Log y ticks that read well on short ranges: plain labels, never one alone, no minor labels."""
    ax.yaxis.set_major_locator(NiceLogLocator())
    ax.yaxis.set_major_formatter(_log_y_formatter(ax.yaxis))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _tick_font_points(which: str = "xtick.labelsize") -> float:
    return float(FontProperties(size=rcParams[which]).get_size_in_points())


def _visible_x_ticks(ax: Axes) -> tuple[np.ndarray, list[str]]:
    lo, hi = sorted(ax.get_xlim())
    ticks = np.asarray(ax.xaxis.get_major_locator().tick_values(lo, hi), dtype=float)
    ticks = np.sort(ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))])
    return ticks, [count_label(t) for t in ticks]


def _label_width(text: str, font: float) -> float:
    """Width in points of a sample-size label (digits 0.64 em, separators 0.32 em)."""
    return font * sum(0.32 if c in ",." else 0.64 for c in text)


def _rotate_if_crowded(ax: Axes) -> None:
    """Rotate the sample-size labels when neighbours would come closer than 0.6 em (judged from
    the axes' width before layout, less a margin for what the layout takes away)."""
    ticks, labels = _visible_x_ticks(ax)
    if len(ticks) < 2:
        return
    lo, hi = sorted(ax.get_xlim())
    width = ax.get_position().width * ax.figure.get_figwidth() * 72 * 0.9
    gaps = np.diff(np.log(ticks)) / np.log(hi / lo) * width
    font = _tick_font_points()
    widths = np.array([_label_width(t, font) for t in labels])
    if np.any(gaps < (widths[:-1] + widths[1:]) / 2 + 0.6 * font):
        ax.tick_params(axis="x", which="major", labelrotation=35.0)
        for text in ax.get_xticklabels(which="major"):
            text.set_horizontalalignment("right")


def format_log_x(ax: Axes, n: Any, margin: float = 0.05) -> None:
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
            nice = NiceLogLocator(dense_below=2.5).tick_values(lo / stretch, hi * stretch)
            ticks = np.sort(np.concatenate([sizes, nice[np.abs(np.log10(nice / lo)) > 0.15]]))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(NiceLogLocator(dense_below=2.5))
    ax.xaxis.set_major_formatter(FuncFormatter(count_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _rotate_if_crowded(ax)


def _below_x_labels(ax: Axes) -> float:
    """Points from the bottom of the axes to below its x tick labels and x label (an estimate from
    the font sizes and the labels' rotation, read off the axes, with a margin)."""
    font = _tick_font_points()
    angle = np.radians(float(ax.xaxis.get_tick_params(which="major").get("rotation", 0.0)))
    labels = _visible_x_ticks(ax)[1] if ax.get_xscale() == "log" else ["000000"]
    longest = max((_label_width(t, font) for t in labels), default=font)
    ticks = longest * np.sin(angle) + 1.2 * font * np.cos(angle)
    label = _tick_font_points("axes.labelsize") * 1.2 if ax.get_xlabel() else 0.0
    return float(rcParams["xtick.major.size"] + rcParams["xtick.major.pad"] + ticks + rcParams["axes.labelpad"]
                 + label + 4.0)


def legend_below(ax: Axes, handles: Sequence[Any], labels: Sequence[str], size: float, title: str = "") -> None:
    """A legend under the axes' x label, so that it hides no point and no label (constrained
    layout makes room)."""
    below = ax.transAxes + ScaledTranslation(0, -_below_x_labels(ax) / 72, ax.figure.dpi_scale_trans)
    ax.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=None)}, fontsize=size, title=title or None,
              title_fontsize=size, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
              frameon=False)
