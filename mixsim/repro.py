"""The claim test end to end: ``mixsim repro [--tiny | --quick | --full] [--out DIR]`` and
``python paper_repro.py`` both run :func:`run_claim_test`.

It runs (or resumes) the claim test's studies (:mod:`mixsim.study.claim`), writes ``rates.csv``,
``comparisons.csv`` and ``rates.md`` (:func:`mixsim.study.write_claim_tables`) and the figures
(:func:`mixsim.plots.claim_figures`), and prints the rates and a plain-language verdict. It sits
above :mod:`mixsim.study` and :mod:`mixsim.plots` and adds no computation of its own.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from .plots import GROUP_NAMES, claim_figures
from .study import ClaimTables, claim_tables, write_claim_tables
from .study.claim import EXACT, SCALES

__all__ = ["run_claim_test", "verdict_text", "build_parser", "main"]


def verdict_text(tables: ClaimTables) -> str:
    """A plain-language reading of the intervals, group by group.

    The rule, fixed before any run: a group reads "competition faster" ("slower") when the
    intervals of more than half of the truths say so and none says the opposite; else "cannot tell".
    """
    rates, out = tables.rates, []
    for name in EXACT:
        r = rates[(rates["study"] == name) & (rates["metric"] == "D1")] if len(rates) else rates
        if len(r):
            r = r.iloc[0]
            inside = r.rate_low <= -0.5 <= r.rate_high
            out.append(f"{name}: D1 slope {r.rate:.2f} [{r.rate_low:.2f}, {r.rate_high:.2f}] "
                       f"{'contains' if inside else 'does NOT contain'} the parametric -1/2.")
    if len(tables.counts):
        out.append("Over-fitted k = 3, two-atom cell, competition vs softmax (slope difference interval per truth):")
        for r in tables.counts.to_dict("records"):
            word = ("competition faster" if r["faster"] > r["truths"] / 2 and r["slower"] == 0
                    else "competition slower" if r["slower"] > r["truths"] / 2 and r["faster"] == 0
                    else "cannot tell")
            out.append(f"  {GROUP_NAMES[r['group']]:<18} {word:<19} (of {r['truths']} truths: {r['faster']} faster, "
                       f"{r['slower']} slower, {r['cannot tell']} cannot tell)")
    if len(tables.control):
        out.append("Control (tanh experts minus linear experts, reference truths):")
        for r in tables.control.itertuples():
            out.append(f"  {r.comparison:<18} {GROUP_NAMES[r.group]:<18} difference {r.difference:+.2f} "
                       f"[{r.difference_low:+.2f}, {r.difference_high:+.2f}]: tanh {r.verdict}")
    out.append("Each gate is fitted to its own truths (the truth indices pair truths drawn alike, not the same "
               "model), so only slopes compare; the n-ratio also compares error levels and is reported, not "
               "used in the verdict. The rule, fixed before any run: a group reads 'faster' ('slower') when the "
               "intervals of more than half of the truths say so and none says the opposite; else 'cannot tell'.")
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
            shown = ["study", "truth", "metric", "rate", "rate_low", "rate_high", "power_law", "not_converged"]
            print(tables.rates[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(tables.rates) else "(no rates)")
            print(tables.counts.to_string(index=False))
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
