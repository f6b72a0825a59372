"""The claim test's tables as files: ``rates.csv``, ``comparisons.csv``, ``outcomes.csv``,
``sensitivity.csv`` and ``rates.md`` (the readable report of all four, with the fits that did not
converge, the matched pairs and their gate distances, the median paired interval widths and the
fits' certificates)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..rates import VERDICTS
from .certificates import certificate_markdown, certificate_summary
from .claim import GATE_DISTANCE_MAX, ClaimTables
from .verdict import RULE

__all__ = ["markdown_table", "interval_widths", "write_claim_tables"]

_RATE_SHOWN = ["study", "arm", "truth", "estimator", "metric", "average", "slope", "slope_low", "slope_high",
               "median_slope", "mean_slope", "curvature", "curvature_low", "curvature_high", "power_law", "rate_source",
               "rate", "rate_low", "rate_high", "not_converged"]
_COMPARISON_SHOWN = ["truth", "estimator", "group", "rate_a", "rate_b", "difference", "difference_low", "difference_high",
                     "verdict", "ref_ratio", "ref_ratio_low", "ref_ratio_high", "ref_efficiency", "kept"]
_OUTCOME_SHOWN = ["comparison", "group", "estimator", "pairs", *VERDICTS, "verdict", "median_difference", "median_width",
                  "median_ref_ratio", "ref_faster", "ref_slower"]
_POWER_LAW_WORDS = {True: "yes", False: "not a power law over this range", None: "n/a"}
#: The median width of v2's intervals of the slope difference (independent arms, about +-0.1): 0.200 over
#: the 32 claim rows of figures/full at v2 (2026-12-03).
V2_WIDTH = 0.2


def markdown_table(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The lines of a Markdown table of ``df[columns]`` (columns it lacks are skipped): floats with
    3 decimals, or 3 significant digits from 1000 up; non-finite floats as empty cells."""
    cols = [c for c in columns if c in df.columns]
    fmt = df[cols].copy()
    for c in cols:
        if fmt[c].dtype.kind == "f":
            fmt[c] = fmt[c].map(lambda v: "" if not np.isfinite(v) else f"{v:.3g}" if abs(v) >= 1e3 else f"{v:.3f}")
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
           ["| " + " | ".join(str(v) for v in row) + " |" for row in fmt.itertuples(index=False)]


def interval_widths(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The median width of the paired intervals of the slope difference, per arm and estimator.

    Parameters
    ----------
    comparisons : pandas.DataFrame
        ``ClaimTables.comparisons`` (``comparison, estimator, difference_low, difference_high``;
        ``kept`` optional, default every pair kept).

    Returns
    -------
    pandas.DataFrame
        Columns ``comparison, estimator, rows`` (kept (pair, group) rows), ``median_width`` (of
        ``difference_high - difference_low`` over them; NaN when none is finite),
        ``median_unpaired_width`` (the same of ``unpaired_high - unpaired_low``, the intervals
        that resample each gate on its own; NaN without those columns), ``v2_width``
        (:data:`V2_WIDTH`, for comparison); one row per (comparison, estimator) in order of first appearance.
    """
    columns = ["comparison", "estimator", "rows", "median_width", "median_unpaired_width", "v2_width"]
    kept = comparisons[comparisons["kept"].astype(bool)] if "kept" in comparisons else comparisons
    rows = []
    for (arm, estimator), sub in kept.groupby(["comparison", "estimator"], sort=False):
        rows.append({"comparison": arm, "estimator": estimator, "rows": len(sub),
                     "median_width": _median_width(sub, "difference_low", "difference_high"),
                     "median_unpaired_width": _median_width(sub, "unpaired_low", "unpaired_high"), "v2_width": V2_WIDTH})
    return pd.DataFrame(rows, columns=columns)


def _median_width(rows: pd.DataFrame, low: str, high: str) -> float:
    """Median of ``rows[high] - rows[low]`` over the finite widths; NaN without any (or without the columns)."""
    if low not in rows or high not in rows:
        return float("nan")
    width = (rows[high] - rows[low]).to_numpy(dtype=float)
    width = width[np.isfinite(width)]
    return float(np.median(width)) if width.size else float("nan")


def _nats(value: float) -> str:
    """A gate distance with 2 significant digits (they are often below 1e-3; "inf", "nan" as such)."""
    return f"{float(value):.2g}"


def _not_converged(rates: pd.DataFrame) -> pd.DataFrame:
    """Fits and fits that did not converge per (study, estimator), summed over truths."""
    if rates.empty:
        return pd.DataFrame(columns=["study", "estimator", "truths", "fits", "not_converged"])
    keys = ["study", "estimator"] if "estimator" in rates else ["study"]
    per_truth = rates.drop_duplicates([*keys, "truth"])
    return per_truth.groupby(keys, sort=False).agg(truths=("truth", "nunique"), fits=("fits", "sum"),
                                                   not_converged=("not_converged", "sum")).reset_index()


def _comparison_sections(comp: pd.DataFrame) -> list[str]:
    """One table per arm of the per-pair paired comparisons."""
    text = ["## Paired comparisons per arm (competition - softmax; negative = competition's errors fall faster)", "",
            "Per matched pair (`truth`), estimator and group: both rates, their difference with its paired 95% "
            "bootstrap interval and verdict, and the paired n-to-eps ratio `ref_ratio` (the n competition needs for "
            "softmax's error at `n_ref`, over `n_ref`; < 1: competition needs fewer samples) with its verdict.", ""]
    for arm, sub in comp.groupby("comparison", sort=False):
        a, b = sub["a"].iloc[0] if "a" in sub else "", sub["b"].iloc[0] if "b" in sub else ""
        text += [f"### {arm}: {a} - {b}", ""] + markdown_table(sub, _COMPARISON_SHOWN) + [""]
    return text


def write_claim_tables(tables: ClaimTables, folder: str | Path) -> list[Path]:
    """Write the claim test's tables into ``folder``: ``rates.csv``, ``comparisons.csv``,
    ``outcomes.csv`` (:func:`mixsim.study.pair_outcomes`), ``sensitivity.csv``
    (:func:`mixsim.study.estimator_sensitivity`) and ``rates.md`` (all of them readable, with the
    fits that did not converge, the matched pairs, the median interval widths and the fits'
    certificates); return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rates, comp = tables.rates, tables.comparisons
    names = ("rates", "comparisons", "outcomes", "sensitivity")
    paths = [folder / f"{name}.csv" for name in names] + [folder / "rates.md"]
    for path, df in zip(paths, (rates, comp, tables.outcomes, tables.sensitivity)):
        df.to_csv(path, index=False)
    n_boot = ", ".join(str(int(b)) for b in sorted(set(rates["n_boot"]))) if len(rates) else "no"
    text = ["# Claim test: measured rates", "",
            f"Average: declared in each spec before the run (`[rates] average`); intervals: percentile bootstrap "
            f"over replicates within each n ({n_boot} resamples), PAIRED across the two gates of a matched pair "
            f"(the same replicates: common random numbers). `power_law` False = the curvature interval "
            f"(lower-half minus upper-half slope) excludes 0: 'not a power law over this range', and the rate used "
            f"(`rate`) is the upper-half slope (the declared fallback). Over-fitted group errors: `{tables.weighting}` "
            f"weighting, multi-atom cells. Two estimators per fit: `mle` (the search's best) and `protocol` (the "
            f"reference protocol's optimum, from the same search).", "",
            "## Fits that did not converge (certified stationarity), kept in every table", ""]
    text += markdown_table(_not_converged(rates), ["study", "estimator", "truths", "fits", "not_converged"]) + [""]
    text += ["## Matched pairs", "",
             f"Truth j of an arm's competition study and truth j of its softmax study have the same experts; the "
             f"softmax gate is the closest to the competition gate (expected KL of the gate weights, nats). Pairs "
             f"with `gate_distance` above {GATE_DISTANCE_MAX:g} (declared before the run) are dropped (`kept` False) "
             f"and counted nowhere.", ""]
    pairs = tables.pairs.assign(gate_distance=tables.pairs["gate_distance"].map(_nats)) if len(tables.pairs) else tables.pairs
    text += markdown_table(pairs, ["arm", "truth", "d", "gate_distance", "kept"]) + [""]
    text += ["## Rates", ""]
    view = rates.assign(power_law=rates["power_law"].map(_POWER_LAW_WORDS)) if len(rates) else rates
    text += markdown_table(view, _RATE_SHOWN) + [""]
    text += _comparison_sections(comp)
    text += ["## Pairs per outcome (competition - softmax)", "", f"The rule, declared before the run: {RULE}.", ""]
    text += markdown_table(tables.outcomes, _OUTCOME_SHOWN) + [""]
    text += ["## Estimator sensitivity: does a group's verdict change between `protocol` and `mle`?", "",
             "Counts: pairs faster/slower/cannot tell.", ""]
    text += markdown_table(tables.sensitivity, list(tables.sensitivity.columns)) + [""]
    text += ["## Median width of the paired intervals", "",
             f"Over the kept pairs and groups of each arm and estimator, beside the unpaired intervals of the same "
             f"differences (each gate resampled on its own): what the common random numbers gain. v2 (independent "
             f"arms, other sizes) had about +-0.1, a width of about {V2_WIDTH:g}.", ""]
    text += markdown_table(interval_widths(comp), ["comparison", "estimator", "rows", "median_width", "median_unpaired_width",
                                                   "v2_width"])
    text += ["", "## Which maximum: the fits' certificates", "",
             "Per study and fit: how many continued starts reached the returned optimum (`hit_tol` nats), the "
             "share of fits whose optimum was reached once, the share where the reference protocol's optimum "
             "lies below the returned one (searches only), the share whose log-likelihood is below the truth's "
             "(a local optimum: the basic inequality of MLE rate proofs fails) and the share on a variance "
             "bound (mixsim.study.certificate_summary).", ""]
    text += certificate_markdown(_certificates(tables.out))
    paths[-1].write_text("\n".join(text) + "\n")
    return paths


def _certificates(out: Path) -> pd.DataFrame:
    """:func:`certificate_summary` of every results directory under ``out``."""
    dirs = sorted(p.parent for p in Path(out).glob("*/study.json"))
    parts = [certificate_summary(d) for d in dirs]
    return pd.concat(parts, ignore_index=True) if parts else certificate_summary(pd.DataFrame(
        columns=["study", "gate", "fitted_k", "expert"]))
