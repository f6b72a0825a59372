"""The certificates of a study's fits, summarised (issue 19): was the maximum likelihood found?

Each stored estimate carries its certificate (:func:`mixsim.study.load_estimates` columns):
the excess log-likelihood over the truth (the basic inequality of maximum-likelihood rate
proofs asks for >= 0), whether a variance bound is active, and the search record (hits of the
best optimum, starts, the protocol's optimum). :func:`certificate_summary` gives one row per
(gate, fitted k) of a study; :func:`certificate_markdown` renders it for ``rates.md``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .estimates import load_estimates

__all__ = ["CERTIFICATE_SUMMARY_COLUMNS", "certificate_summary", "certificate_markdown"]

CERTIFICATE_SUMMARY_COLUMNS = (
    "study", "gate", "fitted_k", "estimator", "fits", "median_hits", "single_hit", "protocol_below", "protocol_gap_median",
    "protocol_gap_max", "below_truth", "on_bound",
)


def certificate_summary(estimates: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Per (study, gate, fitted k, estimator): how well the fits' maxima are certified.

    Parameters
    ----------
    estimates : DataFrame or path
        :func:`~mixsim.study.load_estimates` output, or a results directory.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CERTIFICATE_SUMMARY_COLUMNS`: ``fits``; ``median_hits`` (continued starts
        reaching the best optimum within ``hit_tol``); ``single_hit`` (share of fits whose best
        was reached once); ``protocol_below`` (share of fits where the reference protocol's
        optimum lies more than ``hit_tol`` below the returned one) with the median and largest gap
        in nats (over those fits); ``below_truth`` (share with a log-likelihood below the
        truth's: a local optimum, the basic inequality fails); ``on_bound`` (share with an active
        variance bound). A share is NaN where no fit recorded the field (older task files, or
        fits without a search or a truth).
    """
    est = estimates if isinstance(estimates, pd.DataFrame) else load_estimates(estimates)
    fits = est[est["expert"] == 0] if "expert" in est.columns else est
    if "estimator" not in fits.columns:
        fits = fits.assign(estimator="")
    rows = []
    for (study, gate, k, estimator), g in fits.groupby(["study", "gate", "fitted_k", "estimator"], sort=True):
        hits = pd.to_numeric(g["search_hits"], errors="coerce")
        gap = g["log_likelihood"] - g["protocol_loglik"]
        has_gap = gap.notna()
        below = gap[has_gap] > g["search_hit_tol"][has_gap]  # each fit's own hit_tol
        excess = g["excess_loglik"].dropna()
        bounded = g["variance_bounded"].dropna().astype(bool)
        rows.append({
            "study": study, "gate": gate, "fitted_k": int(k), "estimator": estimator, "fits": len(g),
            "median_hits": float(hits.median()) if hits.notna().any() else np.nan,
            "single_hit": float((hits.dropna() == 1).mean()) if hits.notna().any() else np.nan,
            "protocol_below": float(below.mean()) if has_gap.any() else np.nan,
            "protocol_gap_median": float(gap[has_gap][below].median()) if below.any() else np.nan,
            "protocol_gap_max": float(gap[has_gap].max()) if has_gap.any() else np.nan,
            "below_truth": float((excess < 0).mean()) if len(excess) else np.nan,
            "on_bound": float(bounded.mean()) if len(bounded) else np.nan,
        })
    return pd.DataFrame(rows, columns=list(CERTIFICATE_SUMMARY_COLUMNS))


def certificate_markdown(summary: pd.DataFrame) -> list[str]:
    """Lines of a markdown table of :func:`certificate_summary` (shares in percent)."""
    pct = lambda v: "-" if pd.isna(v) else f"{100 * v:.0f}%"  # noqa: E731
    num = lambda v, f="{:.2f}": "-" if pd.isna(v) else f.format(v)  # noqa: E731
    lines = ["| study | fit | estimator | fits | median hits | single hit | protocol below best (median / max gap, nats) "
             "| below the truth | on a bound |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.study} | {r.gate} k={r.fitted_k} | {r.estimator} | {r.fits} | {num(r.median_hits, '{:.1f}')} | {pct(r.single_hit)} "
                     f"| {pct(r.protocol_below)} ({num(r.protocol_gap_median)} / {num(r.protocol_gap_max)}) "
                     f"| {pct(r.below_truth)} | {pct(r.on_bound)} |")
    return lines
