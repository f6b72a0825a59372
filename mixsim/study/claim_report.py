"""The claim test's tables as files: ``rates.csv``, ``comparisons.csv`` and ``rates.md`` (the
readable report of both, with the fits that did not converge and the truths per outcome)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .certificates import certificate_markdown, certificate_summary
from .claim import ClaimTables

__all__ = ["markdown_table", "write_claim_tables"]

_RATE_SHOWN = ["study", "truth", "metric", "average", "slope", "slope_low", "slope_high", "median_slope", "mean_slope",
               "curvature", "curvature_low", "curvature_high", "power_law", "rate_source", "rate", "rate_low",
               "rate_high", "not_converged"]
_COMPARISON_SHOWN = ["comparison", "truth", "group", "rate_a", "rate_b", "difference", "difference_low", "difference_high",
                     "verdict", "eps", "n_ratio", "n_ratio_low", "n_ratio_high", "efficiency"]
_POWER_LAW_WORDS = {True: "yes", False: "not a power law over this range", None: "n/a"}


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


def write_claim_tables(tables: ClaimTables, folder: str | Path) -> list[Path]:
    """Write ``rates.csv``, ``comparisons.csv`` and ``rates.md`` of the claim test into ``folder``;
    return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rates, comp = tables.rates, tables.comparisons
    paths = [folder / "rates.csv", folder / "comparisons.csv", folder / "rates.md"]
    rates.to_csv(paths[0], index=False)
    comp.to_csv(paths[1], index=False)
    n_boot = ", ".join(str(int(b)) for b in sorted(set(rates["n_boot"]))) if len(rates) else "no"
    conv = rates.drop_duplicates(["study", "truth"])[["study", "truth", "fits", "not_converged"]] if len(rates) else rates
    text = ["# Claim test: measured rates", "",
            f"Average: declared in each spec before the run (`[rates] average`); intervals: percentile bootstrap "
            f"over replicates within each n ({n_boot} resamples). `power_law` False = the curvature interval "
            f"(lower-half minus upper-half slope) excludes 0: 'not a power law over this range', and the rate used "
            f"(`rate`) is the upper-half slope (the declared fallback). Over-fitted group errors: `{tables.weighting}` "
            f"weighting, two-atom cells.", "",
            "## Fits that did not converge (certified stationarity), kept in every table", ""]
    text += markdown_table(conv, ["study", "truth", "fits", "not_converged"]) + [""]
    text += ["## Rates", ""]
    view = rates.assign(power_law=rates["power_law"].map(_POWER_LAW_WORDS)) if len(rates) else rates
    text += markdown_table(view, _RATE_SHOWN) + [""]
    text += ["## Gate comparisons (a - b; negative = a's errors fall faster)", ""]
    text += markdown_table(comp, _COMPARISON_SHOWN) + [""]
    text += ["## Truths per outcome (competition - softmax)", ""]
    text += markdown_table(tables.counts, ["group", "truths", "faster", "slower", "cannot tell"])
    text += ["", "## Which maximum: the fits' certificates", "",
             "Per study and fit: how many continued starts reached the returned optimum (`hit_tol` nats), the "
             "share of fits whose optimum was reached once, the share where the reference protocol's optimum "
             "lies below the returned one (searches only), the share whose log-likelihood is below the truth's "
             "(a local optimum: the basic inequality of MLE rate proofs fails) and the share on a variance "
             "bound (mixsim.study.certificate_summary).", ""]
    text += certificate_markdown(_certificates(tables.out))
    paths[2].write_text("\n".join(text) + "\n")
    return paths



def _certificates(out: Path) -> pd.DataFrame:
    """:func:`certificate_summary` of every results directory under ``out``."""
    dirs = sorted(p.parent for p in Path(out).glob("*/study.json"))
    parts = [certificate_summary(d) for d in dirs]
    return pd.concat(parts, ignore_index=True) if parts else certificate_summary(pd.DataFrame(
        columns=["study", "gate", "fitted_k", "expert"]))
