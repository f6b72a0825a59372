"""How series look and read in every figure: names, labels, colours, markers, option checks.

A gate family has a fixed colour (softmax blue, competition orange, sigmoid green, other
families from the rest of the cycle), the fitted k a fixed marker (k=2 circle, k=3 square, k=4
triangle, ...); labels read ``"softmax k=3"``, with the metric when it varies and the study only
where labels would otherwise coincide.

Averages carry the study spec's names (:data:`mixsim.rates.SLOPE_AVERAGES`): ``"mean"``,
``"median"`` and ``"log"`` (the geometric mean; the canonical name). ``"logmean"``, an earlier
name, is accepted as an alias of ``"log"`` everywhere in :mod:`mixsim.plots`.
"""
from __future__ import annotations

import zlib
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..losses import GROUPS
from ..rates import canonical_average

#: Columns that tell one series of a figure from another.
SERIES_KEYS = ("study", "gate", "fitted_k", "metric")

#: Metrics drawn by :func:`mixsim.plots.plot_study` as error-vs-n and local-slope figures, when present.
MAIN_METRICS = ("D1", "D2", "hellinger", "tv")

#: Averages of the replicates at one n, by the spec's names; ``"log"`` is the geometric mean.
AVERAGE_NAMES = ("mean", "median", "log")

METRIC_LABELS = {
    "D1": "Voronoi loss D1",
    "D2": "Voronoi loss D2",
    "hellinger": "expected Hellinger distance",
    "tv": "expected total-variation distance",
}
#: Panel titles of the parameter groups (the keys of :func:`mixsim.losses.group_errors`).
GROUP_LABELS = {
    "weight": r"weights (cell sums of $e^{\beta_0}$)",
    "gate_slope": r"gate slopes $\beta_1$",
    "expert_slope": r"expert slopes $a$",
    "expert_intercept": r"expert intercepts $b$",
    "variance": r"variances $\sigma^2$",
}
#: Plain names of the parameter groups, for "competition k=3: no gate slopes".
GROUP_NAMES = {
    "weight": "weights",
    "gate_slope": "gate slopes",
    "expert_slope": "expert slopes",
    "expert_intercept": "expert intercepts",
    "variance": "variances",
}
AVERAGE_TEXT = {"mean": "mean", "median": "median", "log": "geometric mean", "logmean": "geometric mean"}
#: Fixed colour per gate family, so a gate looks the same in every figure; other families take
#: the spare colours (a stable choice per name, moved on where two would coincide).
GATE_COLOURS = {"softmax": "tab:blue", "competition": "tab:orange", "sigmoid": "tab:green"}
_GATE_ORDER = tuple(GATE_COLOURS)
_SPARE_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_COLORS = (*GATE_COLOURS.values(), *_SPARE_COLOURS)
#: Marker of fitted k = 2, 3, 4, ... (k = 1 takes the last).
MARKERS = ("o", "s", "^", "D", "v", "P")
#: A theory line shared by series of different colours.
THEORY_COLOUR = "0.35"
TAG_LINES = [
    "theory tags: [A] primary source,",
    "  [B] secondary sources, [C] reconstruction;",
    "  [A/B], [A/C]: both (e.g. a primary-source",
    "  claim in a reconstructed form)",
]

#: (colour, marker, filled) of one series.
Style = tuple[str, str, bool]


class PlotWarning(UserWarning):
    """Values left out of a figure (NaN or <= 0 on a log scale)."""


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------

def rate_average(average: str) -> str:
    """Deprecated: :func:`mixsim.rates.canonical_average` (the rates now use the same names as the plots)."""
    return canonical_average(average)


def as_list(value: Any) -> list | None:
    """``None``, one value or a sequence, as ``None`` or a list."""
    if value is None:
        return None
    return [value] if isinstance(value, (str, int, np.integer)) else list(value)


def as_by(by: str | Sequence[str]) -> list[str]:
    """The columns that tell series apart, checked against :data:`SERIES_KEYS`."""
    out = [by] if isinstance(by, str) else list(by)
    bad = [c for c in out if c not in SERIES_KEYS]
    if bad or not out:
        raise ValueError(f"by must name one or more of {SERIES_KEYS}; got {by!r}")
    return out


# ---------------------------------------------------------------------------------------------
# texts
# ---------------------------------------------------------------------------------------------

def band_text(band: str, average: str) -> str:
    """What the points and bars of a figure mean (the legend's title)."""
    avg = AVERAGE_TEXT[average]
    geometric = canonical_average(average) == "log"
    se = "×/÷ exp(1 Monte Carlo s.e. of the mean log)" if geometric else "±1 Monte Carlo s.e."
    return {
        "se": f"points: {avg} over replicates; bars: {se}",
        "quartiles": f"points: {avg} over replicates; bars: replicate quartiles (25%, 75%)",
        "none": f"points: {avg} over replicates",
    }[band]


def fraction(exponent: float) -> str:
    """``-0.125`` -> ``"-1/8"`` (theory's exponents are simple fractions)."""
    frac = Fraction(float(exponent)).limit_denominator(24)
    return f"{frac.numerator}/{frac.denominator}" if frac.denominator != 1 else f"{frac.numerator}"


def exponent_text(exponent: float) -> str:
    """``-0.5`` -> ``"$n^{-1/2}$"``."""
    return rf"$n^{{{fraction(exponent)}}}$"


def theory_label(exponent: float, tags: Any) -> str:
    """``"theory n^-1/2 [A/B, B]"``: the exponent and the confidence tags of the series it stands for."""
    return f"theory {exponent_text(exponent)} [{', '.join(sorted(set(map(str, tags))))}]"


def fit_text(fit: pd.DataFrame) -> str:
    """``"slope -0.52 [-0.60, -0.44]"`` from the ``fit`` rows of a figure table."""
    row = fit.iloc[0]
    if np.isfinite(row["ci_low"]):
        return f"slope {row['slope']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return f"slope {row['slope']:.2f} (no interval)"


def metric_label(metrics: Sequence[str]) -> str:
    """An axis label for the metrics of a figure ("error" when they differ)."""
    names = [METRIC_LABELS.get(m, _group_metric_label(m)) for m in metrics]
    return names[0] if len(set(names)) == 1 else "error"


def _group_metric_label(metric: str) -> str:
    parts = metric.rsplit("_", 2)
    if len(parts) == 3 and parts[0] in GROUPS:
        return f"{parts[0].replace('_', ' ')} error ({parts[1]} cells, {parts[2]})"
    return metric


def _format_key(column: str, value: Any) -> str:
    if column == "fitted_k":
        return f"k={int(value)}"
    return str(value)


def series_labels(keys: list[tuple], by: Sequence[str]) -> dict[tuple, str]:
    """Label per series, always in the order gate, k, metric, study: ``"softmax k=3"``; the metric
    when it varies (or is in ``by``); the study when it is in ``by``, or else only on labels that
    would otherwise coincide (``"softmax k=3, softmax_overfit_auto"``)."""
    index = {c: i for i, c in enumerate(SERIES_KEYS)}
    shown = ["gate", "fitted_k"]
    if "metric" in by or len({k[index["metric"]] for k in keys}) > 1:
        shown.append("metric")
    labels = {k: " ".join(_format_key(c, k[index[c]]) for c in shown if str(k[index[c]]) != "") for k in keys}
    counts = pd.Series(list(labels.values()), dtype=object).value_counts()
    return {k: f"{text}, {k[index['study']]}" if "study" in by or counts[text] > 1 else text
            for k, text in labels.items()}


# ---------------------------------------------------------------------------------------------
# order, colours, markers
# ---------------------------------------------------------------------------------------------

def _family(gate: Any, families: Mapping[str, str] | None) -> str:
    return str((families or {}).get(gate, gate))


def _order_key(key: tuple, families: Mapping[str, str] | None = None) -> tuple:
    """Series order: softmax, competition, sigmoid, other families; then gate label, k, metric, study."""
    family = _family(key[1], families)
    rank = _GATE_ORDER.index(family) if family in _GATE_ORDER else len(_GATE_ORDER)
    return (rank, family, str(key[1]), int(key[2]), *(str(v) for v in key[3:]), str(key[0]))


def sorted_keys(keys: Sequence[tuple], families: Mapping[str, str] | None = None) -> list[tuple]:
    """Distinct series keys ``(study, gate, fitted_k[, metric])`` in figure order."""
    return sorted(dict.fromkeys(keys), key=lambda k: _order_key(k, families))


def gate_colour(gate: Any, families: Mapping[str, str] | None = None, spare: dict[str, str] | None = None) -> str:
    """The fixed colour of a gate's family; other families take a spare colour (recorded in ``spare``)."""
    family = _family(gate, families)
    if family in GATE_COLOURS:
        return GATE_COLOURS[family]
    spare = {} if spare is None else spare
    if family not in spare:
        start = zlib.crc32(family.encode()) % len(_SPARE_COLOURS)
        ring = _SPARE_COLOURS[start:] + _SPARE_COLOURS[:start]
        free = [c for c in ring if c not in spare.values()]
        spare[family] = free[0] if free else ring[0]
    return spare[family]


def series_styles(keys: list[tuple], by: Sequence[str], families: Mapping[str, str] | None = None) -> dict[tuple, Style]:
    """(colour, marker, filled) per series key (``(study, gate, fitted_k[, metric])``).

    With ``"gate"`` in ``by`` the colour is the gate family's fixed colour; otherwise one colour per
    value of the ``by`` columns. The marker is fixed by the fitted k; series that would still look
    alike (same colour and k) get an open marker, then the next marker."""
    columns = [SERIES_KEYS.index(c) for c in by]
    colour_of: dict[Any, str] = {}
    taken: set[Style] = set()
    out = {}
    for key in sorted_keys(keys, families):
        if "gate" in by:
            colour = gate_colour(key[1], families, colour_of)
        else:
            group = tuple(key[i] for i in columns if i < len(key))
            colour = colour_of.setdefault(group, _COLORS[len(colour_of) % len(_COLORS)])
        first = (int(key[2]) - 2) % len(MARKERS)
        for i in range(2 * len(MARKERS)):
            style = (colour, MARKERS[(first + i // 2) % len(MARKERS)], i % 2 == 0)
            if style not in taken:
                break
        taken.add(style)
        out[key] = style
    return out


def proxy(style: Style, **line: Any) -> Line2D:
    """A legend handle: the series' marker on its line."""
    colour, marker, filled = style
    return Line2D([], [], color=colour, marker=marker, ms=5, mfc=colour if filled else "white", **line)


def theory_colour(keys: Sequence[tuple], styles: Mapping[tuple, Style]) -> str:
    """The series' colour when all series of a theory line share it, grey otherwise."""
    colours = {styles[k][0] for k in keys}
    return colours.pop() if len(colours) == 1 else THEORY_COLOUR
