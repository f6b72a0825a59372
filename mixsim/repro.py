"""The claim test end to end: ``mixsim repro [--tiny | --quick | --full] [--out DIR]`` and
``python paper_repro.py`` both run :func:`run_claim_test`.

It runs (or resumes) the claim test's studies (:mod:`mixsim.study.claim`), writes ``rates.csv``,
``comparisons.csv`` and ``rates.md`` (:func:`mixsim.study.write_claim_tables`) and the figures
(:func:`mixsim.plots.claim_figures`), and prints the rates and a plain-language verdict (:func:`verdict_text`). It sits
above :mod:`mixsim.study` and :mod:`mixsim.plots` and adds no computation of its own.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .plots import GROUP_NAMES, claim_figures
from .study import RULE, ClaimTables, claim_tables, write_claim_tables
from .study.claim import ARMS, EXACT, SCALES

__all__ = ["run_claim_test", "verdict_text", "build_parser", "main"]


_RULE_WORDS = {"faster": "competition faster", "slower": "competition slower", "cannot tell": "cannot tell"}


def _exact_lines(rates: pd.DataFrame) -> list[str]:
    """One line per exact-fitted reference study (and estimator, where it has several): does D1's interval hold -1/2?"""
    out = []
    for name in EXACT:
        rows = rates[(rates["study"] == name) & (rates["metric"] == "D1")] if len(rates) else rates
        several = "estimator" in rows and rows["estimator"].nunique() > 1
        for r in rows.itertuples():
            inside = r.rate_low <= -0.5 <= r.rate_high
            tag = f" ({r.estimator})" if several else ""
            out.append(f"{name}{tag}: D1 slope {r.rate:.2f} [{r.rate_low:.2f}, {r.rate_high:.2f}] "
                       f"{'contains' if inside else 'does NOT contain'} the parametric -1/2.")
    return out


def _arm_lines(tables: ClaimTables) -> list[str]:
    """Per arm and estimator, each group's verdict under the rule, its pair counts and median n-ratio."""
    out, pairs = [], tables.pairs
    for (arm, estimator), sub in tables.outcomes.groupby(["comparison", "estimator"], sort=False):
        studies = " - ".join(ARMS.get(arm, ()))
        dropped = int((~pairs.loc[pairs["arm"] == arm, "kept"].astype(bool)).sum()) if len(pairs) else 0
        out.append(f"Arm {arm} ({studies}), estimator {estimator}: competition vs softmax, paired interval per pair"
                   + (f" ({dropped} pair{'s' * (dropped != 1)} dropped: gates too far apart)" if dropped else "") + ":")
        for r in sub.to_dict("records"):
            ratio = f"{r['median_ref_ratio']:.2f}" if np.isfinite(r["median_ref_ratio"]) else "n/a"
            out.append(f"  {GROUP_NAMES.get(r['group'], r['group']):<18} {_RULE_WORDS[r['verdict']]:<19} (of {r['pairs']} "
                       f"pairs: {r['faster']} faster, {r['slower']} slower, {r['cannot tell']} cannot tell; "
                       f"median n-ratio {ratio})")
    return out


def _sensitivity_lines(sensitivity: pd.DataFrame) -> list[str]:
    """A line per group whose verdict changes between the two estimators (or one saying none does)."""
    changed = sensitivity[sensitivity["changed"].astype(bool)] if len(sensitivity) else sensitivity
    if changed.empty:
        return ["Estimator sensitivity: no group's verdict changes between protocol and mle."]
    out = ["Estimator sensitivity: verdicts that change between protocol and mle (counts faster/slower/cannot tell):"]
    for r in changed.to_dict("records"):
        out.append(f"  arm {r['comparison']}, {GROUP_NAMES.get(r['group'], r['group'])}: protocol "
                   f"{_RULE_WORDS.get(r['protocol'], r['protocol'])} ({r['protocol_counts']}), mle "
                   f"{_RULE_WORDS.get(r['mle'], r['mle'])} ({r['mle_counts']})")
    return out


def verdict_text(tables: ClaimTables) -> str:
    """A plain-language reading of the claim test (v3), arm by arm, estimator by estimator, group by group.

    The exact-fitted D1 lines (does the interval hold -1/2?), then per arm and estimator each
    group's verdict under :data:`mixsim.study.RULE` (fixed before any run) with its pair counts and
    median n-to-eps ratio, then the groups whose verdict changes between the estimators
    (``tables.sensitivity``), and a closing sentence stating the rule and the pairing.
    """
    out = _exact_lines(tables.rates) + _arm_lines(tables)
    if len(tables.sensitivity):
        out += _sensitivity_lines(tables.sensitivity)
    out.append("Each arm's two gates are fitted to matched pairs (the same experts and variances, the closest gate) "
               "sampled with common random numbers, so each pair's interval is paired (the same replicates for both "
               "gates) and the n-ratio (the n competition needs for softmax's error, over softmax's n; < 1: competition "
               f"needs fewer) compares error levels. The rule, fixed before any run: {RULE}.")
    return "\n".join(out)


def run_claim_test(scale: str = "quick", out: str | Path | None = None, figures: str | Path | None = None,
                   n_jobs: int = 1, progress: bool = True) -> ClaimTables:
    """Run (or resume) the claim test at ``scale`` and write its tables and figures.

    Parameters
    ----------
    scale : {"tiny", "quick", "full"}, default "quick"
        :data:`mixsim.study.claim.SCALES`: seconds, under 10 minutes, or about 2 hours on 2 cores.
    out : path, optional
        Results folder, one directory per study; default ``results/paper_<scale>`` in the working folder.
    figures : path, optional
        Where the tables and figures go; default ``figures/<scale>`` in the working folder.
    n_jobs : int, default 1
        Parallel workers of the study runner (results do not depend on it).
    progress : bool, default True
        Print progress and the summary.

    Returns
    -------
    ClaimTables
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}; got {scale!r}")
    out = Path(out) if out is not None else Path("results") / f"paper_{scale}"
    fig_dir = Path(figures) if figures is not None else Path("figures") / scale
    t0 = time.perf_counter()
    if progress:
        print(f"claim test: scale {scale}, results in {out}, figures in {fig_dir}, {n_jobs} jobs", flush=True)
    tables = claim_tables(scale, out, n_jobs=n_jobs, progress=progress)
    write_claim_tables(tables, fig_dir)
    written = claim_figures(tables, fig_dir)
    if progress:
        with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 30):
            shown = ["study", "truth", "estimator", "metric", "rate", "rate_low", "rate_high", "power_law", "not_converged"]
            shown = [c for c in shown if c in tables.rates]
            print(tables.rates[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(tables.rates) else "(no rates)")
            print(tables.outcomes.to_string(index=False))
        print("\nVerdict\n-------\n" + verdict_text(tables))
        print(f"\n{len(written)} figures, rates.md, rates.csv and comparisons.csv in {fig_dir}; "
              f"{time.perf_counter() - t0:.0f} s in all")
    return tables


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``mixsim repro`` (added to ``parser`` if given)."""
    parser = parser or argparse.ArgumentParser(prog="mixsim repro", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_const", dest="scale", const="tiny", help="toy sizes, seconds (for tests)")
    mode.add_argument("--quick", action="store_const", dest="scale", const="quick", help="under 10 minutes on 2 cores (default)")
    mode.add_argument("--full", action="store_const", dest="scale", const="full", help="the shipped specs (hours; resumable)")
    parser.add_argument("--out", type=Path, help="results folder (default results/paper_<scale>)")
    parser.add_argument("--figures", type=Path, help="tables and figures folder (default figures/<scale>)")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="parallel workers (default: all cores)")
    parser.set_defaults(scale="quick")
    return parser


def main(argv: Sequence[str] | None = None, *, root: str | Path | None = None) -> int:
    """Parse ``argv`` and run the claim test; default folders relative to ``root`` (default: the working folder)."""
    args = build_parser().parse_args(argv)
    base = Path(root) if root is not None else Path()
    run_claim_test(args.scale, args.out or base / "results" / f"paper_{args.scale}", args.figures or base / "figures" / args.scale,
                   n_jobs=args.n_jobs)
    return 0
