"""Both estimators from one search (issue 24 item 4): every search unit reports its best optimum
("mle") and the reference protocol's ("protocol") as two estimates, with an ``estimator`` column
in the results, the estimates, the rate table and the comparison table."""
import warnings

import numpy as np
import pandas as pd
import pytest

import mixsim
import mixsim.cli
from mixsim.study import comparison_table, estimate_params, evaluate, load_estimates, load_results, rate_table

from test_search import SEARCH_SPEC

SPEC = SEARCH_SPEC.replace("values = [400]", "values = [400, 800]").replace("replications = 2", "replications = 3")


@pytest.fixture(scope="module")
def search_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimators")
    (root / "search_tiny.toml").write_text(SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mixsim.ConvergenceWarning)
        mixsim.run_study(root / "search_tiny.toml", root / "out", progress=False)
    return root / "out"


def test_a_search_unit_reports_both_estimates_with_their_own_losses(search_study):
    table, est = load_results(search_study), load_estimates(search_study)
    assert set(table["estimator"]) == {"mle", "protocol"}
    counts = table.groupby(["n", "replicate", "metric", "estimator"]).size()
    assert (counts == 1).all() and len(counts) == 2 * 2 * 3 * 2  # sizes x metrics x replicates x estimators
    spec = mixsim.load_study(search_study.parent / "search_tiny.toml")
    for row in table[table["metric"] == "D2"].itertuples():  # each row's D2 is its own estimate's, recomputed here
        fit = est[(est["n"] == row.n) & (est["replicate"] == row.replicate) & (est["estimator"] == row.estimator)]
        params = _params(fit)
        assert row.value == pytest.approx(mixsim.voronoi_loss(params, spec.truth, kind="D2"), rel=1e-12)
    loglik = table[table["metric"] == "loglik"].pivot_table(index=["n", "replicate"], columns="estimator", values="value")
    assert (loglik["mle"] >= loglik["protocol"] - 1e-9).all()  # the search never returns less than its protocol


def _params(fit: pd.DataFrame) -> mixsim.MoEParams:
    """The MoEParams of one fit's rows of load_estimates (an independent reading of the columns)."""
    fit = fit.sort_values("expert")
    return mixsim.MoEParams(gate=fit["model_gate"].iloc[0], top_k=None, gate_weight=fit[["gate_weight_0"]].to_numpy(),
                            gate_bias=fit["gate_bias"].to_numpy(), expert=fit["expert_family"].iloc[0],
                            expert_weight=fit[["expert_weight_0"]].to_numpy(), expert_bias=fit["expert_bias"].to_numpy(),
                            variance=fit["variance"].to_numpy(), phi=fit["phi"].iloc[0])


def test_rates_and_comparisons_have_one_row_per_estimator(search_study):
    rates = rate_table(search_study, metrics=["D2"], n_boot=50)
    assert sorted(rates["estimator"]) == ["mle", "protocol"]
    table = load_results(search_study)
    for estimator in ("mle", "protocol"):  # the rate of a series of one estimator, by hand
        rows = table[(table["metric"] == "D2") & (table["estimator"] == estimator)]
        mean_log = rows.groupby("n")["value"].apply(lambda v: np.mean(np.log(v)))
        slope = np.diff(mean_log.to_numpy())[0] / np.diff(np.log(mean_log.index.to_numpy(float)))[0]
        assert rates.loc[rates["estimator"] == estimator, "slope"].iloc[0] == pytest.approx(slope, rel=1e-9)
    comp = comparison_table(search_study, search_study, metrics=["D2"], n_boot=50, paired=True)
    assert list(comp["estimator"]) == ["mle", "protocol"]
    assert np.allclose(comp["difference"], 0) and comp["paired"].all()  # a study against itself


def test_evaluate_recomputes_both_estimators(search_study):
    before = load_results(search_study)
    evaluate(search_study, metrics=["D2"], force=True, progress=False)
    after = load_results(search_study)
    key = ["n", "replicate", "metric", "estimator"]
    merged = before.merge(after, on=key, suffixes=("_before", "_after"))
    assert len(merged) == len(before) == len(after)
    np.testing.assert_allclose(merged["value_after"], merged["value_before"], rtol=1e-12)


def test_a_series_refuses_an_unknown_estimator(search_study):
    table = load_results(search_study)
    with pytest.raises(ValueError, match="estimator must be one of"):
        mixsim.study.one_estimator(table, "auto")
    assert mixsim.study.main_estimator(table) == "mle"
    assert mixsim.study.main_estimator(table[table["estimator"] == "protocol"]) == "protocol"
    assert mixsim.study.estimators_held(table) == ["mle", "protocol"]
    assert mixsim.study.estimators_held(table.drop(columns="estimator")) == [""]  # a table from before estimators
    both = pd.concat([table[table["estimator"] == "protocol"], table.assign(estimator="auto")])
    with pytest.raises(ValueError, match="choose one"):  # several estimators, none of them "mle"
        mixsim.study.main_estimator(both)


def test_a_paired_comparison_drops_a_failed_units_partner(search_study, capsys):
    table = load_results(search_study)
    broken = table.copy()
    lost = (broken["n"] == 400) & (broken["replicate"] == 0) & (broken["metric"] == "D2")
    broken.loc[lost, "value"] = np.nan  # a unit without a usable value on side a only
    got = comparison_table(broken, table, metrics=["D2"], n_boot=50, paired=True, rng=5)
    without = table[~lost]  # the same unit removed from both sides by hand
    want = comparison_table(without, without, metrics=["D2"], n_boot=50, paired=True, rng=5)
    pd.testing.assert_frame_equal(got.drop(columns=["a", "b"]), want.drop(columns=["a", "b"]))
    with pytest.raises(ValueError, match="paired"):  # unpaired units are refused by compare_rates itself
        mixsim.compare_rates(*(without[(without.metric == "D2") & (without.estimator == "mle")][c] for c in ("n", "value")),
                             *(table[(table.metric == "D2") & (table.estimator == "mle")][c] for c in ("n", "value")),
                             paired=True)
    assert mixsim.cli.main(["compare", str(search_study), str(search_study), "--metric", "D2", "--paired"]) == 0
    out = capsys.readouterr().out
    assert "estimator mle" in out and "estimator protocol" in out
