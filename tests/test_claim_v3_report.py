"""Claim test v3, the report side (issue 24, item 6): the verdict rule per matched pair
(mixsim.study.verdict), the tables written (rates.md and CSVs), the figures and the plain-language
verdict, all from a synthetic ClaimTables whose verdicts are known by construction.

The synthetic tables: 3 arms x 4 pairs x 2 estimators x 4 groups, pair 3 of arm "linear" dropped
(kept False); two (arm, group) whose verdict differs between the estimators. The exact studies are
real tiny runs (seconds), the estimates real mixsim.rates.estimate_rate results on made-up data,
the specs real StudySpecs of a shipped over-fitted ensemble and its softmax-matched copy.
"""
from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mixsim import gate_distance, plots
from mixsim.rates import RATE_ROW_COLUMNS, VERDICTS, estimate_rate
from mixsim.repro import verdict_text
from mixsim.study import (RULE, StudySpec, apply_overrides, estimator_sensitivity, find_study, pair_outcomes, rate_table,
                          run_study, write_claim_tables)
from mixsim.study.claim import ARMS, EXACT, GATE_DISTANCE_MAX, ClaimTables
from mixsim.study.verdict import rule_verdict

GROUPS4 = ("weight", "expert_slope", "expert_intercept", "variance")
F, S, C = "faster", "slower", "cannot tell"
# (arm, estimator, group) -> verdicts of pairs 0..3; pair 3 of "linear" is dropped.
DESIGN = {
    ("linear", "weight"): {"mle": [F, F, C, S], "protocol": [F, F, F, S]},  # the dropped "slower" must not count
    ("linear", "expert_slope"): {"mle": [F, F, S, F], "protocol": [F, F, S, F]},  # one slower: never faster
    ("linear", "expert_intercept"): {"mle": [C, C, C, C], "protocol": [S, S, C, C]},  # changes between estimators
    ("linear", "variance"): {"mle": [F, C, C, F], "protocol": [F, C, C, F]},
    ("tanh", "weight"): {"mle": [C, C, C, C], "protocol": [C, C, C, C]},
    ("tanh", "expert_slope"): {"mle": [F, F, F, C], "protocol": [F, F, C, C]},  # changes: 2 of 4 is not more than half
    ("tanh", "expert_intercept"): {"mle": [S, S, S, F], "protocol": [S, S, S, F]},
    ("tanh", "variance"): {"mle": [S, S, S, C], "protocol": [S, S, S, C]},
    ("linear_k4", "weight"): {"mle": [F, F, F, F], "protocol": [F, F, F, F]},
    ("linear_k4", "expert_slope"): {"mle": [C, C, C, C], "protocol": [C, C, C, C]},
    ("linear_k4", "expert_intercept"): {"mle": [S, S, S, S], "protocol": [S, S, S, S]},
    ("linear_k4", "variance"): {"mle": [F, S, C, C], "protocol": [F, S, C, C]},
}
CHANGED = {("linear", "expert_intercept"), ("tanh", "expert_slope")}
DROPPED = {("linear", 3)}
CENTRES = {F: -0.3, S: 0.3, C: 0.02}


def _comparisons() -> pd.DataFrame:
    rows = []
    for (arm, group), by_estimator in DESIGN.items():
        for estimator, verdicts in by_estimator.items():
            for pair, v in enumerate(verdicts):
                width = 0.1 + 0.013 * pair + 0.04 * (estimator == "mle") + 0.002 * len(group)  # all different
                diff = CENTRES[v] + 0.01 * pair
                ratio = np.nan if (arm, pair, group) == ("tanh", 1, "weight") else 0.4 + 0.2 * pair
                ref = "cannot tell" if not np.isfinite(ratio) else "faster" if ratio * 1.25 < 1 else \
                    "slower" if ratio * 0.8 > 1 else "cannot tell"
                distance = 0.05 if (arm, pair) in DROPPED else 1e-5 * (pair + 1)
                rows.append({"comparison": arm, "truth": pair, "estimator": estimator, "group": group, "a": ARMS[arm][0],
                             "b": ARMS[arm][1], "rate_a": -0.5 + diff, "rate_b": -0.5, "difference": diff,
                             "difference_low": diff - width / 2, "difference_high": diff + width / 2, "verdict": v,
                             "unpaired_low": diff - width, "unpaired_high": diff + width,
                             "n_ref": 1e4, "ref_ratio": ratio, "ref_ratio_low": ratio * 0.8, "ref_ratio_high": ratio * 1.25,
                             "ref_efficiency": ref, "gate_distance": distance, "kept": (arm, pair) not in DROPPED})
    return pd.DataFrame(rows)


def _spec(study: str, overrides: dict) -> StudySpec:
    found = find_study(study)
    return StudySpec.from_dict(apply_overrides(tomllib.loads(found.path.read_text()), overrides), default_name=study)


def _errors(slope: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = np.repeat([1e3, 3e3, 1e4, 3e4], 6)
    return n, 0.5 * n ** slope * np.exp(rng.normal(0, 0.2, n.size)), np.tile(np.arange(6), 4)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> ClaimTables:
    out = tmp_path_factory.mktemp("claim_v3") / "results"
    tiny = {"grid.values": [400, 800, 1600], "replications": 3, "losses.n_mc": 50}
    rate_rows = []
    for study in EXACT:  # real tiny exact-fitted runs: the D1 figures and lines read them
        run_study(_spec(study, tiny), out / study, n_jobs=1, progress=False)
        r = rate_table(out / study, metrics=["D1"]).iloc[0]
        rate_rows.append({"study": study, "arm": "", "truth": 0, "gate": r["gate"], "estimator": "mle", "metric": "D1",
                          **{c: r[c] for c in RATE_ROW_COLUMNS}, "not_converged": 0, "fits": 9})
    few = {"truth.random": [{"count": 1, "seed": 1, "d": 1}]}
    competition = _spec("competition_overfit_ensemble", few)
    softmax = _spec("competition_overfit_ensemble", few | {"truth.match": "softmax"})
    specs = {name: spec for pair in ARMS.values() for name, spec in zip(pair, (competition, softmax))}
    estimates = {}
    for (study, gate), slope in zip(zip(ARMS["linear"], ("competition", "softmax")), (-0.45, -0.3)):
        groups = GROUPS4 + (("gate_slope",) if gate == "softmax" else ())
        for estimator, shift in (("mle", 0.0), ("protocol", 0.2)):
            for j, g in enumerate(groups):
                n, e, rep = _errors(slope + shift, seed=j + 10 * len(estimator))
                est = estimate_rate(n, e, replicate=rep, n_boot=200)
                estimates[(study, 0, f"{g}_multi_share", estimator)] = est
                rate_rows.append({"study": study, "arm": "linear", "truth": 0, "gate": gate, "estimator": estimator,
                                  "metric": f"{g}_multi_share", **est.to_row(), "not_converged": 1 + (estimator == "mle"),
                                  "fits": 24})
    comp = _comparisons()
    pairs = comp.drop_duplicates(["comparison", "truth"]).rename(columns={"comparison": "arm"})
    pairs = pairs.assign(d=1)[["arm", "truth", "d", "gate_distance", "kept"]].reset_index(drop=True)
    outcomes = pair_outcomes(comp)
    return ClaimTables("tiny", out, "share", pd.DataFrame(rate_rows), comp, pairs, outcomes,
                       estimator_sensitivity(outcomes), estimates, specs)


# ---------------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------------

def _reference_outcomes(comp: pd.DataFrame) -> dict[tuple, dict]:
    """A slow loop: counts, the rule and medians per (arm, group, estimator) over kept pairs."""
    found: dict[tuple, dict] = {}
    for row in comp.to_dict("records"):
        entry = found.setdefault((row["comparison"], row["group"], row["estimator"]),
                                 {"pairs": 0, F: 0, S: 0, C: 0, "diff": [], "width": [], "ratio": []})
        if not row["kept"]:
            continue
        entry["pairs"] += 1
        entry[row["verdict"]] += 1
        entry["diff"].append(row["difference"])
        entry["width"].append(row["difference_high"] - row["difference_low"])
        if np.isfinite(row["ref_ratio"]):
            entry["ratio"].append(row["ref_ratio"])
    for entry in found.values():
        half = entry["pairs"] / 2
        entry["verdict"] = (F if entry[F] > half and entry[S] == 0 else S if entry[S] > half and entry[F] == 0 else C)
    return found


def test_pair_outcomes_against_a_loop(tables):
    out = tables.outcomes
    reference = _reference_outcomes(tables.comparisons)
    assert len(out) == len(reference) == 3 * 4 * 2
    assert list(zip(out["comparison"], out["group"], out["estimator"]))[:2] == [("linear", "weight", "mle"),
                                                                              ("linear", "weight", "protocol")]
    for row in out.to_dict("records"):
        want = reference[(row["comparison"], row["group"], row["estimator"])]
        assert [row[k] for k in ("pairs", *VERDICTS, "verdict")] == [want[k] for k in ("pairs", *VERDICTS, "verdict")]
        # medians over the kept pairs, against numpy on the loop's lists (same numbers: exact up to rounding)
        np.testing.assert_allclose(row["median_difference"], np.median(want["diff"]), rtol=1e-12)
        np.testing.assert_allclose(row["median_width"], np.median(want["width"]), rtol=1e-12)
        np.testing.assert_allclose(row["median_ref_ratio"], np.median(want["ratio"]), rtol=1e-12)
    by_key = out.set_index(["comparison", "group", "estimator"])
    # the dropped pair (a "slower") is not counted: 3 pairs, and weights still read faster
    assert by_key.loc[("linear", "weight", "mle"), "pairs"] == 3 and by_key.loc[("linear", "weight", "mle"), "slower"] == 0
    assert by_key.loc[("linear", "weight", "mle"), "verdict"] == "faster"
    # two of three faster with one slower never reads faster
    assert by_key.loc[("linear", "expert_slope", "mle"), ["faster", "slower"]].tolist() == [2, 1]
    assert by_key.loc[("linear", "expert_slope", "mle"), "verdict"] == "cannot tell"
    assert by_key.loc[("tanh", "weight", "mle"), "median_ref_ratio"] == np.median([0.4, 0.8, 1.0])  # NaN ratio left out
    # ref_faster / ref_slower: pairs 0, 1 (ratio 0.4, 0.6) say faster, pair 3 (1.0) cannot tell; pair 2 (0.8) neither
    assert by_key.loc[("linear_k4", "weight", "mle"), ["ref_faster", "ref_slower"]].tolist() == [2, 0]


def test_rule_never_reads_faster_with_a_slower():
    """A property over random tables: a group with one "slower" pair never reads faster (and vice versa)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        verdicts = rng.choice(VERDICTS, size=rng.integers(1, 9))
        kept = rng.random(verdicts.size) < 0.8
        comp = pd.DataFrame({"comparison": "a", "group": "weight", "estimator": "mle", "verdict": verdicts,
                             "difference": 0.0, "difference_low": -0.1, "difference_high": 0.1, "kept": kept})
        row = pair_outcomes(comp).iloc[0]
        assert row["pairs"] == kept.sum()
        if (verdicts[kept] == "slower").any():
            assert row["verdict"] != "faster"
        if (verdicts[kept] == "faster").any():
            assert row["verdict"] != "slower"
    assert rule_verdict(0, 0, 0) == "cannot tell"
    with pytest.raises(ValueError, match="pairs"):
        rule_verdict(3, 1, 3)
    with pytest.raises(ValueError, match="lacks columns"):
        pair_outcomes(pd.DataFrame({"comparison": ["a"]}))


def test_a_group_with_every_pair_dropped_says_cannot_tell():
    comp = pd.DataFrame({"comparison": "a", "group": "weight", "estimator": "mle", "verdict": ["faster"] * 2,
                         "difference": -0.3, "difference_low": -0.4, "difference_high": -0.2, "kept": False})
    row = pair_outcomes(comp).iloc[0]
    assert (row["pairs"], row["faster"], row["verdict"]) == (0, 0, "cannot tell") and np.isnan(row["median_width"])


def test_estimator_sensitivity_flags_exactly_the_changed_groups(tables):
    sens = tables.sensitivity
    assert list(sens.columns) == ["comparison", "group", "protocol", "mle", "changed", "protocol_counts", "mle_counts"]
    assert len(sens) == 12
    assert set(zip(sens.loc[sens["changed"], "comparison"], sens.loc[sens["changed"], "group"])) == CHANGED
    row = sens[(sens["comparison"] == "linear") & (sens["group"] == "expert_intercept")].iloc[0]
    assert (row["protocol"], row["mle"], row["protocol_counts"], row["mle_counts"]) == ("slower", "cannot tell", "0/2/1", "0/0/3")


# ---------------------------------------------------------------------------------------------
# tables, figures, verdict
# ---------------------------------------------------------------------------------------------

def test_write_claim_tables_writes_the_numbers(tables, tmp_path):
    paths = write_claim_tables(tables, tmp_path)
    assert [p.name for p in paths] == ["rates.csv", "comparisons.csv", "outcomes.csv", "sensitivity.csv", "rates.md"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "outcomes.csv"), tables.outcomes, check_dtype=False)
    assert len(pd.read_csv(tmp_path / "comparisons.csv")) == len(tables.comparisons)
    md = (tmp_path / "rates.md").read_text()
    for section in ("## Fits that did not converge", "## Matched pairs", "## Rates", "### linear:", "### tanh:",
                    "### linear_k4:", "## Pairs per outcome", "## Estimator sensitivity", "## Median width",
                    "## Which maximum"):
        assert section in md, section
    assert RULE in md and f"above {GATE_DISTANCE_MAX:g}" in md
    assert "| linear | 3 | 1 | 0.05 | False |" in md and "| tanh | 0 | 1 | 1e-05 | True |" in md
    # not converged per (study, estimator): 4 groups (5 for softmax) x 1 truth, counted once per truth
    assert "| matched_linear_competition | mle | 1 | 24 | 2 |" in md
    assert "| linear | weight | mle | 3 | 2 | 0 | 1 | faster |" in md
    assert "| linear | expert_intercept | slower | cannot tell | True | 0/2/1 | 0/0/3 |" in md
    comp = tables.comparisons
    for (arm, estimator), sub in comp[comp["kept"]].groupby(["comparison", "estimator"]):
        width = np.median(sub["difference_high"] - sub["difference_low"])
        unpaired = np.median(sub["unpaired_high"] - sub["unpaired_low"])
        assert f"| {arm} | {estimator} | {len(sub)} | {width:.3f} | {unpaired:.3f} | 0.200 |" in md


def test_claim_figures_write_every_figure_with_its_numbers(tables, tmp_path):
    written = plots.claim_figures(tables, tmp_path)
    stems = ([f"{s}_D1" for s in EXACT] + [f"forest_{arm}" for arm in ARMS] + ["groups_pair0_linear"]
             + [f"matched_gates_{arm}" for arm in ARMS])
    assert sorted(p.name for p in written) == sorted(f"{s}.png" for s in stems)
    for stem in stems:
        for ext in ("png", "csv"):
            assert (tmp_path / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
    forest = pd.read_csv(tmp_path / "forest_linear.csv")
    assert set(forest["estimator"]) == {"mle", "protocol"} and len(forest) == 4 * 2 * 4
    assert set(forest.loc[~forest["kept"], "truth"]) == {3}
    groups = pd.read_csv(tmp_path / "groups_pair0_linear.csv")
    mle = tables.estimates[(ARMS["linear"][0], 0, "weight_multi_share", "mle")]
    rows = groups[(groups["study"] == ARMS["linear"][0]) & (groups["group"] == "weight")]
    np.testing.assert_allclose(rows["mean_error"], np.exp(mle.log_average), rtol=1e-12)  # mle's, not protocol's
    protocol = plots.group_rates_data(tables.estimates, ARMS["linear"], "share", estimator="protocol").points
    want = tables.estimates[(ARMS["linear"][0], 0, "weight_multi_share", "protocol")]
    got = protocol[(protocol["study"] == ARMS["linear"][0]) & (protocol["group"] == "weight")]["mean_error"]
    np.testing.assert_allclose(got, np.exp(want.log_average), rtol=1e-12)
    assert plots.group_rates_data(tables.estimates, ARMS["linear"], "share").points.empty  # 3-tuple keys: none here
    gates = pd.read_csv(tmp_path / "matched_gates_linear.csv")
    truths = [tables.specs[s].truths[0] for s in ARMS["linear"]]
    assert list(gates.groupby("truth")["gate"].first()) == ["competition", "softmax"]
    np.testing.assert_allclose(gates["distance"].iloc[0], gate_distance(*truths), rtol=1e-12)


def test_draw_forest_puts_both_estimators_on_each_row(tables):
    data = plots.forest_data(tables.comparisons, "linear")
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = plots.draw_forest(data, fig)
    assert [ax.get_title() for ax in axes] == [plots.GROUP_NAMES[g] for g in ("weight", "expert_slope",
                                                                            "expert_intercept", "variance")]
    points = axes[0].collections[-2:]  # one scatter per estimator, drawn last
    for scatter, estimator, offset in zip(points, ("mle", "protocol"), (-0.15, 0.15)):
        rows = data[(data["group"] == "weight") & (data["estimator"] == estimator)]
        np.testing.assert_allclose(scatter.get_offsets()[:, 0], rows["difference"])
        np.testing.assert_allclose(scatter.get_offsets()[:, 1], rows["truth"] + offset)
        np.testing.assert_allclose(scatter.get_facecolors()[-1][:3], [0.82] * 3)  # pair 3 dropped: grey
    assert [t.get_text() for t in axes[0].get_yticklabels()][-1] == "3 (dropped)"
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {"estimator: mle", "estimator: protocol"}
    assert len(plots.forest_data(tables.comparisons, "linear", estimator="mle")) == 16
    with pytest.raises(ValueError, match="estimator"):
        plots.forest_data(tables.comparisons.drop(columns="estimator"), "linear", estimator="mle")


def test_verdict_text_reads_each_arm_and_the_changed_groups(tables):
    text = verdict_text(tables)
    for study in EXACT:
        assert f"{study}: D1 slope" in text
    for arm in ARMS:
        for estimator in ("mle", "protocol"):
            assert f"Arm {arm} ({' - '.join(ARMS[arm])}), estimator {estimator}" in text
    assert "Arm linear (matched_linear_competition - matched_linear_softmax), estimator mle: competition vs softmax, " \
           "paired interval per pair (1 pair dropped: gates too far apart):" in text
    assert "weights            competition faster  (of 3 pairs: 2 faster, 0 slower, 1 cannot tell; median n-ratio 0.60)" in text
    assert "arm linear, expert intercepts: protocol competition slower (0/2/1), mle cannot tell (0/0/3)" in text
    assert "arm tanh, expert slopes: protocol cannot tell (2/0/2), mle competition faster (3/0/1)" in text
    assert RULE in text and "common random numbers" in text
