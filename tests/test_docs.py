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
    assert "Current verdict" in guide and "_images/forest_slope_differences.png" in guide
