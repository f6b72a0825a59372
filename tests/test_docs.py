"""The documentation builds from the docstrings with warnings as errors (issue 21), as the README says."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    out = tmp_path / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    api = (out / "api.html").read_text()
    for name in ("mixsim.study.rate_table", "mixsim.rates.estimate_rate", "mixsim.study.comparison_table",
                 "mixsim.repro.run_claim_test", "mixsim.fitting.fit_batch", "mixsim.nn.CompeteSMoE",
                 "mixsim.matching.matched_truth", "mixsim.study.pair_outcomes"):
        assert f'id="{name}"' in api, name
    guide = (out / "README.html").read_text()
    assert "Current verdict" in guide and "_images/forest_linear.png" in guide


def test_readme_result_table_is_the_full_runs_outcomes():
    """The README's v3 table quotes figures/full/outcomes.csv: counts, verdict, median n-ratio, n-ratio < 1."""
    import pandas as pd

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Full result of claim test v3**"):readme.index("**What changed from v2")]
    rows = [line for line in section.splitlines() if line.startswith("  | ") and "/" in line]
    outcomes = pd.read_csv(ROOT / "figures/full/outcomes.csv")
    names = {"weight": "weights", "expert_slope": "expert slopes", "expert_intercept": "expert intercepts",
             "variance": "variances"}
    assert len(rows) == len(outcomes) // 2 == 12
    arms = list(dict.fromkeys(outcomes["comparison"]))
    for i, line in enumerate(rows):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        arm, group = arms[i // 4], list(names)[i % 4]
        assert cells[1] == names[group]
        got = outcomes[(outcomes["comparison"] == arm) & (outcomes["group"] == group)].set_index("estimator")
        for col, est in ((2, "mle"), (3, "protocol")):
            r = got.loc[est]
            assert cells[col] == f"{r['faster']} / {r['slower']} / {r['cannot tell']}", (arm, group, est)
        assert cells[4] == got.loc["mle", "verdict"] == got.loc["protocol", "verdict"]
        assert cells[5] == f"{got.loc['mle', 'median_ref_ratio']:.2f}", (arm, group)
        assert cells[6] == f"{got.loc['mle', 'ref_faster']} of {got.loc['mle', 'pairs']}", (arm, group)
    sensitivity = pd.read_csv(ROOT / "figures/full/sensitivity.csv")
    assert not sensitivity["changed"].any() and "no group's verdict changes" in section
