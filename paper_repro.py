"""The claim test: does competition gating estimate an over-fitted mixture of experts faster than softmax?

    python paper_repro.py            # quick: < 10 minutes on 2 cores (reduced truths, sizes, replications)
    python paper_repro.py --full     # >= 8 truths per gate, 40 replications, n to 3e5 (about 2 h on 2 cores; resumes)
    python paper_repro.py --tiny     # seconds: the whole chain on toy sizes (used by the tests)

The same run as ``mixsim repro [--tiny | --quick | --full] [--out DIR]`` from any folder after
installing mixsim: both call :func:`mixsim.repro.run_claim_test`. Here the default folders are
this checkout's ``results/paper_<scale>/`` (results, resumable) and ``figures/<scale>/`` (figures,
``rates.md``, ``rates.csv``, ``comparisons.csv``).

What runs, through the study runner: the exact-fitted reference studies (D1 must fall as n^-1/2 for
both gates), the over-fitted ensembles (each gate on its reference truth and on truths drawn by
``mixsim.random_truth``, d = 1 and 2), and the tanh-expert control (the scales:
``mixsim.study.claim.SCALES``). Then, per truth and parameter group of the over-fitted two-atom
cells, each gate's rate is a row of ``mixsim.study.rate_table`` (the average and interval rule the
specs declare before the run: slope of the mean log error, percentile bootstrap over replicates;
curvature check, upper-half fallback), and ``mixsim.study.comparison_table`` compares the gates:
slope difference competition - softmax with a bootstrap interval, and the sample-efficiency ratio.
The verdict per group counts the truths whose interval says "faster", "slower" or "cannot tell"
(``mixsim.study.verdict_counts``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mixsim.repro import main

ROOT = Path(__file__).resolve().parent  # default results/ and figures/ of this checkout

if __name__ == "__main__":
    sys.exit(main(root=ROOT))
