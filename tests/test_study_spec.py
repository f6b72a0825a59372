"""Study specs: the shipped studies load, the grid forms, overrides, the hash, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixsim.study import SpecError, StudySpec, load_study, replicate_seed, replicate_streams, task_data

STUDIES = Path(__file__).resolve().parent.parent / "studies"
SHIPPED = ["smoke", "softmax_exact", "softmax_overfit", "competition_exact", "competition_overfit"]


def base(**changes):
    doc = {
        "name": "t",
        "replications": 2,
        "truth": {"preset": "softmax_k2"},
        "grid": {"values": [100, 200]},
        "fit": {"gates": ["softmax"], "fitted_k": [2, 3]},
    }
    for key, value in changes.items():
        node = doc
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def error_key(doc) -> str:
    with pytest.raises(SpecError) as info:
        StudySpec.from_dict(doc)
    return info.value.key


# ---------------------------------------------------------------------------------------------
# shipped studies
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_study_loads_and_round_trips(name):
    spec = load_study(STUDIES / f"{name}.toml")
    assert spec.name == name
    again = StudySpec.from_dict(spec.to_dict())
    assert again == spec and again.hash == spec.hash
    assert spec.n_values == tuple(sorted(set(spec.n_values)))


def test_shipped_gates_and_fitted_k_match_their_names():
    for gate in ("softmax", "competition"):
        exact, over = load_study(STUDIES / f"{gate}_exact.toml"), load_study(STUDIES / f"{gate}_overfit.toml")
        assert [g.name for g in exact.fit.gates] == [gate] == [g.name for g in over.fit.gates]
        assert exact.fit.fitted_k == (exact.true_k,)
        assert min(over.fit.fitted_k) > over.true_k
        assert "D1" in exact.metrics and "D2" in over.metrics


# ---------------------------------------------------------------------------------------------
# grid
# ---------------------------------------------------------------------------------------------

def test_grid_log_and_linear_spacing():
    spec = StudySpec.from_dict(base(grid={"start": 100, "stop": 10000, "num": 3}))
    assert spec.n_values == (100, 1000, 10000)
    spec = StudySpec.from_dict(base(grid={"start": 100, "stop": 300, "num": 3, "spacing": "linear"}))
    assert spec.n_values == (100, 200, 300)


def test_grid_accepts_integral_floats_and_sorts():
    assert StudySpec.from_dict(base(grid={"values": [1e3, 200]})).n_values == (200, 1000)


@pytest.mark.parametrize("grid, key", [
    ({"values": []}, "grid.values"),
    ({"start": 100, "stop": 1000, "num": 0}, "grid.num"),
    ({"values": [100, 100]}, "grid.values"),
    ({"values": [100], "num": 3}, "grid.num"),
    ({"start": 1000, "stop": 100, "num": 3}, "grid.stop"),
    ({"values": [100.5]}, "grid.values[0]"),
    ({"start": 100, "stop": 1000}, "grid.num"),
    ({"values": [100], "step": 2}, "grid.step"),
])
def test_grid_errors_name_the_key(grid, key):
    assert error_key(base(grid=grid)) == key


# ---------------------------------------------------------------------------------------------
# errors name the key
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, key", [
    ({"replicatons": 3}, "replicatons"),  # unknown top-level key (a typo)
    ({"fit__tolerance": 1e-6}, "fit.tolerance"),  # unknown nested key (fit_batch has no such option)
    ({"replications": "5"}, "replications"),  # wrong type
    ({"replications": 0}, "replications"),
    ({"replications": True}, "replications"),  # a bool is no int
    ({"replications": None}, "replications"),  # missing
    ({"root_seed": -1}, "root_seed"),
    ({"fit__tol": -1.0}, "fit.tol"),
    ({"fit__tol": "small"}, "fit.tol"),
    ({"fit__fitted_k": [2.5]}, "fit.fitted_k[0]"),
    ({"fit__fitted_k": []}, "fit.fitted_k"),
    ({"fit__gates": ["softmaxx"]}, "fit.gates[0].name"),
    ({"fit__gates": [{"name": "softmax", "colour": "red"}]}, "fit.gates[0].colour"),
    ({"fit__gates": ["softmax", "softmax"]}, "fit.gates"),
    ({"fit__gates": [{"name": "topk", "top_k": 4}]}, "fit.gates"),
    ({"fit__init": "random"}, "fit.init"),
    ({"fit__n_init": {"exact": 1, "under": 2}}, "fit.n_init.under"),
    ({"fit__near_truth": {"gate_scale": -1}}, "fit.near_truth.gate_scale"),
    ({"fit__init": "auto", "fit__near_truth": {"gate_scale": 0.1}}, "fit.near_truth"),
    ({"fit__options": {"device": "cuda"}}, "fit.options.device"),
    ({"truth__preset": "nonesuch"}, "truth.preset"),
    ({"truth": {}}, "truth"),
    ({"truth__variance": [1.0, -1.0]}, "truth.variance"),
    ({"x_dist": "cauchy"}, "x_dist"),
    ({"metrics": ["D3"]}, "metrics[0]"),
    ({"metrics": ["D1", "D1"]}, "metrics"),
    ({"run__block_size": 0}, "run.block_size"),
    ({"kind": "bayes"}, "kind"),
    ({"name": "a b"}, "name"),
    ({"losses__n_mc": 0}, "losses.n_mc"),
])
def test_errors_name_the_key(changes, key):
    assert error_key(base(**changes)) == key


def test_error_messages_say_what_is_expected():
    with pytest.raises(SpecError, match=r"unknown key 'fit.tolerance'.*expected one of"):
        StudySpec.from_dict(base(fit__tolerance=1e-6))
    with pytest.raises(SpecError, match=r"grid.values is empty"):
        StudySpec.from_dict(base(grid={"values": []}))
    with pytest.raises(SpecError, match=r"replications must be an int >= 1; got '5' \(string\)"):
        StudySpec.from_dict(base(replications="5"))


def test_d1_and_d2_need_a_matching_fitted_k():
    assert error_key(base(fit__fitted_k=[3], metrics=["D1"])) == "metrics"
    assert error_key(base(fit__fitted_k=[2], metrics=["D2"])) == "metrics"
    assert StudySpec.from_dict(base(fit__fitted_k=[2])).metrics == ("D1", "groups", "loglik")  # default metrics
    assert StudySpec.from_dict(base()).metrics == ("D1", "D2", "groups", "loglik")


def test_bad_toml_file_is_a_spec_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_study(path)


# ---------------------------------------------------------------------------------------------
# truth, gates, options
# ---------------------------------------------------------------------------------------------

def test_inline_truth_and_preset_overrides():
    inline = {"gate": "competition", "expert": "linear", "expert_weight": [[-3.0], [2.5]],
              "expert_bias": [2.0, -0.5], "variance": [0.09, 0.16], "gate_bias": [0.0, 0.0]}
    spec = StudySpec.from_dict(base(truth=inline, fit__gates=["competition"]))
    assert spec.truth.gate == "competition" and spec.truth.gate_weight is None
    spec = StudySpec.from_dict(base(truth={"preset": "softmax_k2", "variance": [0.25, 0.25]}))
    np.testing.assert_array_equal(spec.truth.variance, [0.25, 0.25])


def test_gate_tables_labels_and_options():
    spec = StudySpec.from_dict(base(fit__gates=["softmax", {"name": "topk", "top_k": 1},
                                                {"name": "competition", "phi": "identity", "label": "comp_id"}]))
    assert [g.label for g in spec.fit.gates] == ["softmax", "softmax_top1", "comp_id"]
    assert spec.fit.gates[1].name == "softmax" and spec.fit.gates[1].top_k == 1
    assert dict(spec.fit.gates[2].options) == {"phi": "identity"}


def test_n_init_default_is_the_reference_protocol():
    spec = StudySpec.from_dict(base())
    assert spec.fit.n_init(2, 2) == 1 and spec.fit.n_init(3, 2) == 5
    spec = StudySpec.from_dict(base(fit__n_init=3))
    assert spec.fit.n_init(2, 2) == 3 == spec.fit.n_init(3, 2)


# ---------------------------------------------------------------------------------------------
# overrides and hash
# ---------------------------------------------------------------------------------------------

def test_overrides_strings_and_mappings(tmp_path):
    path = STUDIES / "softmax_exact.toml"
    spec = load_study(path, overrides=["replications=3", "grid.values=[100, 300]", "fit.tol=1e-8",
                                       "truth.preset=softmax_k2", 'fit.gates=["softmax"]'])
    assert spec.replications == 3 and spec.n_values == (100, 300) and spec.fit.tol == 1e-8
    again = load_study(path).with_overrides({"replications": 3, "grid.values": [100, 300], "fit.tol": 1e-8})
    assert again == spec


def test_override_of_grid_start_drops_explicit_values():
    spec = StudySpec.from_dict(base()).with_overrides(["grid.start=100", "grid.stop=400", "grid.num=3"])
    assert spec.n_values == (100, 200, 400)


@pytest.mark.parametrize("override, key", [("replications=zero", "replications"), ("fit.tolx=1", "fit.tolx")])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(SpecError) as info:
        load_study(STUDIES / "smoke.toml", overrides=[override])
    assert info.value.key == key


def test_override_without_equals_sign():
    with pytest.raises(SpecError, match="KEY=VALUE"):
        load_study(STUDIES / "smoke.toml", overrides=["replications"])


def test_hash_ignores_description_and_run_but_not_the_science():
    spec = StudySpec.from_dict(base())
    assert spec.with_overrides({"description": "other words", "run.block_size": 3}).hash == spec.hash
    for change in ({"fit.tol": 1e-7}, {"root_seed": 1}, {"grid.values": [100, 201]}, {"fit.near_truth.gate_exponent": 0.0}):
        assert spec.with_overrides(change).hash != spec.hash, change


def test_hash_covers_the_resolved_truth():
    a = StudySpec.from_dict(base())
    b = StudySpec.from_dict(base(truth={"preset": "softmax_k2", "variance": [0.09, 0.17]}))
    assert a.hash != b.hash


# ---------------------------------------------------------------------------------------------
# network studies
# ---------------------------------------------------------------------------------------------

def test_nn_spec_needs_n_experts_and_rejects_mle_tables():
    doc = {"name": "nn", "kind": "nn", "replications": 2, "grid": {"values": [64]}, "nn": {"n_experts": 4, "epochs": 3}}
    spec = StudySpec.from_dict(doc)
    assert spec.nn == {"n_experts": 4, "epochs": 3} and spec.truth is None
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert error_key(doc | {"nn": {"epochs": 3}}) == "nn.n_experts"
    assert error_key(doc | {"fit": {"gates": ["softmax"]}}) == "fit"


# ---------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 10**6), st.integers(0, 1000))
def test_replicate_seed_is_a_deterministic_int64(root, n, r):
    seed = replicate_seed(root, n, r)
    assert seed == replicate_seed(root, n, r) and 0 <= seed < 2**63
    assert seed != replicate_seed(root, n, r + 1)
    streams = replicate_streams(seed)
    draws = [np.random.default_rng(s).integers(2**62) for s in (streams.data, streams.init, streams.eval)]
    assert len(set(draws)) == 3  # three independent streams


def test_task_data_depends_on_grid_coordinates_only():
    spec = StudySpec.from_dict(base())
    X1, y1 = task_data(spec, 100, 1)
    X2, y2 = task_data(spec.with_overrides({"grid.values": [50, 100], "replications": 5}), 100, 1)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, task_data(spec, 100, 0)[1])


def test_nn_option_names_are_checked_against_mixsim_nn():
    pytest.importorskip("mixsim.nn")
    doc = {"name": "nn", "kind": "nn", "replications": 1, "grid": {"values": [64]}, "nn": {"n_experts": 4, "stepz": 3}}
    assert error_key(doc) == "nn.stepz"


# ---------------------------------------------------------------------------------------------
# [rates]: the average of the primary slope, declared before the run (issue 12)
# ---------------------------------------------------------------------------------------------

def test_rates_average_defaults_to_log_and_is_declared_data():
    spec = StudySpec.from_dict(base())
    assert spec.rates == {"average": "log"} and spec.to_dict()["rates"] == {"average": "log"}
    for average in ("log", "median", "mean"):
        other = StudySpec.from_dict(base(rates={"average": average}))
        assert other.rates["average"] == average
        assert StudySpec.from_dict(other.to_dict()) == other  # round-trips (so results metadata records it)
        assert other.hash == spec.hash  # no fitted number depends on it
    assert spec.with_overrides(["rates.average=median"]).rates == {"average": "median"}
    assert spec.with_overrides(["rates.average=median"]) != spec
    for name in ("softmax_overfit", "competition_overfit"):
        assert load_study(STUDIES / f"{name}.toml").rates == {"average": "log"}


@pytest.mark.parametrize("rates, key", [
    ({"average": "geometric"}, "rates.average"), ({"average": "logmean"}, "rates.average"),
    ({"average": 1}, "rates.average"), ({"averag": "log"}, "rates.averag"), ("log", "rates"),
])
def test_bad_rates_table_names_the_key(rates, key):
    assert error_key(base(rates=rates)) == key
