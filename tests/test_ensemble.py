"""Studies over many truths: the truth index in every unit, seed and row; resumable; rates per truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mixsim
from mixsim.study import SpecError, load_study, plan_units, rate_table, replicate_seed, run_study, task_data

ROOT = Path(__file__).resolve().parent.parent


def _spec(**overrides):
    base = {"replications": 2, "grid.values": [300, 600], "fit.n_init": 1, "fit.max_iter": 300, "losses.n_mc": 50,
            "metrics": ["D2", "groups", "cells"]}
    spec = load_study(ROOT / "studies" / "softmax_overfit_ensemble.toml", overrides=base | overrides)
    return spec


def test_ensemble_spec_draws_the_truths_after_the_preset():
    spec = _spec()
    assert spec.ensemble and len(spec.truths) == 9
    assert spec.truths[0] == mixsim.preset("softmax_k2") and spec.truth is spec.truths[0]
    assert [t.dim for t in spec.truths] == [1] * 5 + [2] * 4
    again = _spec()
    assert all(a == b for a, b in zip(spec.truths, again.truths)) and spec.hash == again.hash
    other = load_study(ROOT / "studies" / "softmax_overfit_ensemble.toml", overrides={"truth.random": [{"count": 4, "seed": 99, "d": 1}]})
    assert other.hash != spec.hash and len(other.truths) == 5
    # Every draw meets random_truth's conditions (visibility is checked inside random_truth).
    for t in spec.truths[1:]:
        v = mixsim.model.atom_vectors(t)
        assert np.min(np.linalg.norm(v[0] - v[1])) >= 1.0


def test_ensemble_truths_must_share_gate_and_k():
    with pytest.raises(SpecError, match="number of experts"):
        _spec(**{"truth.random": [{"count": 1, "seed": 0, "k": 3}]})
    with pytest.raises(SpecError, match="truth.random"):
        _spec(**{"truth.random": [{"count": 0, "seed": 0}]})


def test_ensemble_runs_with_the_truth_in_units_seeds_and_rows(tmp_path):
    spec = _spec(**{"truth.random": [{"count": 1, "seed": 3, "d": 2}]})
    assert len(spec.truths) == 2
    units = plan_units(spec)
    assert len(units) == 2 * 2 * 2 and {u[2] for u in units} == {"softmax_k3_t0", "softmax_k3_t1"}
    out = tmp_path / "ens"
    df = run_study(spec, out, backend="sequential", progress=False)
    assert set(df["truth"]) == {0, 1}
    for (n, r, t), group in df.groupby(["n", "replicate", "truth"]):
        assert (group["seed"] == replicate_seed(spec.root_seed, n, r, t)).all()
    # Each truth's data come from that truth (d differs) and depend on the truth index.
    X0, _ = task_data(spec, 300, 0, 0)
    X1, _ = task_data(spec, 300, 0, 1)
    assert X0.shape == (300, 1) and X1.shape == (300, 2)
    # Cell diagnosis per truth: 3 atoms over 2 cells.
    atoms = df[df.metric.str.endswith("_atoms")].groupby(["n", "replicate", "truth"])["value"].sum()
    assert (atoms == 3).all()
    est = mixsim.load_estimates(out)
    assert set(est["truth"]) == {0, 1} and set(est.loc[est.truth == 1, "gate_weight_1"].notna()) == {True}
    # Resumable: a rerun fits nothing and returns the same table.
    again = run_study(spec, out, backend="sequential", progress=False)
    assert again.equals(df)
    rates = rate_table(out, metrics=["expert_slope_multi_share"])
    assert list(rates.columns[:2]) == ["study", "truth"] and set(rates["truth"]) == {0, 1}
