"""paper_repro.py end to end at toy scale: every study, figure and table is produced, reruns resume,
`mixsim repro --tiny` writes the same tables, and `mixsim rates DIR` gives the same rate on every row."""
import importlib.util
import sys
from pathlib import Path

import pandas as pd

from mixsim.cli import main as mixsim_main

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("paper_repro", ROOT / "paper_repro.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_repro"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_writes_figures_rates_comparisons_and_verdict(tmp_path, capsys):
    mod = _module()
    figs = tmp_path / "figures"
    mod.main(["--tiny", "--out", str(tmp_path / "results"), "--figures", str(figs), "--n-jobs", "1"])
    out = capsys.readouterr().out
    assert "Verdict" in out and "softmax_exact: D1 slope" in out and "competition vs softmax" in out
    for stem in ["softmax_exact_D1", "competition_exact_D1", "groups_pair0_linear", "forest_linear", "forest_tanh",
                 "forest_linear_k4", "matched_gates_linear"]:
        for ext in ("png", "pdf", "csv"):
            assert (figs / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
    rates = pd.read_csv(figs / "rates.csv")
    # The declared average (log), bootstrap intervals, curvature check, median and mean slopes beside it.
    assert {"study", "arm", "truth", "estimator", "metric", "average", "slope", "slope_low", "slope_high", "curvature",
            "curvature_low", "curvature_high", "power_law", "rate", "rate_low", "rate_high", "median_slope", "mean_slope",
            "not_converged"} <= set(rates.columns)
    assert set(rates["average"]) == {"log"}
    # Arm (a) has the reference pair (0) and a drawn one, each with both estimators; the exact studies one.
    linear = rates[rates.study == "matched_linear_softmax"]
    assert set(linear["truth"]) == {0, 1} and set(linear["estimator"]) == {"mle", "protocol"}
    assert set(rates.loc[rates.study == "softmax_exact", "estimator"]) == {"protocol"}
    assert rates["metric"].str.endswith("_multi_share").any() and not rates["metric"].str.endswith("_unweighted").any()
    comp = pd.read_csv(figs / "comparisons.csv")
    assert set(comp["comparison"]) == {"linear", "tanh", "linear_k4"} and comp["paired"].all() and comp["kept"].all()
    assert comp["unpaired_low"].notna().all() and comp["unpaired_high"].notna().all()
    assert set(comp["verdict"]) <= {"faster", "slower", "cannot tell"} and set(comp["estimator"]) == {"mle", "protocol"}
    assert (comp["difference_low"] <= comp["difference"]).all() and (comp["difference"] <= comp["difference_high"]).all()
    md = (figs / "rates.md").read_text()
    assert "## Fits that did not converge" in md and "## Matched pairs" in md and "## Estimator sensitivity" in md
    # A second run resumes: nothing is refitted, the same tables come back.
    mod.main(["--tiny", "--out", str(tmp_path / "results"), "--figures", str(figs), "--n-jobs", "1"])
    pd.testing.assert_frame_equal(pd.read_csv(figs / "rates.csv"), rates)
    pd.testing.assert_frame_equal(pd.read_csv(figs / "comparisons.csv"), comp)

    # `mixsim repro --tiny` is the same function: byte-identical tables.
    again = tmp_path / "figures_cli"
    assert mixsim_main(["repro", "--tiny", "--out", str(tmp_path / "results"), "--figures", str(again), "--n-jobs", "1"]) == 0
    for name in ("rates.csv", "comparisons.csv", "rates.md"):
        assert (again / name).read_bytes() == (figs / name).read_bytes(), name

    # One rate path: `mixsim rates DIR` on each study's directory gives the same slope, rate and
    # intervals as every row of the claim test's table.
    capsys.readouterr()
    for study, rows in rates.groupby("study", sort=False):
        csv = tmp_path / f"{study}_rates.csv"
        assert mixsim_main(["rates", str(tmp_path / "results" / study), "--csv", str(csv)]) == 0
        cli = pd.read_csv(csv)
        if "truth" not in cli:
            cli.insert(1, "truth", 0)
        merged = rows.merge(cli, on=["study", "truth", "estimator", "metric"], how="left", suffixes=("", "_cli"), validate="one_to_one")
        for col in ("slope", "slope_low", "slope_high", "rate", "rate_low", "rate_high", "curvature_low", "curvature_high"):
            pd.testing.assert_series_equal(merged[col], merged[f"{col}_cli"], check_names=False, rtol=0, atol=0)
        assert (merged["average"] == merged["average_cli"]).all() and (merged["average"] == "log").all()
