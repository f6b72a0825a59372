"""Rate tables read off a results table: slopes against a known power law and against estimate_rate (the one
rate path, with the [rates] table the study declared), what is left out, theory columns."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mixsim.rates")

from mixsim.study import COLUMNS  # noqa: E402
from mixsim.rates import estimate_rate  # noqa: E402
from mixsim.study import local_rate_table, rate_table, read_meta, run_study  # noqa: E402

import test_study_support as sup  # noqa: E402


def synthetic(slope: float = -0.5, sizes=(100, 300, 1000, 3000, 10000), reps: int = 20, seed: int = 0) -> pd.DataFrame:
    """A results table whose D1 follows 2 n^slope times log-normal noise, plus a loglik metric."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for r in range(reps):
            base = dict(study="syn", n=n, replicate=r, gate="softmax", fitted_k=2, seed=r, converged=True,
                        iterations=3, seconds=0.0, status="converged", grad_norm=0.0, error="", truth=0, estimator="protocol")
            rows.append(base | {"metric": "D1", "value": 2 * n ** slope * rng.lognormal(0, 0.2)})
            rows.append(base | {"metric": "loglik", "value": -0.4})
    return pd.DataFrame(rows)[list(COLUMNS)]


def test_slope_of_a_known_power_law():
    table = rate_table(synthetic(-0.5), true_k=2)
    (row,) = table.to_dict("records")  # loglik is no error: no rate for it
    assert row["metric"] == "D1" and row["n_sizes"] == 5 and row["rows"] == 100 and row["average"] == "log"
    # 20 log-normal(sd 0.2) replicates per size: the mean's log wobbles by ~0.05, so the slope by < 0.05
    assert row["slope"] == pytest.approx(-0.5, abs=0.05)
    assert row["slope_low"] < -0.5 < row["slope_high"] and row["power_law"] in (True, False)
    assert row["theory_exponent"] == -0.5 and row["theory_in_ci"] and row["theory_tag"]
    assert len(json.loads(row["local_slopes"])) == 4


def test_failed_and_nonpositive_values_are_left_out_and_counted():
    df = synthetic()
    df.loc[0, ["status", "value"]] = ["error", np.nan]
    df.loc[2, "value"] = 0.0
    row = rate_table(df).iloc[0]
    assert row["rows"] == 98 and row["dropped"] == 2
    assert "theory_exponent" not in rate_table(df).columns  # no true k known for a bare table


def test_min_n_and_metric_selection():
    df = synthetic()
    assert rate_table(df, min_n=1000).iloc[0]["n_sizes"] == 3
    assert list(rate_table(df, metrics=["D1"])["metric"]) == ["D1"]


def test_local_rate_table_between_neighbouring_sizes():
    local = local_rate_table(synthetic())
    assert list(local["n_low"]) == [100, 300, 1000, 3000] and list(local["n_high"]) == [300, 1000, 3000, 10000]
    np.testing.assert_allclose(local["n_mid"], np.sqrt(local["n_low"] * local["n_high"]))


def test_rate_table_from_a_results_directory_has_theory(tmp_path):
    spec = sup.tiny_spec()
    out = tmp_path / "out"
    run_study(spec, out, engine=sup.FAKE, progress=False)
    table = rate_table(out)
    assert {"D1", "D2"} <= set(table["metric"])
    d2 = table[(table["metric"] == "D2")].iloc[0]
    assert d2["fitted_k"] == 3 and np.isfinite(d2["theory_exponent"])


def test_each_row_is_estimate_rate_of_its_series():
    df = synthetic()
    rows = df[df["metric"] == "D1"]
    for options in ({}, {"average": "median", "n_boot": 500, "interval": "bca", "rng": 3}):
        row = rate_table(df, **options).iloc[0]
        est = estimate_rate(rows["n"], rows["value"], replicate=rows["replicate"], **options)
        for name, value in est.to_row().items():
            assert row[name] == value or (value != value and row[name] != row[name]), name
        others = [a for a in ("log", "median", "mean") if a != est.average]
        for a in others:  # reported beside the declared average
            assert row[f"{a}_slope"] == pytest.approx(estimate_rate(rows["n"], rows["value"], average=a).slope, rel=1e-12)


def test_a_directory_uses_the_rates_table_recorded_when_the_study_was_created(tmp_path):
    spec = sup.tiny_spec().with_overrides({"rates.average": "median"})
    out = tmp_path / "out"
    df = run_study(spec, out, engine=sup.FAKE, progress=False)
    assert read_meta(out)["spec"]["rates"] == {"average": "median"}
    table = rate_table(out)
    assert set(table["average"]) == {"median"} and "median_slope" not in table and "log_slope" in table
    row = table[table["metric"] == "D1"].iloc[0]
    rows = df[(df["metric"] == "D1") & (df["gate"] == row["gate"]) & (df["fitted_k"] == row["fitted_k"])]
    assert row["slope_low"] == estimate_rate(rows["n"], rows["value"], average="median").slope_low
    assert set(rate_table(out, average="mean")["average"]) == {"mean"}  # an explicit option wins
