"""Stored estimates: load_estimates round-trips them bit for bit; evaluate recomputes metrics from them
(equal to the run's rows), adds new ones to a directory, and resumes when interrupted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixsim
from mixsim.study import estimates as _estimates
from mixsim.cli import main
from mixsim.study import load_study, run_study

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "studies" / "smoke.toml"


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("est") / "smoke"
    spec = load_study(SMOKE, overrides=["replications=2", "metrics=['D1', 'D2', 'groups', 'hellinger', 'loglik']"])
    run_study(spec, out, backend="sequential", progress=False)
    return out, spec


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_load_estimates_round_trips_the_fitted_parameters_bit_for_bit(smoke_dir):
    out, spec = smoke_dir
    est = mixsim.load_estimates(out)
    assert list(est.columns[:len(_estimates.ESTIMATE_COLUMNS)]) == list(_estimates.ESTIMATE_COLUMNS)
    assert len(est) == sum(k for k in spec.fit.fitted_k) * len(spec.n_values) * spec.replications
    # Refit one unit exactly as the runner does and compare every parameter bit for bit.
    from mixsim.study import Task, replicate_streams, replicate_seed, task_data
    from mixsim.study.runner import fit_kwargs as _fit_kwargs

    gate = spec.fit.gates[0]
    for n in spec.n_values:
        for k in spec.fit.fitted_k:
            task = Task(n=n, replicates=(0, 1), fit=f"{gate.label}_k{k}", gate=gate, fitted_k=k)
            data = [task_data(spec, n, r) for r in task.replicates]
            seeds = [replicate_streams(replicate_seed(spec.root_seed, n, r)).init for r in task.replicates]
            fits = mixsim.fit_batch(np.stack([d[0] for d in data]), np.stack([d[1] for d in data]), k, rng=seeds, **_fit_kwargs(spec, task))
            for r, res in zip(task.replicates, fits):
                rows = est[(est.n == n) & (est.replicate == r) & (est.fitted_k == k)].sort_values("expert")
                assert rows["variance"].to_numpy().tobytes() == res.params.variance.tobytes()
                assert rows["expert_bias"].to_numpy().tobytes() == res.params.expert_bias.tobytes()
                assert rows["gate_weight_0"].to_numpy().tobytes() == res.params.gate_weight[:, 0].tobytes()
                assert rows["expert_weight_0"].to_numpy().tobytes() == res.params.expert_weight[:, 0].tobytes()
                assert rows["gate_bias"].to_numpy().tobytes() == res.params.gate_bias.tobytes()
                assert (rows["log_likelihood"] == res.log_likelihood).all()
                assert (rows["stationarity"] == res.stationarity).all() and (rows["converged"] == res.converged).all()


def test_evaluate_reproduces_the_runs_metric_rows_exactly(smoke_dir, tmp_path):
    out = _copy(smoke_dir[0], tmp_path / "copy")
    before = mixsim.load_results(out)
    after = mixsim.evaluate(out, ["D1", "D2", "groups", "hellinger", "loglik"], progress=False)
    key = ["n", "replicate", "gate", "fitted_k", "metric"]
    merged = before.merge(after, on=key, suffixes=("_run", "_eval"))
    assert len(merged) == len(before) == len(after)
    np.testing.assert_array_equal(merged["value_run"].to_numpy(), merged["value_eval"].to_numpy())
    assert len(list((out / "evals").glob("*/*.json"))) == 5 * 2 * 2  # metrics x n x fits


def test_evaluate_adds_a_new_metric_and_the_table_keeps_it(smoke_dir, tmp_path):
    out = _copy(smoke_dir[0], tmp_path / "copy")
    before = mixsim.load_results(out)
    assert not before["metric"].str.startswith("cells_").any()
    assert main(["evaluate", str(out), "--metric", "cells", "--metric", "tv", "--no-progress"]) == 0
    df = mixsim.load_results(out)
    cells = df[df["metric"].str.startswith("cells_")]
    assert len(df) == len(before) + len(cells) + len(df[df.metric == "tv"])
    # Over-fitted k = 3 on a 2-atom truth: the cells hold 3 atoms between them.
    k3 = cells[(cells.fitted_k == 3) & cells.metric.str.endswith("_atoms")]
    assert (k3.groupby(["n", "replicate"])["value"].sum() == 3).all()
    # The rows equal cell_diagnosis of the stored estimates.
    est = mixsim.load_estimates(out)
    spec = load_study(SMOKE)
    one = est[(est.n == 600) & (est.replicate == 1) & (est.fitted_k == 3)].sort_values("expert")
    params = mixsim.MoEParams(gate="softmax", top_k=None, gate_weight=one[["gate_weight_0"]].to_numpy(), gate_bias=one["gate_bias"].to_numpy(),
                              expert="linear", expert_weight=one[["expert_weight_0"]].to_numpy(), expert_bias=one["expert_bias"].to_numpy(),
                              variance=one["variance"].to_numpy())
    want = mixsim.cell_diagnosis(params, spec.truth)
    got = cells[(cells.n == 600) & (cells.replicate == 1) & (cells.fitted_k == 3)].set_index("metric")["value"]
    assert {k: got[f"cells_{k}"] for k in want} == want


def test_interrupted_evaluate_resumes(smoke_dir, tmp_path, monkeypatch):
    out = _copy(smoke_dir[0], tmp_path / "copy")
    real = _estimates._metric_rows
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_estimates, "_metric_rows", dying)
    with pytest.raises(KeyboardInterrupt):
        mixsim.evaluate(out, ["hellinger"], progress=False)
    written = sorted((out / "evals" / "hellinger").glob("*.json"))
    assert 0 < len(written) < 4  # some files done, not all
    stamps = {p.name: p.stat().st_mtime_ns for p in written}
    monkeypatch.setattr(_estimates, "_metric_rows", real)
    calls["n"] = 0
    df = mixsim.evaluate(out, ["hellinger"], progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in written} == stamps  # done files not redone
    assert len(list((out / "evals" / "hellinger").glob("*.json"))) == 4
    assert df[df.metric == "hellinger"]["value"].notna().all()


def test_evaluate_refuses_unknown_metrics(smoke_dir):
    with pytest.raises(ValueError, match="unknown metric"):
        mixsim.evaluate(smoke_dir[0], ["bogus"], progress=False)
    assert main(["evaluate", str(smoke_dir[0]), "--metric", "bogus"]) == 2
